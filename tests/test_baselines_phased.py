"""OFD, ReviewKD (mdistiller), AB, FT and FSP (RepDistiller, with their initialisation phase) against
float64 references written here from the published formulas, where their gradients go, which
parameters each phase trains, and a run resumed in either phase against an uninterrupted one.

The distillers compute in float32 on float32 outputs; the references compute in float64 on the same
values, the trained modules' weights copied from the distiller (BatchNorm on the batch's
statistics: the distillers' modules train).
"""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import Tensor, nn

from tests.conftest import run_training
from toolbox.config import Config, parse_config
from toolbox.distillation import Distiller, Setup, Step, build_distiller, with_defaults
from toolbox.errors import Interrupted, UsageError
from toolbox.methods import DISTILLERS
from toolbox.methods.ofd import ofd_stages
from toolbox.methods.phases import train_only
from toolbox.methods.reviewkd import REVIEWKD_BETA
from toolbox.models import build_model
from toolbox.rundir import experiment_name
from toolbox.training import Trainer

BATCH, CLASSES = 8, 100
RTOL = 1e-6
SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {  # stem, stages, pooled on 32x32 images (toolbox.models.stage_shapes)
    "resnet32x4": ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)),
    "resnet8x4": ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)),
    "vgg13": ((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)),
    "MobileNetV2": ((16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)),
    "ShuffleV1": ((24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)),
}
INIT = "init"


def fake_outputs(
    shapes: tuple[tuple[int, ...], ...], seed: int, grad: bool = False, batch: int = BATCH
) -> list[Tensor]:
    """``[stem, stages..., pooled, logits]``: signed maps (pre-activation ones can be negative)."""
    generator = torch.Generator().manual_seed(seed)
    outs = [torch.randn(batch, *shape, generator=generator) for shape in shapes]
    outs.append(3 * torch.randn(batch, CLASSES, generator=generator))
    return [out.requires_grad_(grad) for out in outs]


def perturbed(module: nn.Module, seed: int = 3) -> nn.Module:
    """BatchNorm affine parameters and convolution biases away from their initial values, so that
    a mix-up of channels would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") or ".1.weight" in name or "bn" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module


def build(
    method: str,
    teacher_out: list[Tensor],
    student_out: list[Tensor],
    teacher: str,
    student: str,
    teacher_model: Optional[nn.Module] = None,
    **flags: Any,
) -> Distiller:
    config = with_defaults(Config(distillation=method, teacher=teacher, student=student, **flags))
    torch.manual_seed(0)  # the modules' initial weights
    return build_distiller(config, Setup.of(teacher_out, student_out, teacher=teacher_model))


def step(phase: Optional[str] = None, epoch: int = 40, batch: int = BATCH) -> Step:
    return Step(torch.zeros(batch, dtype=torch.long), torch.arange(batch), epoch, phase)


def f64(x: Tensor) -> Tensor:
    return x.detach().double()


def assert_close(actual: Tensor, expected: float, rtol: float = RTOL) -> float:
    assert actual.dtype == torch.float32 and actual.shape == ()
    error = abs(actual.item() - expected) / abs(expected)
    assert error <= rtol, f"relative error {error:.2e}"
    return error


# --- float64 references --------------------------------------------------------------------------------
def ref_bn(y: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """BatchNorm in training mode: the batch's mean and biased variance."""
    mean, variance = y.mean(dim=(0, 2, 3), keepdim=True), y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gamma, beta = (f64(p).view(1, -1, 1, 1) for p in (bn.weight, bn.bias))
    return (y - mean) / torch.sqrt(variance + bn.eps) * gamma + beta


def ref_conv(x: Tensor, conv: nn.Module) -> Tensor:
    """The convolution ``conv`` with its float64 weights."""
    bias = None if conv.bias is None else f64(conv.bias)
    op = F.conv_transpose2d if isinstance(conv, nn.ConvTranspose2d) else F.conv2d
    return op(x, f64(conv.weight), bias, stride=conv.stride, padding=conv.padding)


def ref_pool(x: Tensor, size: int) -> Tensor:
    """Average pooling to size x size where the size divides the map's."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


def ref_margins(bn: nn.BatchNorm2d) -> Tensor:
    """mdistiller's margin loop, in Python floats with scipy's normal distribution."""
    margins = []
    for s, m in zip(bn.weight.tolist(), bn.bias.tolist()):
        s = abs(s)
        if norm.cdf(-m / s) > 0.001:
            margins.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m)
        else:
            margins.append(-3 * s)
    return torch.tensor(margins, dtype=torch.float32).double().view(1, -1, 1, 1)


def ref_ofd(teacher: list[Tensor], student: list[Tensor], distiller: Distiller, norms: list[nn.BatchNorm2d]) -> float:
    total, count = 0.0, len(distiller.connectors)
    for index, (t, s, (conv, bn)) in enumerate(
        zip(distiller.teacher_stages, distiller.student_stages, distiller.connectors)
    ):
        source = ref_bn(ref_conv(f64(student[s]), conv), bn)
        target = ref_pool(f64(teacher[t]), source.shape[2])
        margin = ref_margins(norms[t - 1])
        loss = (
            (source - margin) ** 2 * ((source > margin) & (target <= margin))
            + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
            + (source - target) ** 2 * (target > 0)
        )
        total += loss.mean(dim=0).sum().item() / 2 ** (count - index - 1)
    return total


def ref_nearest(x: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resizing to size x size: source index floor(i * in / out)."""
    rows = (torch.arange(size) * x.shape[2]) // size
    cols = (torch.arange(size) * x.shape[3]) // size
    return x[:, :, rows][:, :, :, cols]


def ref_hcl(student: list[Tensor], teacher: list[Tensor]) -> float:
    """Per level: the maps' MSE at weight 1, then their pools to 4x4, 2x2, 1x1 smaller than the map at
    weights 1/2, 1/4, ... in that order, normalised by the weights' sum."""
    total = 0.0
    for s, t in zip(student, teacher):
        terms = [(((s - t) ** 2).mean().item(), 1.0)]
        for size in (4, 2, 1):
            if size < s.shape[2]:
                terms.append((((ref_pool(s, size) - ref_pool(t, size)) ** 2).mean().item(), 0.5 ** len(terms)))
        total += sum(value * weight for value, weight in terms) / sum(weight for _, weight in terms)
    return total


def ref_reviewkd(teacher: list[Tensor], student: list[Tensor], distiller: Distiller, warm: float) -> float:
    """mdistiller's ReviewKD: ABF from the pooled features up, HCL against the teacher's maps."""
    levels = [*(f64(x) for x in student[1:-2]), f64(student[-2])[:, :, None, None]][::-1]
    targets = [*(f64(x) for x in teacher[1:-2]), f64(teacher[-2])[:, :, None, None]]
    results, fused = [], None
    for x, fusion, size, out_size in zip(levels, distiller.fusions, distiller.sizes, distiller.out_sizes):
        x = ref_bn(ref_conv(x, fusion.conv1[0]), fusion.conv1[1])
        if fused is not None:
            fused = ref_nearest(fused, size)
            z = torch.sigmoid(ref_conv(torch.cat([x, fused], 1), fusion.att_conv[0]))
            x = x * z[:, :1] + fused * z[:, 1:]
        if x.shape[-1] != out_size:
            x = ref_nearest(x, out_size)
        fused = x
        results.insert(0, ref_bn(ref_conv(x, fusion.conv2[0]), fusion.conv2[1]))
    return ref_hcl(results, targets) * warm


def ref_ab(teacher: list[Tensor], student: list[Tensor], distiller: Distiller) -> float:
    count, total = len(distiller.connectors), 0.0
    for index, (s, t, connector) in enumerate(zip(student[1:-2], teacher[1:-2], distiller.connectors)):
        source = f64(s) if isinstance(connector, nn.Identity) else ref_bn(ref_conv(f64(s), connector[0]), connector[1])
        t = f64(t)
        loss = ((source + 1) ** 2 * ((source > -1) & (t <= 0)) + (source - 1) ** 2 * ((source <= 1) & (t > 0))).sum()
        total += 2.0 ** (index - count + 1) * loss.item() / len(s) / 1000 * 3
    return total


def ref_layers(x: Tensor, layers: nn.Sequential) -> Tensor:
    """RepDistiller's paraphraser and translator: (transposed) convolutions, BatchNorm, LeakyReLU(0.1)."""
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            x = ref_conv(x, layer)
        elif isinstance(layer, nn.BatchNorm2d):
            x = ref_bn(x, layer)
        else:
            x = torch.where(x > 0, x, 0.1 * x)
    return x


def ref_ft(teacher: list[Tensor], student: list[Tensor], distiller: Distiller, phase: Optional[str]) -> float:
    t = f64(teacher[-3])
    factor_t = ref_layers(t, distiller.paraphraser["encoder"])
    if phase == INIT:
        return ((ref_layers(factor_t, distiller.paraphraser["decoder"]) - t) ** 2).mean().item()
    factor_s = ref_layers(f64(student[-3]), distiller.translator)
    size = min(factor_s.shape[2], factor_t.shape[2])
    factor_s, factor_t = ref_pool(factor_s, size), ref_pool(factor_t, size)

    def attention(f: Tensor) -> Tensor:
        a = (f**2).mean(dim=1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    return (attention(factor_s) - attention(factor_t)).abs().mean().item()


def ref_fsp(teacher: list[Tensor], student: list[Tensor]) -> float:
    def matrices(maps: list[Tensor]) -> list[np.ndarray]:
        out = []
        for bottom, top in zip(maps[:-1], maps[1:]):
            size = min(bottom.shape[2], top.shape[2])
            bottom, top = ref_pool(bottom, size).numpy(), ref_pool(top, size).numpy()
            out.append(np.einsum("bihw,bjhw->bji", bottom, top) / (size * size))
        return out

    pairs = zip(matrices([f64(x) for x in student[:-2]]), matrices([f64(x) for x in teacher[:-2]]))
    return float(sum(((s - t) ** 2).mean() for s, t in pairs))


# --- values on the shapes of the benchmark's pairs -----------------------------------------------------
def ofd_teacher(name: str) -> nn.Module:
    """A teacher whose BatchNorms before the stages' ReLU are away from (1, 0): varied margins,
    some of them on the -3 std branch."""
    teacher = build_model(name, CLASSES)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for bn in teacher.bn_before_relu():
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=generator))
            bn.bias.copy_(2 * torch.randn(bn.bias.shape, generator=generator))
    return teacher


@pytest.mark.golden("ofd")
@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
def test_ofd_matches_reference(teacher_name: str, student_name: str) -> None:
    teacher, student = fake_outputs(SHAPES[teacher_name], 0), fake_outputs(SHAPES[student_name], 1)
    model = ofd_teacher(teacher_name)
    distiller = perturbed(build("ofd", teacher, student, teacher_name, student_name, teacher_model=model))
    assert distiller.teacher_preact and distiller.student_preact and distiller.teacher_train_mode
    expected = ref_ofd(teacher, student, distiller, model.bn_before_relu())
    assert_close(distiller.soft_loss(teacher, student, step()), expected)


@pytest.mark.parametrize(
    "teacher, student, expected",
    [
        ("resnet32x4", "resnet8x4", ([1, 2, 3], [1, 2, 3])),
        ("vgg13", "MobileNetV2", ([1, 2, 3, 4], [1, 2, 3, 4])),
        (
            "resnet50",
            "MobileNetV1",
            ([2, 3, 4], [2, 3, 4]),
        ),  # mdistiller's ImageNet pair: get_stage_channels has no stem
        ("ResNet50", "vgg8", ([2, 3, 4], [2, 3, 4])),  # aligned on the last stages
        ("resnet32x4", "vgg8", ([1, 2, 3], [2, 3, 4])),
    ],
)
def test_ofd_distils_mdistillers_stages(teacher: str, student: str, expected: tuple[list[int], list[int]]) -> None:
    counts = {
        "resnet32x4": 3,
        "vgg13": 4,
        "MobileNetV2": 4,
        "resnet8x4": 3,
        "resnet50": 4,
        "MobileNetV1": 4,
        "ResNet50": 4,
        "vgg8": 4,
    }
    assert ofd_stages(teacher, student, counts[teacher], counts[student]) == expected


@pytest.mark.golden("reviewkd")
@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV1")])
@pytest.mark.parametrize("epoch", [5, 40])
def test_reviewkd_matches_reference(teacher_name: str, student_name: str, epoch: int) -> None:
    teacher, student = fake_outputs(SHAPES[teacher_name], 0), fake_outputs(SHAPES[student_name], 1)
    distiller = perturbed(build("reviewkd", teacher, student, teacher_name, student_name))
    expected = ref_reviewkd(teacher, student, distiller, min(epoch / 20, 1.0))
    assert_close(distiller.soft_loss(teacher, student, step(epoch=epoch)), expected)


@pytest.mark.golden("ab")
@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
def test_ab_matches_reference_in_init_and_is_zero_afterwards(teacher_name: str, student_name: str) -> None:
    teacher, student = fake_outputs(SHAPES[teacher_name], 0), fake_outputs(SHAPES[student_name], 1)
    distiller = perturbed(build("ab", teacher, student, teacher_name, student_name))
    assert_close(distiller.soft_loss(teacher, student, step(INIT)), ref_ab(teacher, student, distiller))
    assert distiller.soft_loss(teacher, student, step()).item() == 0.0


@pytest.mark.golden("ft")
@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
@pytest.mark.parametrize("phase", [INIT, None])
def test_ft_matches_reference(teacher_name: str, student_name: str, phase: Optional[str]) -> None:
    teacher, student = fake_outputs(SHAPES[teacher_name], 0), fake_outputs(SHAPES[student_name], 1)
    distiller = perturbed(build("ft", teacher, student, teacher_name, student_name))
    assert_close(distiller.soft_loss(teacher, student, step(phase)), ref_ft(teacher, student, distiller, phase))


@pytest.mark.golden("fsp")
def test_fsp_matches_reference_in_init_and_is_zero_afterwards() -> None:
    teacher, student = fake_outputs(SHAPES["resnet32x4"], 0), fake_outputs(SHAPES["resnet8x4"], 1)
    distiller = build("fsp", teacher, student, "resnet32x4", "resnet8x4")
    assert_close(distiller.soft_loss(teacher, student, step(INIT)), ref_fsp(teacher, student))
    assert distiller.soft_loss(teacher, student, step()).item() == 0.0


# --- on real feature maps ------------------------------------------------------------------------------
REAL_BATCH = 64


@pytest.fixture(scope="module")
def real(briefly_trained: tuple) -> dict[str, Any]:
    """Every output, activated and before the last ReLU, of the ``briefly_trained`` ResNet20 teacher
    and ResNetBaby student on a batch of digits, and the teacher (OFD's margins)."""
    teacher, student, images, _ = briefly_trained
    assert len(images) == REAL_BATCH
    with torch.no_grad():
        return {
            "teacher": teacher,
            "plain": (teacher(images), student(images)),
            "preact": (teacher(images, preact=True), student(images, preact=True)),
        }


REAL_CASES: dict[str, tuple[Optional[str], Callable[..., float]]] = {
    "ofd": (None, lambda t, s, d, real: ref_ofd(t, s, d, real["teacher"].bn_before_relu())),
    "reviewkd": (None, lambda t, s, d, real: ref_reviewkd(t, s, d, 1.0)),
    "ab": (INIT, lambda t, s, d, real: ref_ab(t, s, d)),
    "ft-init": (INIT, lambda t, s, d, real: ref_ft(t, s, d, INIT)),
    "ft": (None, lambda t, s, d, real: ref_ft(t, s, d, None)),
    "fsp": (INIT, lambda t, s, d, real: ref_fsp(t, s)),
}


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_losses_on_real_feature_maps(real: dict[str, Any], case: str) -> None:
    method = case.split("-")[0]
    phase, reference = REAL_CASES[case]
    plain_t, plain_s = real["plain"]
    distiller = build(method, plain_t, plain_s, "ResNet20", "ResNetBaby", teacher_model=real["teacher"])
    teacher = real["preact" if distiller.teacher_preact else "plain"][0]
    student = real["preact" if distiller.student_preact else "plain"][1]
    assert_close(
        distiller.soft_loss(teacher, student, step(phase, batch=REAL_BATCH)),
        reference(teacher, student, distiller, real),
    )


# --- gradients -----------------------------------------------------------------------------------------
STUDENT_MODEL = build_model("resnet8x4", CLASSES)  # the structure trained_modules reads (its head)
# method, phase -> the student outputs its loss reads (resnet: 1..3 stages, 4 pooled)
USED = {
    ("ofd", None): [1, 2, 3],
    ("reviewkd", None): [1, 2, 3, 4],
    ("ab", INIT): [1, 2, 3],
    ("ab", None): [],
    ("ft", INIT): [],
    ("ft", None): [3],
    ("fsp", INIT): [0, 1, 2, 3],
    ("fsp", None): [],
}


@pytest.mark.parametrize("method, phase", list(USED))
def test_gradients_reach_the_student_and_the_phases_modules_never_the_teacher(
    method: str, phase: Optional[str]
) -> None:
    teacher_name, student_name = "resnet32x4", "resnet8x4"
    teacher, student = (
        fake_outputs(SHAPES[teacher_name], 0, grad=True),
        fake_outputs(SHAPES[student_name], 1, grad=True),
    )
    distiller = build(method, teacher, student, teacher_name, student_name, teacher_model=ofd_teacher(teacher_name))
    own = [
        module
        for module in distiller.trained_modules(STUDENT_MODEL, phase)
        if module is not STUDENT_MODEL and any(module is other for other in distiller.modules())
    ]
    trained = train_only([distiller], own)  # as the training loop freezes what the phase does not train
    names = {id(parameter): name for name, parameter in distiller.named_parameters()}
    loss = distiller.soft_loss(teacher, student, step(phase))
    if loss.requires_grad:
        loss.backward()
    assert all(out.grad is None or not out.grad.any() for out in teacher)
    for index, out in enumerate(student):
        assert (out.grad is not None and out.grad.abs().sum() > 0) == (index in USED[method, phase]), index
    for parameter in trained:
        assert parameter.grad is not None, names[id(parameter)]
        # a bias before BatchNorm's mean subtraction is redundant: its gradient vanishes up to rounding
        if names[id(parameter)] not in {f"translator.{index}.bias" for index in (0, 3, 6)}:
            assert parameter.grad.abs().sum() > 0, names[id(parameter)]
    assert all(parameter.grad is None for parameter in distiller.parameters() if not parameter.requires_grad)
    assert bool(trained) == ((method, phase) in {("ofd", None), ("reviewkd", None), ("ft", INIT), ("ft", None)})


# --- defaults, flags, refusals -------------------------------------------------------------------------
def test_registry_defaults_and_flags() -> None:
    assert {"ofd", "reviewkd", "ab", "ft", "fsp"} <= DISTILLERS.keys()
    betas = {name: DISTILLERS[name].defaults["beta"] for name in ("ofd", "reviewkd", "ab", "ft", "fsp")}
    assert betas == {"ofd": 1e-3, "reviewkd": 5.0, "ab": 1.0, "ft": 200.0, "fsp": 50.0}
    assert DISTILLERS["ab"].flags == DISTILLERS["fsp"].flags == ("init_epochs",)  # no loss after init: beta weighs 0
    assert DISTILLERS["ft"].flags == ("beta", "init_epochs")
    assert DISTILLERS["reviewkd"].flags == ("beta", "reviewkd_warmup", "reviewkd_student_preact")
    assert Config.init_epochs == 30 and Config.reviewkd_warmup == 20 and Config.reviewkd_student_preact is False


@pytest.mark.parametrize(
    "teacher, student, flags, expected",
    [
        ("resnet32x4", "resnet8x4", [], {"beta": 5.0, "reviewkd_warmup": 20, "reviewkd_student_preact": False}),
        ("resnet56", "resnet20", [], {"beta": 0.6}),
        ("resnet32x4", "ShuffleV2", [], {"beta": 8.0}),
        (
            "resnet34",
            "resnet18",
            ["--recipe", "imagenet", "--dataset", "imagenet"],
            {"beta": 1.0, "reviewkd_warmup": 1, "reviewkd_student_preact": True, "batch_size": 256, "lr": 0.1},
        ),
        ("resnet50", "MobileNetV1", ["--recipe", "imagenet", "--dataset", "imagenet"], {"beta": 8.0}),
    ],
)
def test_reviewkd_weights_per_pair_and_the_imagenet_recipe(
    teacher: str, student: str, flags: list[str], expected: dict[str, Any]
) -> None:
    config = with_defaults(
        parse_config(["--distillation", "reviewkd", "--teacher", teacher, "--student", student, *flags])
    )
    assert {name: getattr(config, name) for name in expected} == expected
    assert REVIEWKD_BETA.get((teacher, student), 5.0) == config.beta


def test_ofd_imagenet_recipe_and_ft_init_learning_rate() -> None:
    ofd = with_defaults(
        parse_config(
            [
                "--distillation",
                "ofd",
                "--teacher",
                "resnet50",
                "--student",
                "MobileNetV1",
                "--recipe",
                "imagenet",
                "--dataset",
                "imagenet",
            ]
        )
    )
    assert (ofd.beta, ofd.batch_size, ofd.lr) == (1e-4, 128, 0.05)
    teacher, student = fake_outputs(SHAPES["vgg13"], 0), fake_outputs(SHAPES["MobileNetV2"], 1)
    shuffled = build("ft", teacher, student, "vgg13", "MobileNetV2", lr=0.01)
    resnet = build(
        "ft",
        fake_outputs(SHAPES["resnet32x4"], 0),
        fake_outputs(SHAPES["resnet8x4"], 1),
        "resnet32x4",
        "resnet8x4",
        lr=0.05,
    )
    assert [(p.name, p.epochs, p.lr) for p in shuffled.phases()] == [(INIT, 30, 0.01)]
    assert [(p.name, p.epochs, p.lr) for p in resnet.phases()] == [(INIT, 30, 0.01)]  # RepDistiller's 0.01 for ResNets
    assert build("ab", teacher, student, "vgg13", "MobileNetV2", lr=0.05, init_epochs=0).phases() == ()


@pytest.mark.parametrize(
    "method, teacher, student, message",
    [
        (
            "fsp",
            "wrn_40_2",
            "wrn_40_1",
            "^--distillation fsp compares FSP matrices entry by entry, so it needs the same "
            "widths in teacher and student at the stem and every stage; wrn_40_2 has 16, 32, "
            "64, 128; wrn_40_1 has 16, 16, 32, 64$",
        ),
        (
            "ofd",
            "ShuffleV1",
            "resnet8",
            "^--distillation ofd takes its margins from the BatchNorm before each of the "
            "teacher's stage ReLUs, which ShuffleV1 does not have",
        ),
        (
            "ab",
            "resnet32x4",
            "vgg8",
            "^--distillation ab needs the same number of stages in teacher and student; resnet32x4 has 3, vgg8 has 4$",
        ),
        ("reviewkd", "resnet32x4", "vgg8", "^--distillation reviewkd needs the same number of stages"),
    ],
)
def test_pairs_a_method_cannot_train_are_refused(method: str, teacher: str, student: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        DISTILLERS[method].check(with_defaults(Config(distillation=method, teacher=teacher, student=student)))


# --- phases in training ----------------------------------------------------------------------------------
PHASED = [
    "--dataset",
    "digits",
    "--batch_size",
    "16",
    "--max_batches",
    "2",
    "--init_epochs",
    "1",
    "--epochs",
    "1",
    "--student",
    "ResNetBaby",
    "--checkpoint_every",
    "1",
]  # last.pt after each batch but an epoch's last


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained teachers on disk: resnet8x4 (wider than ResNetBaby: AB's connectors are
    convolutions) and ResNet20."""
    folder = tmp_path_factory.mktemp("phased-teachers")
    paths = {}
    for arch in ("resnet8x4", "ResNet20"):
        torch.manual_seed(0)
        paths[arch] = folder / f"{arch}.pth"
        torch.save({"weights": build_model(arch, 10).state_dict()}, paths[arch])
    return paths


def states(trainer: Trainer) -> dict[str, dict[str, Tensor]]:
    return {
        key: {k: v.detach().clone() for k, v in getattr(trainer, key).state_dict().items()}
        for key in ("student", "distiller")
    }


def moved(before: dict[str, Tensor], after: dict[str, Tensor]) -> set[str]:
    return {key for key in before if not torch.equal(before[key], after[key])}


def last_pt(folder: Path, flags: list[str]) -> dict[str, Any]:
    name = experiment_name(parse_config(["--batch_size", "64", "--lr", "0.05", *PHASED, *flags]))
    return torch.load(folder / name / "last.pt", weights_only=True)


def train_recording(
    monkeypatch: pytest.MonkeyPatch, folder: Path, flags: list[str], stop_at: Optional[int] = None
) -> tuple[list[dict], dict[str, Any]]:
    """Train with the state of student and distiller recorded before each epoch (a preliminary one
    too), stopping as if killed at the ``stop_at``-th step; the records and the run's last.pt."""
    records, steps = [], []
    epoch, step_ = Trainer.train_epoch, Trainer.step

    def recording_epoch(self: Trainer, *args: Any) -> dict:
        records.append(states(self))
        return epoch(self, *args)

    def counting_step(self: Trainer, *args: Any) -> Any:
        steps.append(1)
        if len(steps) == stop_at:
            raise KeyboardInterrupt
        return step_(self, *args)

    monkeypatch.setattr(Trainer, "train_epoch", recording_epoch)
    monkeypatch.setattr(Trainer, "step", counting_step)
    try:
        run_training(folder, *PHASED, *flags)
    finally:
        monkeypatch.setattr(Trainer, "train_epoch", epoch)
        monkeypatch.setattr(Trainer, "step", step_)
    return records, last_pt(folder, flags)


def test_each_phase_trains_its_modules_and_a_resumed_run_is_the_uninterrupted_one(
    tmp_path: Path, teachers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--distillation", "ab", "--teacher", "resnet8x4", "--teacher_checkpoint", str(teachers["resnet8x4"])]
    (before, after_init), whole = train_recording(monkeypatch, tmp_path / "whole", flags)
    assert len(whole["phase_history"]) == 1 and len(whole["history"]["test_acc"]) == 1
    head = {key for key in before["student"] if key.startswith("linear.")}
    # init: the student but its head, and the connectors (convolutions: resnet8x4 is wider than ResNetBaby)
    assert moved(before["student"], after_init["student"]) == set(before["student"]) - head
    assert moved(before["distiller"], after_init["distiller"]) == set(before["distiller"]) != set()
    # the run's epochs: the whole student; the connectors frozen, their BatchNorm statistics too (eval mode)
    assert moved(after_init["student"], whole["student"]) == set(before["student"])
    assert moved(after_init["distiller"], whole["distiller"]) == set()
    assert whole["phase_history"][0]["train_soft_loss"] > 0 and whole["history"]["train_soft_loss"] == [0.0]

    # killed in the init epoch after its first batch was saved, resumed there with the init optimiser's
    # state; killed again in the main epoch likewise, resumed with the main optimiser's
    folder = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train_recording(monkeypatch, folder, flags, stop_at=2)
    stopped = last_pt(folder, flags)

    def parameters(state: dict[str, Tensor], leave_out: set[str] = set()) -> int:
        return len({key for key in state if "running_" not in key and "num_batches" not in key} - leave_out)

    assert stopped["phase_history"] == [] and stopped["position"]["batch"] == 1
    # the student's but its head's, and the connectors'
    assert len(stopped["optimizer"]["state"]) == parameters(before["student"], head) + parameters(before["distiller"])
    with pytest.raises(KeyboardInterrupt):
        train_recording(monkeypatch, folder, flags, stop_at=3)  # step 4 of the run
    stopped = last_pt(folder, flags)
    assert (
        len(stopped["phase_history"]) == 1
        and stopped["history"]["test_acc"] == []
        and stopped["position"]["batch"] == 1
    )
    assert len(stopped["optimizer"]["state"]) == parameters(before["student"])  # the student's, its head's too
    _, resumed = train_recording(monkeypatch, folder, flags)
    for key in ("student", "distiller"):
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key
    for entry, state in whole["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][entry]["momentum_buffer"])
    assert whole["history"] == resumed["history"] and whole["phase_history"] == resumed["phase_history"]


def test_ft_trains_the_paraphraser_alone_first_then_the_student_and_translator(
    tmp_path: Path, teachers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [
        "--distillation",
        "ft",
        "--teacher",
        "ResNet20",
        "--teacher_checkpoint",
        str(teachers["ResNet20"]),
        "--init_epochs",
        "1",
        "--epochs",
        "1",
    ]
    records, last = train_recording(monkeypatch, tmp_path, flags)
    before, after_init = records
    paraphraser = {key for key in before["distiller"] if key.startswith("paraphraser.")}
    assert moved(before["student"], after_init["student"]) == set()  # BatchNorm statistics too: eval mode
    assert moved(before["distiller"], after_init["distiller"]) == paraphraser
    assert moved(after_init["student"], last["student"]) == set(before["student"])
    assert moved(after_init["distiller"], last["distiller"]) == set(before["distiller"]) - paraphraser


@pytest.mark.parametrize(
    "entry, problem",
    [
        ([], None),
        ([{"train_hard_loss": 2.3, "train_soft_loss": 0.5, "train_acc": 10.0}], None),
        ("init", "its 'phase_history' entry is not a list of records of train_hard_loss, train_soft_loss, train_acc"),
        ([{"train_soft_loss": 0.5}], "its 'phase_history' entry is not a list of records"),
        (
            [{"train_hard_loss": 2.3, "train_soft_loss": float("nan"), "train_acc": 10.0}],
            "'phase_history' entry is not",
        ),
    ],
)
def test_a_damaged_phase_history_makes_last_pt_unusable(entry: Any, problem: Optional[str]) -> None:
    from toolbox.training.resume import HISTORY_KEYS, last_pt_problem

    state = {
        "student": {},
        "distiller": {},
        "optimizer": {},
        "scheduler": {},
        "torch_rng": torch.get_rng_state(),
        "elapsed": 1.0,
        "teacher_sha256": None,
        "history": {key: [] for key in HISTORY_KEYS},
        "position": None,
        "phase_history": entry,
    }
    found = last_pt_problem(state)
    assert found is None if problem is None else problem in found


def test_a_stop_signal_in_the_initialisation_phase_names_it(
    tmp_path: Path, teachers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during RepDistiller's initialisation says so (``init epoch 1``), not ``epoch 1``."""
    step = Trainer.step

    def step_then_stop(self: Trainer, *args: Any) -> Any:
        result = step(self, *args)
        signal.getsignal(signal.SIGTERM).__self__.signal = signal.SIGTERM  # the installed StopFlag
        return result

    monkeypatch.setattr(Trainer, "step", step_then_stop)
    flags = ["--distillation", "ab", "--teacher", "resnet8x4", "--teacher_checkpoint", str(teachers["resnet8x4"])]
    with pytest.raises(Interrupted, match=r"SIGTERM during init epoch 1; .*last.pt holds init epoch 1 up to batch 1"):
        run_training(tmp_path, *PHASED, *flags)
