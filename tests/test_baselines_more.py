"""CC, NST, KDSVD and DIST against float64 references written here from the published formulas
(RepDistiller's CC.py and NST.py, mdistiller's KDSVD.py, DIST's dist_kd.py), on the shapes of real
pairs and on real feature maps; where their gradients go; the loss's additions (--kd_weight, CRD+KD;
--logit_standardization on kd and dkd) and DOT (mdistiller's engine/dot.py) against the same kind of
reference; their refusals, defaults and run identity.

As in ``tests/test_baselines.py``, the distillers compute in float32 (NST and KDSVD in float64) on
float32 outputs, exact in float64; the references compute in float64 on the same values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import runner
import tucker_distillation
from tests.conftest import REAL_BATCH, run_training
from tests.test_baselines import (
    BATCH,
    SMALL,
    assert_close,
    assert_matches,
    build,
    f64,
    pair_outputs,
    ref_dkd,
    ref_match,
    step,
)
from toolbox import analysis, sweep
from toolbox.config import Config, parse_config
from toolbox.distillation import Setup, Step, build_distiller, with_defaults
from toolbox.distributed import World
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS
from toolbox.methods.dkd import LS_DKD
from toolbox.methods.kd import LS_KD
from toolbox.methods.loss import DistillationLoss
from toolbox.models import build_model
from toolbox.rundir import experiment_name, resolve, teacher_config
from toolbox.training.optimizers import DOT, make_optimizer

PAIRS = [
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "MobileNetV2"),
]  # equal sizes; the student's last stage half the teacher's


# --- float64 references, from the published formulas -------------------------------------------------
def ref_cc(teacher: np.ndarray, student: np.ndarray, distiller: torch.nn.Module) -> float:
    """RepDistiller's LinearEmbed of each network's pooled features (the distiller's weights), then
    the mean over consecutive samples of sum_j |d_ij| |d_i+1,j|, d the embeddings' difference."""

    def embed(x: np.ndarray, linear: torch.nn.Linear) -> np.ndarray:
        return x.reshape(len(x), -1) @ f64(linear.weight).T + f64(linear.bias)

    d = np.abs(embed(student, distiller.embed_s) - embed(teacher, distiller.embed_t))
    return float((d[:-1] * d[1:]).sum(axis=1).mean())


def ref_nst(teacher: list[np.ndarray], student: list[np.ndarray]) -> float:
    """Per stage: channels flattened and L2-normalised; mean of (a_i . b_j)^2 kernels, tt + ss - 2 st."""

    def channels(f: np.ndarray) -> np.ndarray:
        f = f.reshape(f.shape[0], f.shape[1], -1)
        return f / np.maximum(
            np.linalg.norm(f, axis=2, keepdims=True), 1e-12
        )  # F.normalize's: an all-zero channel stays 0

    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        return float((np.einsum("bin,bjn->bij", a, b) ** 2).mean())

    total = 0.0
    for s, t in zip(student, teacher):
        s, t = (channels(x) for x in ref_match(s, t))
        total += kernel(t, t) + kernel(s, s) - 2 * kernel(s, t)
    return total


def svd_of_maps(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (B, W) and right singular vectors (B, W, W, as columns) of each (C*H) x W
    matrix, by torch's float64 SVD: the vectors' signs are its convention, as they are mdistiller's."""
    b, c, h, w = x.shape
    _, values, right = torch.linalg.svd(torch.from_numpy(x.reshape(b, c * h, w)), full_matrices=False)
    return values.numpy(), right.numpy().transpose(0, 2, 1)


def ref_kdsvd(teacher: list[np.ndarray], student: list[np.ndarray], k: int = 1) -> float:
    total, previous = 0.0, None
    for s, t in zip(student, teacher):
        s, t = ref_match(s, t)
        t_values, t_vectors = svd_of_maps(t)
        s_vectors = svd_of_maps(s)[1][:, :, : k + 3]
        scale = t_values[:, :k] / np.linalg.norm(t_values[:, :k], axis=1, keepdims=True)
        t_vectors = t_vectors[:, :, :k]
        chosen = np.empty_like(t_vectors)
        for b in range(len(s)):
            cosine = s_vectors[b].T @ t_vectors[b]  # (k+3, k)
            best = np.abs(cosine).argmax(axis=0)
            chosen[b] = s_vectors[b][:, best] * np.sign(cosine[best, np.arange(k)])
        current = (chosen * scale[:, None, :], t_vectors * scale[:, None, :])
        if previous is not None:
            kernels = [
                np.exp(-((now[:, :, None, :] - before[:, None, :, :]) ** 2) / 8)
                for now, before in zip(current, previous)
            ]
            total += float(((kernels[0] - kernels[1]) ** 2).sum())
        previous = current
    return total / len(student[0])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_dist(
    teacher: np.ndarray, student: np.ndarray, temperature: float = 4.0, beta: float = 1.0, gamma: float = 1.0
) -> float:
    def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)

    ys, yt = softmax(student / temperature), softmax(teacher / temperature)
    return temperature**2 * (beta * (1 - pearson(ys, yt).mean()) + gamma * (1 - pearson(ys.T, yt.T).mean()))


def ref_kd(teacher: np.ndarray, student: np.ndarray, temperature: float) -> float:
    pt, ps = softmax(teacher / temperature), softmax(student / temperature)
    return float((pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean() * temperature**2)


def ref_standardized(z: np.ndarray) -> np.ndarray:
    """Sun et al.'s normalize: minus the row mean, over 1e-7 + the row's Bessel-corrected std."""
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


# --- values -----------------------------------------------------------------------------------------
@pytest.mark.golden("cc", "nst", "kdsvd", "dist")
@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_cc_nst_kdsvd_dist_match_their_references(teacher_name: str, student_name: str) -> None:
    teacher, student = pair_outputs(teacher_name, student_name, batch=SMALL)
    cc = build("cc", teacher, student, teacher_name, student_name)
    assert_matches(cc, teacher, student, ref_cc(f64(teacher[-2]), f64(student[-2]), cc))
    stages = ([f64(x) for x in teacher[1:-2]], [f64(x) for x in student[1:-2]])
    assert_matches(build("nst", teacher, student, teacher_name, student_name), teacher, student, ref_nst(*stages))
    assert_matches(build("kdsvd", teacher, student, teacher_name, student_name), teacher, student, ref_kdsvd(*stages))
    teacher, student = pair_outputs(teacher_name, student_name)  # a batch of 16: DIST relates its samples
    dist = build("dist", teacher, student, teacher_name, student_name, dist_beta=0.5, dist_gamma=2.0)
    assert_matches(dist, teacher, student, ref_dist(f64(teacher[-1]), f64(student[-1]), 4.0, 0.5, 2.0))


@pytest.mark.parametrize("method", ["cc", "nst", "kdsvd", "dist"])
def test_losses_and_gradients_on_real_feature_maps(
    real_outputs: tuple[list[Tensor], list[Tensor], Tensor], method: str
) -> None:
    """The value against the reference on maps with a trained network's structure (digits' maps are
    rank-deficient: KDSVD's SVD sees equal zero singular values, whose quotients torch's own SVD
    backward makes NaN); the float32 gradient against the float64 computation's (cosine)."""
    teacher, student, labels = real_outputs
    distiller = build(method, teacher, student, "ResNet20", "ResNetBaby")
    stages = ([f64(x) for x in teacher[1:-2]], [f64(x) for x in student[1:-2]])
    expected = {
        "cc": lambda: ref_cc(f64(teacher[-2]), f64(student[-2]), distiller),
        "nst": lambda: ref_nst(*stages),
        "kdsvd": lambda: ref_kdsvd(*stages),
        "dist": lambda: ref_dist(f64(teacher[-1]), f64(student[-1])),
    }[method]()
    at = Step(labels, torch.arange(REAL_BATCH), epoch=40)
    student32 = [out.clone().requires_grad_() for out in student]
    assert_close(loss := distiller.soft_loss(teacher, student32, at), expected)
    loss.backward()
    distiller.double()
    student64 = [out.double().requires_grad_() for out in student]
    distiller.compare([x.double() for x in distiller.select(teacher)], list(distiller.select(student64)), at).backward()
    used = [index for index, out in enumerate(student32) if out.grad is not None]
    ours = torch.cat([student32[index].grad.flatten().double() for index in used])
    exact = torch.cat([student64[index].grad.flatten() for index in used])
    assert torch.isfinite(ours).all() and F.cosine_similarity(ours, exact, dim=0).item() >= 0.99999


def test_kdsvds_gradient_is_torchs_svd_gradient_where_that_is_finite() -> None:
    """On random maps (distinct singular values) the gradient equals autograd's through torch's SVD."""
    teacher, student = pair_outputs("vgg13", "MobileNetV2", batch=SMALL)
    student = [out.double().requires_grad_() for out in student]
    distiller = build("kdsvd", teacher, student, "vgg13", "MobileNetV2")
    distiller.soft_loss(teacher, student, step(batch=SMALL)).backward()
    ours = [out.grad for out in student[1:-2]]
    maps = [out.detach().clone().requires_grad_() for out in student[1:-2]]
    total, previous = 0.0, None
    for s, t in zip(maps, teacher[1:-2]):  # the loss again, with torch.linalg.svd's own backward
        s, t = (
            x.double()
            for x in (
                F.adaptive_avg_pool2d(s, t.shape[2:]) if s.shape[2] > t.shape[2] else s,
                F.adaptive_avg_pool2d(t, s.shape[2:]) if t.shape[2] > s.shape[2] else t,
            )
        )
        vectors = []
        for x, n in ((t, 1), (s, 4)):
            _, values, right = torch.linalg.svd(x.reshape(len(x), -1, x.shape[3]), full_matrices=False)
            vectors.append(F.normalize(right.transpose(1, 2)[:, :, :n], dim=1))
        t_vec, s_vec = vectors
        scale = F.normalize(torch.linalg.svdvals(t.reshape(len(t), -1, t.shape[3]))[:, :1], dim=1).unsqueeze(1)
        cosine = s_vec.transpose(1, 2) @ t_vec
        mask = torch.where(cosine.abs() == cosine.abs().amax(1, keepdim=True), cosine.sign(), torch.zeros_like(cosine))
        current = ((s_vec @ mask) * scale, t_vec * scale)
        if previous is not None:
            k = [torch.exp(-(a.unsqueeze(2) - b.unsqueeze(1)).pow(2) / 8) for a, b in zip(current, previous)]
            total = total + (k[0] - k[1].detach()).pow(2).sum()
        previous = current
    (total / SMALL).backward()
    for mine, theirs in zip(ours, (m.grad for m in maps)):
        assert torch.allclose(mine, theirs, rtol=1e-8, atol=1e-12)


# --- gradients ----------------------------------------------------------------------------------------
USED = {"cc": [4], "nst": [1, 2, 3], "kdsvd": [1, 2, 3], "dist": [5]}  # resnet outputs: stem, 3 stages, pooled, logits


@pytest.mark.parametrize("method", list(USED))
def test_gradients_reach_the_student_and_own_modules_never_the_teacher(method: str) -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4", grad=True, batch=SMALL)
    distiller = build(method, teacher, student)
    distiller.soft_loss(teacher, student, step(batch=SMALL)).backward()
    assert all(out.grad is None for out in teacher)
    assert [index for index, out in enumerate(student) if out.grad is not None and out.grad.abs().sum() > 0] == USED[
        method
    ]
    parameters = dict(distiller.named_parameters())
    assert set(parameters) == (
        {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"} if method == "cc" else set()
    )
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters.values())


def test_cc_of_a_single_sample_is_zero_not_nan() -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4", batch=1)
    assert build("cc", teacher, student).soft_loss(teacher, student, step(batch=1)).item() == 0.0


# --- the loss's additions -----------------------------------------------------------------------------
def loss_of(
    method: str,
    teacher: list[Tensor],
    student: list[Tensor],
    teacher_name: str = "resnet32x4",
    student_name: str = "resnet8x4",
    **flags,
) -> tuple[DistillationLoss, Config]:
    """The run's distillation loss as training builds it, its flags resolved as the command line's."""
    argv = ["--distillation", method, "--teacher", teacher_name, "--student", student_name, "--recipe", "crd"]
    for name, value in flags.items():
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    config = with_defaults(parse_config(argv))
    setup = Setup.of(teacher, student, torch.arange(BATCH) % 10)
    return DistillationLoss(config, build_distiller(config, setup)), config


@pytest.mark.parametrize("method", ["crd", "nst", "kd"])
def test_kd_weight_adds_kd_at_the_kd_temperature_to_any_method(method: str) -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4")
    loss, config = loss_of(method, teacher, student, kd_weight=1, kd_temperature=3, crd_negatives=4)
    soft, distillation = loss(teacher, student, step())
    added = ref_kd(f64(teacher[-1]), f64(student[-1]), 3.0)
    assert (config.ce_weight, config.beta) == {"crd": (1.0, 0.8), "nst": (1.0, 50.0), "kd": (0.1, 0.9)}[method]
    assert_close(distillation - config.beta * soft, added, 1e-5)  # the difference of two float32 sums
    plain, _ = loss_of(method, teacher, student, kd_temperature=3, crd_negatives=4)
    if method != "crd":  # (crd's draws differ from call to call)
        assert torch.equal(plain(teacher, student, step())[1], config.beta * soft)


@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
def test_logit_standardization_z_scores_kd_and_dkds_logits_at_the_published_settings(
    teacher_name: str, student_name: str
) -> None:
    teacher, student = pair_outputs(teacher_name, student_name)
    t, s = (ref_standardized(f64(x[-1])) for x in (teacher, student))
    temperature, weight = LS_KD[(teacher_name, student_name)]
    kd, config = loss_of("kd", teacher, student, teacher_name, student_name, logit_standardization=True)
    assert (config.kd_temperature, config.beta, config.ce_weight) == (temperature, weight, 0.1)
    soft, distillation = kd(teacher, student, step())
    assert_close(soft, ref_kd(t, s, temperature))
    assert_close(distillation, weight * ref_kd(t, s, temperature))
    temperature, weight, beta = LS_DKD[(teacher_name, student_name)]
    dkd, config = loss_of("dkd", teacher, student, teacher_name, student_name, logit_standardization=True)
    assert (config.kd_temperature, config.dkd_alpha, config.dkd_beta, config.beta) == (
        temperature,
        weight,
        weight * beta,
        1.0,
    )
    expected = ref_dkd(t, s, step().labels.numpy(), weight, weight * beta, temperature)
    assert_close(dkd(teacher, student, step())[0], expected)


def test_logit_standardization_on_real_logits_reaches_the_students_logits_alone(
    real_outputs: tuple[list[Tensor], list[Tensor], Tensor],
) -> None:
    teacher, student, labels = real_outputs
    student = [out.clone().requires_grad_() for out in student]
    loss, config = loss_of("kd", teacher, student, "ResNet20", "ResNetBaby", logit_standardization=True, kd_weight=0.5)
    at = Step(labels, torch.arange(REAL_BATCH), epoch=40)
    soft, distillation = loss(teacher, student, at)
    t, s = (ref_standardized(f64(x[-1])) for x in (teacher, student))
    assert_close(soft, ref_kd(t, s, 2.0))
    assert_close(distillation, (9.0 + 0.5) * ref_kd(t, s, 2.0))  # the added KD reads the standardised logits too
    distillation.backward()
    assert [index for index, out in enumerate(student) if out.grad is not None] == [len(student) - 1]


# --- DOT ------------------------------------------------------------------------------------------------
def test_dot_steps_as_mdistillers_trainer() -> None:
    """Three steps on a shared parameter (both losses reach it), one of the cross-entropy alone and one
    of the distillation loss alone, against mdistiller's update written out in float64."""
    torch.manual_seed(0)
    start = {name: torch.randn(4, dtype=torch.float64) for name in ("shared", "task", "kd")}
    data = [torch.randn(4, dtype=torch.float64) for _ in range(3)]

    def losses(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        return ((p["shared"] * x).sum() + p["task"] @ x) ** 2, (p["shared"] - x).pow(2).sum() * (
            p["kd"] * x
        ).sum().exp()

    lr, momentum, delta, decay, weight = 0.1, 0.9, 0.075, 5e-4, 0.5
    ours = {name: value.clone().requires_grad_() for name, value in start.items()}
    optimizer = DOT(list(ours.values()), lr=lr, momentum=momentum, delta=delta, weight_decay=decay)
    for x in data:
        optimizer.update(*losses(ours, x), weight)

    params = {name: value.clone() for name, value in start.items()}
    task_buf, kd_buf = {}, {}
    m_task, m_kd = momentum - delta, momentum + delta
    for x in data:
        params = {name: value.detach().requires_grad_() for name, value in params.items()}
        parts = losses(params, x)
        task = dict(zip(("shared", "task"), torch.autograd.grad(weight * parts[0], [params["shared"], params["task"]])))
        kd = dict(zip(("shared", "kd"), torch.autograd.grad(weight * parts[1], [params["shared"], params["kd"]])))
        params = {name: value.detach() for name, value in params.items()}
        for name, g in task.items():  # the task gradient (with weight decay), momentum m_task where kd reaches too
            g = g + decay * params[name]
            task_buf[name] = (
                g if name not in task_buf else (m_task if name in kd else (m_task + m_kd) / 2) * task_buf[name] + g
            )
            params[name] = params[name] - lr * task_buf[name]
        for name, g in kd.items():  # then the kd gradient: weight decay only where no task gradient carries it
            if name not in kd_buf:
                kd_buf[name] = g
            elif name in task:
                kd_buf[name] = m_kd * kd_buf[name] + g
            else:
                kd_buf[name] = (m_task + m_kd) / 2 * kd_buf[name] + g + decay * params[name]
            params[name] = params[name] - lr * kd_buf[name]
    for name, value in ours.items():
        assert torch.allclose(value.detach(), params[name], rtol=1e-12, atol=0), name
    assert {"momentum_buffer", "momentum_kd_buffer"} == set(optimizer.state[ours["shared"]])


def test_dot_trains_end_to_end_and_checkpoints_its_two_momenta(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.pth"
    torch.save({"weights": build_model("ResNetBaby", 10).state_dict()}, teacher)
    flags = [
        "--distillation",
        "fitnet",
        "--optimizer",
        "dot",
        "--teacher",
        "ResNetBaby",
        "--student",
        "ResNetBaby",
        "--teacher_checkpoint",
        str(teacher),
        "--epochs",
        "1",
        "--max_batches",
        "2",
        "--batch_size",
        "32",
    ]
    metrics = run_training(tmp_path, *flags)
    assert len(metrics["train_soft_loss"]) == 1 and metrics["train_soft_loss"][0] > 0
    name = experiment_name(resolve(parse_config(["--dataset", "digits", "--lr", "0.05", *flags])))
    assert name.endswith("/fitnet/epochs=1,batch_size=32,lr=0.05,optimizer=dot,max_batches=2/seed0"), name
    state = torch.load(tmp_path / name / "last.pt", weights_only=True)["optimizer"]
    kinds = [set(entry) for entry in state["state"].values()]
    # the student's classifier: the cross-entropy's alone; the regressor: the distillation loss's alone
    assert {"momentum_buffer", "momentum_kd_buffer"} in kinds and {"momentum_buffer"} in kinds
    assert {"momentum_kd_buffer"} in kinds
    assert state["param_groups"][0]["task_momentum"] == pytest.approx(0.825)


# --- refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--distillation", "at", "--logit_standardization"],
            "--logit_standardization applies to kd and dkd, the methods it was published for; --distillation at is "
            "not one of them",
        ),
        (["--distillation", "none", "--kd_weight", "1"], "--kd_weight and --optimizer dot need a teacher's loss"),
        (["--distillation", "none", "--optimizer", "dot"], "--kd_weight and --optimizer dot need a teacher's loss"),
        (
            ["--distillation", "kd", "--optimizer", "dot", "--dot_delta", "0.95"],
            "--dot_delta must be at most --momentum (0.9)",
        ),
    ],
)
def test_what_cannot_apply_is_refused_in_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tucker_distillation.main(["--dataset", "digits", "--experiments_dir", str(tmp_path), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
    assert not any(tmp_path.iterdir())  # refused before any folder


def test_dot_refuses_ranks_and_negative_weights_are_flag_errors() -> None:
    config = resolve(Config(distillation="kd", optimizer="dot"))
    with pytest.raises(UsageError, match="^--optimizer dot trains in one process"):
        make_optimizer(config, [torch.zeros(1, requires_grad=True)], World(rank=0, size=2))
    with pytest.raises(SystemExit) as refused:
        parse_config(["--kd_weight", "-1"])
    assert refused.value.code == 2


# --- defaults, names, identity ----------------------------------------------------------------------------
def test_defaults_flags_and_registry() -> None:
    assert {"cc", "nst", "kdsvd", "dist"} <= DISTILLERS.keys()
    assert {name: DISTILLERS[name].defaults["beta"] for name in ("cc", "nst", "kdsvd", "dist")} == {
        "cc": 0.02,
        "nst": 50.0,
        "kdsvd": 1.0,
        "dist": 2.0,
    }  # RepDistiller's -b, mdistiller's FEAT_WEIGHT, DIST's
    assert all(DISTILLERS[name].defaults["ce_weight"] == 1.0 for name in ("cc", "nst", "kdsvd", "dist"))
    assert DISTILLERS["dist"].flags == ("beta", "kd_temperature", "dist_beta", "dist_gamma")
    assert {name for name, cls in DISTILLERS.items() if "logit_standardization" in cls.flags} == {"kd", "dkd"}
    dist = resolve(
        parse_config(
            [
                "--distillation",
                "dist",
                "--recipe",
                "imagenet",
                "--dataset",
                "imagenet",
                "--teacher",
                "resnet34",
                "--student",
                "resnet18",
            ]
        )
    )
    assert (dist.kd_temperature, dist.batch_size, dist.lr) == (1.0, 256, 0.1)  # DIST's ImageNet config
    assert dist.experiment_name == "imagenet/resnet34-resnet18/dist/recipe=imagenet/seed0"


def name_of(*argv: str) -> str:
    return resolve(
        parse_config(["--teacher", "resnet32x4", "--student", "resnet8x4", "--recipe", "crd", *argv])
    ).experiment_name


def test_the_additions_and_dot_are_part_of_a_runs_identity() -> None:
    base = "cifar100/resnet32x4-resnet8x4"
    assert name_of("--distillation", "crd") == f"{base}/crd/recipe=crd/seed0"
    assert name_of("--distillation", "crd", "--kd_weight", "1") == f"{base}/crd/kd_weight=1,recipe=crd/seed0"
    # the KD term's temperature counts once --kd_weight switches the term on; DOT's delta once DOT is on
    assert name_of("--distillation", "crd", "--kd_temperature", "2") == f"{base}/crd/recipe=crd/seed0"
    assert (
        name_of("--distillation", "crd", "--kd_weight", "1", "--kd_temperature", "2")
        == f"{base}/crd/kd_temperature=2,kd_weight=1,recipe=crd/seed0"
    )
    assert name_of("--distillation", "kd", "--dot_delta", "0.05") == f"{base}/kd/recipe=crd/seed0"
    assert (
        name_of("--distillation", "kd", "--optimizer", "dot", "--dot_delta", "0.05")
        == f"{base}/kd/recipe=crd,optimizer=dot,dot_delta=0.05/seed0"
    )
    # the published temperature and weight of logit standardisation are its defaults, not changes
    assert (
        name_of("--distillation", "kd", "--logit_standardization")
        == f"{base}/kd/logit_standardization=true,recipe=crd/seed0"
    )
    assert (
        name_of("--distillation", "kd", "--logit_standardization", "--kd_temperature", "4")
        == f"{base}/kd/kd_temperature=4,logit_standardization=true,recipe=crd/seed0"
    )
    for flags in (["--kd_weight", "1"], ["--optimizer", "dot"], ["--logit_standardization"]):
        student = resolve(parse_config(["--distillation", "kd", "--teacher", "resnet32x4", "--recipe", "crd", *flags]))
        assert experiment_name(teacher_config(student)) == "cifar100/teacher/resnet32x4/recipe=crd/seed0"


def test_a_grid_turns_logit_standardization_on_and_off_where_it_applies(tmp_path: Path) -> None:
    args, common = runner.parse_args(
        [
            "--grid",
            "pair=resnet32x4-resnet8x4",
            "--grid",
            "logit_standardization=true,false",
            "--distillations",
            "kd",
            "at",
            "--runs",
            "1",
            "--",
            "--recipe",
            "crd",
        ]
    )
    runs = sweep.build_grid(runner.grid_axes(args), common, tmp_path)
    base = "cifar100/resnet32x4-resnet8x4"
    assert [run.name for run in runs] == [
        f"{base}/kd/logit_standardization=true,recipe=crd/seed0",
        f"{base}/kd/recipe=crd/seed0",
        f"{base}/at/recipe=crd/seed0",
    ]
    assert "--logit_standardization" in runs[0].flags and "--no-logit_standardization" in runs[1].flags
    with pytest.raises(
        UsageError, match="^--grid logit_standardization: an on/off flag takes true or false; got 'yes'$"
    ):
        sweep.parse_axis("logit_standardization=yes")


def test_analysis_names_the_published_rows() -> None:
    def named(**flags) -> str:
        return analysis.method_name(
            dataclasses.asdict(with_defaults(Config(teacher="resnet32x4", student="resnet8x4", **flags)))
        )

    assert named(distillation="crd", kd_weight=1.0) == "crd+kd"
    assert named(distillation="kd", logit_standardization=True) == "kd+ls"
    assert named(distillation="dkd", logit_standardization=True, optimizer="dot") == "dkd+ls_dot"
    assert named(distillation="kd", optimizer="dot") == "kd_dot" and named(distillation="cc") == "cc"
    published = analysis.published_results()
    assert set(published["method"]) >= {"cc", "nst", "crd+kd", "kd+ls", "dkd+ls", "dist", "kd_dot"}
    assert not published.duplicated(["teacher", "student", "method"]).any()
    ours = published[published["method"].isin(["crd+kd", "kd+ls", "dkd+ls", "dist", "kd_dot"])]
    assert ours["source"].str.contains("arxiv.org/abs/1910.10699|logit-standardization-KD|DIST_KD|mdistiller").all()
    crd_kd = published[published["method"] == "crd+kd"].set_index(["teacher", "student"])["top1"]
    assert (
        len(crd_kd) == 13
        and crd_kd[("resnet32x4", "resnet8x4")] == 75.46
        and crd_kd[("wrn_40_2", "ShuffleV1")] == 76.27
    )
