"""Distillation losses against float64 references written here, and where their gradients go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolbox.config import parse_config
from toolbox.config.choices import parse_ranks
from toolbox.distillation import Distiller, Step, distiller_for
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS
from toolbox.methods.featuremap import normalized_distance
from toolbox.tucker import project, tucker

SHAPE = (16, 64, 8, 8)


def make(method: str, *flags: str, student_channels: int = 64) -> Distiller:
    config = parse_config(["--distillation", method, *flags])
    return distiller_for(config, outputs(0), outputs(0, channels=student_channels))


LAYER3, LOGITS = 3, -1  # indexes into a model's outputs
STEP = Step(labels=torch.zeros(SHAPE[0], dtype=torch.long), indices=torch.arange(SHAPE[0]), epoch=1)


def outputs(seed: int, channels: int = 64, grad: bool = False) -> list[torch.Tensor]:
    """Fake network outputs [stem, layer1, layer2, layer3, pooled, logits]; only layer3 and the logits
    matter here."""
    generator = torch.Generator().manual_seed(seed)
    layer3 = torch.randn(SHAPE[0], channels, *SHAPE[2:], generator=generator).relu().requires_grad_(grad)
    logits = torch.randn(SHAPE[0], 10, generator=generator).requires_grad_(grad)
    return [torch.empty(0), torch.empty(0), torch.empty(0), layer3, torch.empty(0), logits]


# --- float64 numpy references -----------------------------------------------------------------
def ref_distance(student: np.ndarray, teacher: np.ndarray, loss: str) -> float:
    s = student.reshape(len(student), -1)
    t = teacher.reshape(len(teacher), -1)
    diff = s / np.linalg.norm(s, axis=1, keepdims=True) - t / np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.abs(diff).mean() if loss == "l1" else (diff**2).mean())


def ref_channel_factor(teacher: np.ndarray, rank: int) -> np.ndarray:
    """Leading left singular vectors of the channel unfolding, by SVD (signs differ from eigh's)."""
    unfolding = np.moveaxis(teacher, 1, 0).reshape(teacher.shape[1], -1)
    return np.linalg.svd(unfolding, full_matrices=False)[0][:, :rank]


def ref_project(x: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return np.einsum("bchw,cr->brhw", x, factor)


def ref_full_rank_factors(projected: np.ndarray) -> list[np.ndarray]:
    """The original's batch, height and width factors: all left singular vectors of each mode's
    unfolding of the teacher map projected on its channel factor."""
    return [np.linalg.svd(np.moveaxis(projected, mode, 0).reshape(projected.shape[mode], -1))[0] for mode in (0, 2, 3)]


def ref_rotate(x: np.ndarray, batch: np.ndarray, height: np.ndarray, width: np.ndarray) -> np.ndarray:
    return np.einsum("brhw,bi,hj,wk->irjk", x, batch, height, width)


def ref_recompose(core: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return np.einsum("brhw,cr->bchw", core, factor)


def as_numpy(out: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return out[LAYER3].detach().double().numpy(), out[LOGITS].detach().double().numpy()


# --- values ---------------------------------------------------------------------------------
def test_normalized_distance_golden_value() -> None:
    """Orthogonal unit vectors: |(1,0)-(0,1)| averaged over 2 entries is 1; squared also 1."""
    s, t = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])
    assert normalized_distance(s, t, "l1").item() == pytest.approx(1.0)
    assert normalized_distance(s, t, "l2").item() == pytest.approx(1.0)
    assert normalized_distance(s, 2 * s, "l1").item() == pytest.approx(0.0)  # blind to scale


@pytest.mark.golden("featuremap")
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_featuremap_loss_matches_reference(loss: str) -> None:
    teacher, student = outputs(0), outputs(1)
    value = make("featuremap", "--loss", loss).soft_loss(teacher, student, STEP)
    assert value.item() == pytest.approx(ref_distance(as_numpy(student)[0], as_numpy(teacher)[0], loss), rel=1e-5)


@pytest.mark.golden("tucker")
@pytest.mark.parametrize("rank", [32, 8])
@pytest.mark.parametrize("loss", ["l1", "l2"])
@pytest.mark.parametrize("core", ["original", "per_sample"])
def test_tucker_core_loss_matches_reference(rank: int, loss: str, core: str) -> None:
    """``original`` rotates the batch and spatial modes of both cores by the teacher's full-rank
    factors, as tensorly's tucker does; ``per_sample`` compares each sample's own core."""
    teacher, student = outputs(0), outputs(1)
    value = make("tucker", "--ranks", f"BATCH_SIZE,{rank},8,8", "--loss", loss, "--tucker_core", core).soft_loss(
        teacher, student, STEP
    )
    t, s = as_numpy(teacher)[0], as_numpy(student)[0]
    factor = ref_channel_factor(t, rank)
    t_core, s_core = ref_project(t, factor), ref_project(s, factor)
    if core == "original":
        rotations = ref_full_rank_factors(t_core)
        t_core, s_core = ref_rotate(t_core, *rotations), ref_rotate(s_core, *rotations)
    assert value.item() == pytest.approx(ref_distance(s_core, t_core, loss), rel=1e-4)


def test_the_two_cores_give_different_losses() -> None:
    teacher, student = outputs(0), outputs(1)
    losses = [
        make("tucker", "--tucker_core", core).soft_loss(teacher, student, STEP).item()
        for core in ("original", "per_sample")
    ]
    assert abs(losses[0] - losses[1]) > 0.01 * losses[0]


@pytest.mark.golden("tucker_recomp")
@pytest.mark.parametrize("target", ["teacher", "student", "both"])
def test_tucker_recomp_loss_matches_reference(target: str) -> None:
    teacher, student = outputs(0), outputs(1)
    distiller = make("tucker_recomp", "--ranks", "BATCH_SIZE,16,8,8", "--recomp_target", target)
    t, s = as_numpy(teacher)[0], as_numpy(student)[0]
    factor = ref_channel_factor(t, 16)
    t_view = ref_recompose(ref_project(t, factor), factor) if target != "student" else t
    s_view = ref_recompose(ref_project(s, factor), factor) if target != "teacher" else s
    assert distiller.soft_loss(teacher, student, STEP).item() == pytest.approx(
        ref_distance(s_view, t_view, "l1"), rel=1e-4
    )


@pytest.mark.golden("kd")
def test_kd_loss_matches_reference() -> None:
    teacher, student = outputs(0), outputs(1)
    t_logits, s_logits = as_numpy(teacher)[1] / 4.0, as_numpy(student)[1] / 4.0

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p_t = np.exp(log_softmax(t_logits))
    expected = (p_t * (log_softmax(t_logits) - log_softmax(s_logits))).sum(axis=1).mean() * 16.0
    assert make("kd", "--kd_temperature", "4").soft_loss(teacher, student, STEP).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_plain_training_has_no_soft_loss_and_needs_no_teacher() -> None:
    distiller = make("none")
    assert not distiller.needs_teacher
    assert distiller.soft_loss(None, outputs(1), STEP).item() == 0.0


@pytest.mark.parametrize("method", ["tucker", "tucker_recomp"])
def test_tucker_losses_do_not_depend_on_the_signs_or_order_of_factor_columns(method: str) -> None:
    """Why the fast back end may differ from tensorly's SVDs in signs and in the order of the
    full-rank factors' columns."""
    teacher, student = outputs(0), outputs(1)
    distiller = make(method, "--ranks", "BATCH_SIZE,16,8,8", "--recomp_target", "both")
    core, factors = tucker(teacher[LAYER3], parse_ranks("BATCH_SIZE,16,8,8"))
    generator = torch.Generator().manual_seed(0)
    changed = [
        f[:, torch.randperm(f.shape[1], generator=generator)]
        * torch.where(torch.rand(f.shape[1], generator=generator) < 0.5, -1.0, 1.0)
        for f in factors
    ]
    original = distiller.compare(teacher[LAYER3], student[LAYER3], core, factors)
    after = distiller.compare(teacher[LAYER3], student[LAYER3], project(teacher[LAYER3], changed), changed)
    assert after.item() == pytest.approx(original.item(), rel=1e-5)


@pytest.mark.parametrize("target", ["teacher", "student", "both"])
def test_tucker_recomp_skips_full_rank_rotations_without_changing_the_loss(target: str) -> None:
    """Reconstruction undoes them: the distiller's per-sample decomposition gives the loss of the
    original's, with the full-rank factors, and ignores --tucker_core."""
    teacher, student = outputs(0), outputs(1)
    distiller = make("tucker_recomp", "--ranks", "BATCH_SIZE,16,8,8", "--recomp_target", target)
    assert distiller.core == "per_sample" and "tucker_core" not in distiller.flags
    core, factors = tucker(teacher[LAYER3], parse_ranks("BATCH_SIZE,16,8,8"), core="original")
    assert all(factor is not None for factor in factors)
    with_rotations = distiller.compare(teacher[LAYER3], student[LAYER3], core, factors)
    assert distiller.soft_loss(teacher, student, STEP).item() == pytest.approx(with_rotations.item(), rel=1e-6)


def test_per_sample_core_needs_the_fast_backend() -> None:
    with pytest.raises(UsageError, match="--tucker_core per_sample needs --tucker_backend fast"):
        make("tucker", "--tucker_core", "per_sample", "--tucker_backend", "tensorly")
    make("tucker_recomp", "--tucker_core", "per_sample", "--tucker_backend", "tensorly")  # ignored there


def test_tucker_loss_stays_float32_under_autocast() -> None:
    """A bf16 rotation of the batch mode would swamp the core's small rows."""
    teacher, student = outputs(0), outputs(1)
    distiller = make("tucker", "--ranks", "BATCH_SIZE,8,8,8")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = distiller.soft_loss(teacher, student, STEP)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(distiller.soft_loss(teacher, student, STEP).item(), rel=1e-6)


# --- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method", ["featuremap", "tucker", "tucker_recomp", "kd", "noise"]
)  # the baselines: test_baselines.py
def test_gradients_reach_the_student_and_connector_never_the_teacher(method: str) -> None:
    teacher, student = outputs(0, grad=True), outputs(1, channels=32, grad=True)
    distiller = make(method, "--ranks", "BATCH_SIZE,16,8,8", student_channels=32)
    assert isinstance(
        distiller.connector, torch.nn.Identity if method == "kd" else torch.nn.Conv2d
    )  # 32 -> 64 channels
    distiller.soft_loss(teacher, student, STEP).backward()
    assert teacher[LAYER3].grad is None and teacher[LOGITS].grad is None
    used = student[LOGITS] if method == "kd" else student[LAYER3]
    assert used.grad is not None and used.grad.abs().sum() > 0
    if method != "kd":
        assert distiller.connector.weight.grad.abs().sum() > 0


def test_noise_generation_module_is_trained() -> None:
    distiller = make("noise", "--noise_std", "1.0")
    distiller.soft_loss(outputs(0), outputs(1, grad=True), STEP).backward()
    grads = [p.grad for p in distiller.generator.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_every_method_has_a_default_beta() -> None:
    assert parse_config(["--distillation", "kd"]).beta is None  # resolved at training time
    assert (DISTILLERS["kd"].defaults["beta"], DISTILLERS["kd"].defaults["ce_weight"]) == (0.9, 0.1)  # RepDistiller's
    assert all(DISTILLERS[m].defaults["beta"] == 125.0 for m in ("featuremap", "tucker", "tucker_recomp", "noise"))
    assert all(distiller.defaults["ce_weight"] == 1.0 for name, distiller in DISTILLERS.items() if name != "kd")


@pytest.mark.golden("noise")
def test_noise_loss_and_gradients_match_reference(real_outputs: tuple) -> None:
    """The student's map through the connector, plus --noise_std times the Gaussian noise the
    distiller draws, through the generation module (conv, ReLU, conv), pulled towards the teacher's
    map by the normalised L1 distance: the value and every gradient (the student's map, the
    connector's and the generator's weights) against float64, on a trained network's maps."""
    teacher_out, student_out, labels = real_outputs
    student_out = [out.detach().clone().requires_grad_() for out in student_out]
    distiller = distiller_for(parse_config(["--distillation", "noise", "--noise_std", "0.5"]), teacher_out, student_out)
    torch.manual_seed(7)
    value = distiller.soft_loss(list(teacher_out), student_out, Step(labels, torch.arange(len(labels)), 1))
    value.backward()
    with torch.no_grad():
        mapped = distiller.connector(student_out[LAYER3])
    torch.manual_seed(7)  # the distiller's one draw, repeated (in the map's memory format, as randn_like draws it)
    noise = torch.randn_like(mapped).double()

    params = {name: p.detach().double().requires_grad_() for name, p in distiller.named_parameters()}
    student_map = student_out[LAYER3].detach().double().requires_grad_()
    x = (
        student_map
        if "connector.weight" not in params
        else torch.nn.functional.conv2d(student_map, params["connector.weight"])
    )
    x = torch.nn.functional.conv2d(x + 0.5 * noise, params["generator.0.weight"], params["generator.0.bias"], padding=1)
    x = torch.nn.functional.conv2d(
        x.relu(), params["generator.2.weight"], params["generator.2.bias"], padding=1
    ).flatten(1)
    t = teacher_out[LAYER3].double().flatten(1)
    expected = (x / x.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)).abs().mean()
    expected.backward()

    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    pairs = [(student_out[LAYER3].grad, student_map.grad)]
    pairs += [(p.grad, params[name].grad) for name, p in distiller.named_parameters()]
    assert len(pairs) >= 5  # the map, the generator's two weights and biases (and the connector's weight)
    for ours, reference in pairs:  # as a whole: where an element of the L1 difference is within float32's rounding
        # of 0, float32 and float64 may take its sign either way, and the inputs under it get a gradient of other sign
        cosine = torch.nn.functional.cosine_similarity(ours.double().flatten(), reference.flatten(), dim=0)
        assert cosine.item() >= 0.99999 and ours.norm().item() == pytest.approx(reference.norm().item(), rel=1e-3)
