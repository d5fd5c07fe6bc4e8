"""The field's baselines against float64 references written here from the published formulas
(RepDistiller's distiller_zoo, mdistiller's DKD), and where their gradients go.

The distillers compute in float32 on float32 outputs (exact in float64); the references compute in
float64 on the same values, the trained modules' weights copied from the distiller.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.conftest import REAL_BATCH
from toolbox.config import Config
from toolbox.distillation import Distiller, Setup, Step, build_distiller, with_defaults
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS
from toolbox.methods.dkd import DKD_BETA, DKDDistiller

BATCH, CLASSES = 16, 100
SMALL = 4  # a batch for the stage-wise methods' maps (no batch relations) and for the tests that check no values
# Per-sample shapes of stem, stages and the pooled features on 32x32 images (toolbox.models.stage_shapes)
SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "resnet32x4": ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)),
    "resnet8x4": ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)),
    "vgg13": ((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)),
    "vgg8": ((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)),
    "MobileNetV2": ((16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)),
}
# Same sizes everywhere; the teacher's last stage pooled to the student's; the student's to the teacher's
PAIRS = [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2"), ("MobileNetV2", "vgg8")]
RTOL = 1e-6  # the float32 losses against the float64 references, but for the two below
# Losses that are small differences of their terms (random batches' similarity structures are alike):
# over 40 seeds of these shapes float32 kept SP within 4.2e-6 and PKT within 1.5e-4 of float64.
SP_RTOL, PKT_RTOL = RTOL, RTOL  # computed in float64 (in float32 they were 4.2e-6 and 1.5e-4 off)
FORMULA_RTOL = 1e-10  # the distillers' own computation run in float64


def fake_outputs(
    shapes: tuple[tuple[int, ...], ...], seed: int, grad: bool = False, batch: int = BATCH
) -> list[Tensor]:
    """``[stem, stages..., pooled, logits]`` of a batch: non-negative maps and pooled features (as
    after ReLU), logits of a trained network's spread."""
    generator = torch.Generator().manual_seed(seed)
    outs = [torch.randn(batch, *shape, generator=generator).relu() for shape in shapes]
    outs.append(3 * torch.randn(batch, CLASSES, generator=generator))
    return [out.requires_grad_(grad) for out in outs]


def build(
    method: str,
    teacher_out: list[Tensor],
    student_out: list[Tensor],
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    **flags,
) -> Distiller:
    """The distiller with its method's defaults for this pair filled in."""
    config = Config(distillation=method, teacher=teacher, student=student, **flags)
    return build_distiller(with_defaults(config), Setup.of(teacher_out, student_out))


def pair_outputs(
    teacher: str, student: str, grad: bool = False, batch: int = BATCH
) -> tuple[list[Tensor], list[Tensor]]:
    return fake_outputs(SHAPES[teacher], 0, grad, batch), fake_outputs(SHAPES[student], 1, grad, batch)


def step(epoch: int = 40, batch: int = BATCH) -> Step:
    labels = torch.randint(0, CLASSES, (batch,), generator=torch.Generator().manual_seed(2))
    return Step(labels=labels, indices=torch.arange(batch), epoch=epoch)


def f64(x: Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def assert_close(actual: Tensor, expected: float, rtol: float = RTOL) -> None:
    assert actual.dtype == torch.float32 and actual.shape == ()
    error = abs(actual.item() - expected) / abs(expected)
    assert error <= rtol, f"relative error {error:.2e}"


def assert_matches(
    distiller: Distiller, teacher: list[Tensor], student: list[Tensor], expected: float, rtol: float = RTOL
) -> None:
    """The float32 soft loss within ``rtol`` of the reference, and the same computation in float64
    (the distiller's modules too) within ``FORMULA_RTOL``: float32 rounding is all that differs."""
    at = step(batch=len(student[-1]))
    assert_close(distiller.soft_loss(teacher, student, at), expected, rtol)
    distiller.double()
    in_float64 = distiller.compare(
        [x.double() for x in distiller.select(teacher)], [x.double() for x in distiller.select(student)], at
    )
    assert in_float64.dtype == torch.float64 and in_float64.item() == pytest.approx(expected, rel=FORMULA_RTOL)


# --- float64 references, from the published formulas -------------------------------------------------
def ref_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling to size x size where the size divides the map's."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def ref_match(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = min(s.shape[2], t.shape[2])
    return ref_pool(s, size), ref_pool(t, size)


def ref_at(teacher: list[np.ndarray], student: list[np.ndarray]) -> float:
    def attention(f: np.ndarray) -> np.ndarray:
        a = (f**2).mean(axis=1).reshape(len(f), -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    total = 0.0
    for s, t in zip(student, teacher):
        s, t = ref_match(s, t)
        total += ((attention(s) - attention(t)) ** 2).mean()
    return total


def ref_sp(t: np.ndarray, s: np.ndarray) -> float:
    def gram(f: np.ndarray) -> np.ndarray:
        f = f.reshape(len(f), -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return float(((gram(t) - gram(s)) ** 2).sum() / len(s) ** 2)


def ref_pkt(t: np.ndarray, s: np.ndarray, eps: float = 1e-7) -> float:
    def probabilities(f: np.ndarray) -> np.ndarray:
        f = f / (np.sqrt((f**2).sum(axis=1, keepdims=True)) + eps)
        p = (f @ f.T + 1.0) / 2.0
        return p / p.sum(axis=1, keepdims=True)

    pt, ps = probabilities(t), probabilities(s)
    return float((pt * np.log((pt + eps) / (ps + eps))).mean())


def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean())


def ref_rkd(t: np.ndarray, s: np.ndarray, w_distance: float, w_angle: float) -> float:
    def distances(f: np.ndarray) -> np.ndarray:
        d = np.sqrt(np.maximum(((f[:, None, :] - f[None, :, :]) ** 2).sum(axis=2), 1e-12))
        np.fill_diagonal(d, 0.0)
        return d / d[d > 0].mean()

    def angles(f: np.ndarray) -> np.ndarray:
        e = f[None, :, :] - f[:, None, :]  # e[i, j] = f[j] - f[i]
        e = e / np.maximum(np.linalg.norm(e, axis=2, keepdims=True), 1e-12)
        return np.einsum("ijd,ikd->ijk", e, e).ravel()

    return w_distance * smooth_l1(distances(s), distances(t)) + w_angle * smooth_l1(angles(s), angles(t))


def ref_dkd(
    t_logits: np.ndarray, s_logits: np.ndarray, labels: np.ndarray, alpha: float, beta: float, temperature: float
) -> float:
    """TCKD on the (target, rest) probabilities, NCKD on the softmax over the non-target classes."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        return float((p * (np.log(p) - np.log(q))).sum())

    rows = np.arange(len(labels))
    pt, ps = softmax(t_logits / temperature), softmax(s_logits / temperature)
    binary_t = np.stack([pt[rows, labels], 1 - pt[rows, labels]], axis=1)
    binary_s = np.stack([ps[rows, labels], 1 - ps[rows, labels]], axis=1)
    others = np.ones_like(t_logits, dtype=bool)
    others[rows, labels] = False
    n, c = t_logits.shape
    other_t = softmax(t_logits[others].reshape(n, c - 1) / temperature)
    other_s = softmax(s_logits[others].reshape(n, c - 1) / temperature)
    return (alpha * kl(binary_t, binary_s) + beta * kl(other_t, other_s)) * temperature**2 / n


def ref_vid(teacher: list[Tensor], student: list[Tensor], stages: nn.ModuleList) -> float:
    """Float64 torch: the regressors' 1x1 convolutions as channel contractions of the copied weights."""
    total = torch.zeros((), dtype=torch.float64)
    for s, t, stage in zip(student, teacher, stages):
        s, t = (torch.from_numpy(x) for x in ref_match(f64(s), f64(t)))
        w1, w2, w3 = (
            conv.weight.detach().double()[:, :, 0, 0] for conv in stage.regressor if isinstance(conv, nn.Conv2d)
        )
        hidden = torch.einsum("oc,bchw->bohw", w2, torch.einsum("oc,bchw->bohw", w1, s).relu()).relu()
        mean = torch.einsum("oc,bchw->bohw", w3, hidden)
        variance = (torch.log1p(torch.exp(stage.log_scale.detach().double())) + 1e-5).view(1, -1, 1, 1)
        total += (0.5 * ((mean - t) ** 2 / variance + torch.log(variance))).mean()
    return total.item()


# --- values -----------------------------------------------------------------------------------------
@pytest.mark.golden("at")
@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_at_matches_reference(teacher_name: str, student_name: str) -> None:
    teacher, student = pair_outputs(teacher_name, student_name, batch=SMALL)
    distiller = build("at", teacher, student, teacher_name, student_name)
    expected = ref_at([f64(x) for x in teacher[1:-2]], [f64(x) for x in student[1:-2]])
    assert_matches(distiller, teacher, student, expected)


@pytest.mark.golden("vid")
@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_vid_matches_reference(teacher_name: str, student_name: str) -> None:
    teacher, student = pair_outputs(teacher_name, student_name, batch=SMALL)
    distiller = build("vid", teacher, student, teacher_name, student_name)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a different variance per channel: a mix-up of channels would show
        for stage in distiller.per_stage:
            stage.log_scale.add_(torch.randn(stage.log_scale.shape, generator=generator))
    expected = ref_vid(teacher[1:-2], student[1:-2], distiller.per_stage)
    assert_matches(distiller, teacher, student, expected)


def test_vid_starts_from_repdistillers_variance_and_bias_free_regressors() -> None:
    distiller = build("vid", *pair_outputs("vgg13", "MobileNetV2", batch=SMALL), "vgg13", "MobileNetV2")
    stage = distiller.per_stage[3]
    convs = [layer for layer in stage.regressor if isinstance(layer, nn.Conv2d)]
    assert [conv.weight.shape for conv in convs] == [(512, 160, 1, 1), (512, 512, 1, 1), (512, 512, 1, 1)]
    assert all(conv.bias is None for conv in convs)
    published = np.float32(np.log(np.exp(5.0 - 1e-5) - 1.0))
    assert torch.equal(stage.log_scale.detach(), torch.full((512,), float(published)))


def test_rkd_keeps_the_distances_of_samples_close_together_far_from_the_origin() -> None:
    """Pooled features that share a large mean (early in training) and differ little: the pairwise
    distances from |a|^2 + |b|^2 - 2 a.b cancel, which float32 computed 2.5e-4 of the loss off."""
    teacher, student = pair_outputs("resnet32x4", "resnet8x4")
    for outs in (teacher, student):
        outs[-2] = 4 + 0.05 * outs[-2]
    distiller = build("rkd", teacher, student)
    assert_matches(distiller, teacher, student, ref_rkd(f64(teacher[-2]), f64(student[-2]), 25.0, 50.0))


@pytest.mark.golden("sp")
@pytest.mark.parametrize("teacher_name, student_name", PAIRS[:2])
def test_sp_matches_reference(teacher_name: str, student_name: str) -> None:
    teacher, student = pair_outputs(teacher_name, student_name)
    distiller = build("sp", teacher, student, teacher_name, student_name)
    assert_matches(distiller, teacher, student, ref_sp(f64(teacher[-3]), f64(student[-3])), SP_RTOL)


@pytest.mark.golden("pkt")
@pytest.mark.parametrize("teacher_name, student_name", PAIRS[:2])
def test_pkt_matches_reference(teacher_name: str, student_name: str) -> None:
    teacher, student = pair_outputs(teacher_name, student_name)
    distiller = build("pkt", teacher, student, teacher_name, student_name)
    assert_matches(distiller, teacher, student, ref_pkt(f64(teacher[-2]), f64(student[-2])), PKT_RTOL)


def test_pkt_gradient_at_an_all_zero_feature_is_the_formulas_derivative() -> None:
    """Where RepDistiller's gradient is NaN (the square root of a zero sum of squares), ours is the
    derivative of the published formula, as central differences of the float64 reference give it."""
    teacher, student = pair_outputs("resnet32x4", "resnet8x4", batch=SMALL)
    student[-2] = student[-2].double()
    student[-2][1] = 0.0
    student[-2].requires_grad_()
    distiller = build("pkt", teacher, student)
    distiller.soft_loss(teacher, student, step(batch=SMALL)).backward()
    gradient = student[-2].grad[1].numpy()
    h = 1e-11  # far below PKT_EPS: the formula is linear in the zero feature there
    t, s = f64(teacher[-2]), f64(student[-2])
    differences = []
    for j in range(s.shape[1]):
        up, down = s.copy(), s.copy()
        up[1, j], down[1, j] = h, -h
        differences.append((ref_pkt(t, up) - ref_pkt(t, down)) / (2 * h))
    assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0
    np.testing.assert_allclose(gradient, differences, rtol=1e-3)


@pytest.mark.parametrize(
    "teacher_name, student_name, flags",
    [("resnet32x4", "resnet8x4", {}), ("vgg13", "MobileNetV2", {"rkd_distance": 1.0, "rkd_angle": 2.0})],
)
@pytest.mark.golden("rkd")
def test_rkd_matches_reference(teacher_name: str, student_name: str, flags: dict[str, float]) -> None:
    teacher, student = pair_outputs(teacher_name, student_name)
    distiller = build("rkd", teacher, student, teacher_name, student_name, **flags)
    expected = ref_rkd(
        f64(teacher[-2]), f64(student[-2]), flags.get("rkd_distance", 25.0), flags.get("rkd_angle", 50.0)
    )
    assert_matches(distiller, teacher, student, expected)


@pytest.mark.parametrize(
    "teacher_name, student_name, flags",
    [("resnet32x4", "resnet8x4", {}), ("vgg13", "vgg8", {"kd_temperature": 2.0, "dkd_alpha": 0.5})],
)
@pytest.mark.golden("dkd")
def test_dkd_matches_reference(teacher_name: str, student_name: str, flags: dict[str, float]) -> None:
    teacher, student = pair_outputs(teacher_name, student_name)
    distiller = build("dkd", teacher, student, teacher_name, student_name, **flags)
    expected = ref_dkd(
        f64(teacher[-1]),
        f64(student[-1]),
        step().labels.numpy(),
        flags.get("dkd_alpha", 1.0),
        DKD_BETA.get((teacher_name, student_name), 8.0),
        flags.get("kd_temperature", 4.0),
    )
    assert_matches(distiller, teacher, student, expected)


# (teacher stage, student stage, the regressor's convolution: transposed?, kernel, stride, padding)
FITNET_CASES = [
    ((128, 16, 16), (128, 16, 16), False, 1, 1, 0),  # resnet32x4 -> resnet8x4's hint layer: ConvReg's 1x1, with a bias
    ((160, 2, 2), (512, 4, 4), False, 3, 2, 1),  # student twice the teacher's size
    ((512, 4, 4), (160, 2, 2), True, 4, 2, 1),  # half: vgg13 -> MobileNetV2's last stage
    ((64, 8, 8), (32, 10, 10), False, 3, 1, 0),  # otherwise a valid convolution that shrinks to fit
]


@pytest.mark.golden("fitnet")
@pytest.mark.parametrize("teacher_shape, student_shape, transposed, kernel, stride, padding", FITNET_CASES)
def test_fitnet_matches_reference(
    teacher_shape: tuple[int, ...],
    student_shape: tuple[int, ...],
    transposed: bool,
    kernel: int,
    stride: int,
    padding: int,
) -> None:
    teacher = fake_outputs(((8, 32, 32), teacher_shape, (64,)), 0, batch=SMALL)
    student = fake_outputs(((8, 32, 32), student_shape, (64,)), 1, batch=SMALL)
    distiller = build("fitnet", teacher, student, feature_layer=1)
    conv, bn, _ = distiller.regressor
    assert isinstance(conv, nn.ConvTranspose2d) == transposed and conv.bias is not None
    assert (conv.kernel_size, conv.stride, conv.padding) == ((kernel, kernel), (stride, stride), (padding, padding))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # BatchNorm's affine parameters away from the identity
        bn.weight.copy_(1 + 0.5 * torch.randn(bn.weight.shape, generator=generator))
        bn.bias.copy_(0.5 * torch.randn(bn.bias.shape, generator=generator))

    weight, bias = conv.weight.detach().double(), conv.bias.detach().double()
    x = student[1].double()
    y = (F.conv_transpose2d if transposed else F.conv2d)(x, weight, bias, stride=stride, padding=padding)
    mean, variance = y.mean(dim=(0, 2, 3), keepdim=True), y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gamma, beta = (p.detach().double().view(1, -1, 1, 1) for p in (bn.weight, bn.bias))
    y = ((y - mean) / torch.sqrt(variance + 1e-5) * gamma + beta).relu()
    expected = ((y - teacher[1].double()) ** 2).mean().item()
    assert_matches(distiller, teacher, student, expected)


# --- defaults, flags, refusals ------------------------------------------------------------------------
BASELINE_CLASSES = {name: DISTILLERS[name] for name in ("fitnet", "at", "sp", "pkt", "rkd", "vid", "dkd")}


def test_registry_order_defaults_and_flags() -> None:
    assert {"fitnet", "at", "sp", "pkt", "rkd", "vid", "crd", "dkd"} <= DISTILLERS.keys()
    betas = {name: cls.defaults["beta"] for name, cls in BASELINE_CLASSES.items()}
    assert betas == {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "pkt": 30000.0, "rkd": 1.0, "vid": 1.0, "dkd": 1.0}
    assert all(
        cls.defaults["ce_weight"] == 1.0 and not cls.reads_maps and cls.needs_teacher
        for cls in BASELINE_CLASSES.values()
    )
    assert DISTILLERS["fitnet"].defaults["feature_layer"] == 2 and DISTILLERS["fitnet"].flags == (
        "feature_layer",
        "beta",
    )
    assert DISTILLERS["rkd"].flags == ("beta", "rkd_distance", "rkd_angle")
    assert DISTILLERS["dkd"].flags == (
        "beta",
        "kd_temperature",
        "dkd_alpha",
        "dkd_beta",
        "dkd_warmup",
        "logit_standardization",
    )
    fields = {item.name for item in dataclasses.fields(Config)}
    assert all(set(cls.flags) <= fields and set(cls.defaults) <= fields for cls in BASELINE_CLASSES.values())


@pytest.mark.parametrize(
    "teacher, student, expected",
    [
        ("resnet56", "resnet20", 2.0),
        ("resnet110", "resnet32", 2.0),
        ("vgg13", "vgg8", 6.0),
        ("vgg13", "MobileNetV2", 6.0),
        ("wrn_40_2", "wrn_16_2", 6.0),
        ("wrn_40_2", "wrn_40_1", 6.0),
        ("resnet32x4", "resnet8x4", 8.0),
        ("ResNet50", "MobileNetV2", 8.0),  # mdistiller's default
    ],
)
def test_dkd_beta_defaults_per_pair(teacher: str, student: str, expected: float) -> None:
    config = Config(distillation="dkd", teacher=teacher, student=student)
    assert DKDDistiller.defaults_for(config)["dkd_beta"] == expected
    assert DKDDistiller.defaults_for(config)["beta"] == 1.0  # the overall weight


def test_dkd_explicit_beta_wins_over_the_pair_default() -> None:
    teacher, student = pair_outputs("vgg13", "vgg8")
    explicit = build("dkd", teacher, student, "vgg13", "vgg8", dkd_beta=3.0)
    assert explicit.nckd_weight == 3.0 and build("dkd", teacher, student, "vgg13", "vgg8").nckd_weight == 6.0


@pytest.mark.parametrize("warmup, factors", [(20, {1: 0.05, 10: 0.5, 20: 1.0, 40: 1.0}), (0, {1: 1.0, 40: 1.0})])
def test_dkd_warms_up_linearly(warmup: int, factors: dict[int, float]) -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4")
    distiller = build("dkd", teacher, student, dkd_warmup=warmup)
    full = ref_dkd(f64(teacher[-1]), f64(student[-1]), step().labels.numpy(), 1.0, 8.0, 4.0)
    for epoch, factor in factors.items():
        assert_close(distiller.soft_loss(teacher, student, step(epoch=epoch)), factor * full)


@pytest.mark.parametrize("method", ["at", "vid"])
def test_stagewise_methods_refuse_different_numbers_of_stages(method: str) -> None:
    teacher, student = pair_outputs("resnet32x4", "vgg8")
    with pytest.raises(
        UsageError,
        match=f"^--distillation {method} needs the same number of stages in teacher and "
        "student; resnet32x4 has 3, vgg8 has 4$",
    ):
        build(method, teacher, student, "resnet32x4", "vgg8")


def test_fitnet_refuses_a_layer_that_is_no_map_and_sizes_it_cannot_map() -> None:
    teacher, student = pair_outputs("resnet32x4", "vgg8")
    expected = "^--feature_layer must be from 0 .the stem. to 3 for vgg8 and resnet32x4; got 4$"  # every method's check
    with pytest.raises(UsageError, match=expected):
        build("fitnet", teacher, student, "resnet32x4", "vgg8", feature_layer=4)
    teacher = fake_outputs(((8, 32, 32), (64, 8, 8), (64,)), 0, batch=SMALL)
    student = fake_outputs(((8, 32, 32), (32, 2, 2), (64,)), 1, batch=SMALL)  # ConvReg has no way from 2x2 up to 8x8
    with pytest.raises(
        UsageError, match="^--feature_layer: the student's map 32x2x2 cannot be mapped onto the teacher's 64x8x8"
    ):
        build("fitnet", teacher, student, feature_layer=1)


# --- gradients, precision, memory format --------------------------------------------------------------
USED = {
    "fitnet": [2],
    "at": [1, 2, 3],
    "sp": [3],
    "pkt": [4],
    "rkd": [4],
    "vid": [1, 2, 3],
    "dkd": [5],
}  # resnet outputs


@pytest.mark.parametrize("method", list(USED))
def test_gradients_reach_the_student_and_own_modules_never_the_teacher(method: str) -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4", grad=True, batch=SMALL)
    distiller = build(method, teacher, student)
    distiller.soft_loss(teacher, student, step(epoch=1, batch=SMALL)).backward()
    assert all(out.grad is None or not out.grad.any() for out in teacher)
    for index, out in enumerate(student):
        assert (out.grad is not None and out.grad.abs().sum() > 0) == (index in USED[method]), index
    for name, parameter in distiller.named_parameters():
        assert parameter.grad is not None, name
        # a bias before BatchNorm's mean subtraction is redundant: its gradient vanishes up to rounding
        if name != "regressor.0.bias":
            assert parameter.grad.abs().sum() > 0, name
    assert (len(list(distiller.parameters())) > 0) == (method in ("fitnet", "vid"))


@pytest.mark.parametrize("method", list(USED))
def test_float32_under_autocast_and_on_channels_last_maps(method: str) -> None:
    """bf16 outputs under bf16 autocast: the loss of their float32 values, computed in float32."""
    teacher, student = (
        [out.to(torch.bfloat16) for out in outs] for outs in pair_outputs("vgg13", "MobileNetV2", batch=SMALL)
    )
    distiller = build(method, teacher, student, "vgg13", "MobileNetV2")
    at = step(batch=SMALL)
    expected = distiller.soft_loss([out.float() for out in teacher], [out.float() for out in student], at)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = distiller.soft_loss(teacher, student, at)
    assert_close(under_autocast, expected.item())

    def channels_last(outs: list[Tensor]) -> list[Tensor]:
        return [out.float().to(memory_format=torch.channels_last) if out.dim() == 4 else out.float() for out in outs]

    assert_close(distiller.soft_loss(channels_last(teacher), channels_last(student), at), expected.item())


# --- on real feature maps (the session's ``real_outputs``, tests/conftest.py) --------------------------
@pytest.mark.parametrize("method", ["at", "sp", "pkt", "rkd", "vid", "dkd"])
def test_losses_and_gradients_on_real_feature_maps(
    real_outputs: tuple[list[Tensor], list[Tensor], Tensor], method: str
) -> None:
    """The value against the float64 reference of the published formula; the float32 gradient
    against the same computation's in float64 (cosine), as training calls it."""
    teacher, student, labels = real_outputs
    distiller = build(method, teacher, student, "ResNet20", "ResNetBaby")
    at = Step(labels, torch.arange(REAL_BATCH), epoch=40)
    references = {
        "at": lambda: ref_at([f64(x) for x in teacher[1:-2]], [f64(x) for x in student[1:-2]]),
        "sp": lambda: ref_sp(f64(teacher[-3]), f64(student[-3])),
        "pkt": lambda: ref_pkt(f64(teacher[-2]), f64(student[-2])),
        "rkd": lambda: ref_rkd(f64(teacher[-2]), f64(student[-2]), 25.0, 50.0),
        "vid": lambda: ref_vid(teacher[1:-2], student[1:-2], distiller.per_stage),
        "dkd": lambda: ref_dkd(f64(teacher[-1]), f64(student[-1]), labels.numpy(), 1.0, 8.0, 4.0),
    }
    student32 = [out.clone().requires_grad_() for out in student]
    assert_close(loss := distiller.soft_loss(teacher, student32, at), references[method]())
    loss.backward()
    distiller.double()
    student64 = [out.double().requires_grad_() for out in student]
    selected = [x.double() for x in distiller.select(teacher)]
    distiller.compare(selected, list(distiller.select(student64)), at).backward()
    used = [index for index, out in enumerate(student32) if out.grad is not None]
    assert used, "the loss reaches no student output"
    ours = torch.cat([student32[index].grad.flatten().double() for index in used])
    exact = torch.cat([student64[index].grad.flatten() for index in used])
    assert F.cosine_similarity(ours, exact, dim=0).item() >= 0.99999
