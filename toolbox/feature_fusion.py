"""Two feature-distillation baselines of mdistiller that read the teacher's pre-activation maps.

* OFD, "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019), as mdistiller's
  ``distillers/OFD.py`` computes it: each distilled stage of the student (before its last ReLU)
  goes through a connector (1x1 convolution + BatchNorm) to the teacher's width and is compared
  with the teacher's pre-activation map (average-pooled to the student's size) by the partial L2
  distance, whose margin per channel is the expected negative pre-activation under the teacher's
  BatchNorm (its weight as the spread, its bias as the mean); stage i of n weighs 1 / 2^(n-i).
* ReviewKD, "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021), as mdistiller's
  ``distillers/ReviewKD.py``: the student's stages and pooled features, deepest first, are fused
  by attention-based fusion modules (ABF) into maps of the teacher's shapes, each compared with the
  teacher's pre-activation map (and pooled features) by the hierarchical context loss (HCL); the
  loss weight rises linearly over ``--reviewkd_warmup`` epochs.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.baselines import BaselineDistiller, StageWiseDistiller
from toolbox.config import Config
from toolbox.distillation import Distiller, Setup, Step, stages
from toolbox.errors import UsageError
from toolbox.models import MODELS
from toolbox.nets.common import bn_before_relu

# --- OFD ------------------------------------------------------------------------------------------------

NO_STEM_ENTRY = frozenset({"ResNet50", "resnet18", "resnet34", "resnet50", "MobileNetV1"})
"""Architectures whose mdistiller ``get_stage_channels()`` has no entry for the stem, so that OFD's
``[1:]`` leaves out their first stage (the ImageNet pair is distilled at stages 2..4)."""
MARGIN_CDF_FLOOR = 0.001  # mdistiller: below this probability of a negative pre-activation the margin is -3 std


def ofd_stages(teacher: str, student: str, teacher_stages: int, student_stages: int) -> tuple[list[int], list[int]]:
    """The stages OFD distils (output indices, 1..k) of teacher and student: mdistiller's
    ``get_stage_channels()[1:]`` of each, aligned on their last entries (``_align_list``)."""
    ours = [list(range(2 if arch in NO_STEM_ENTRY else 1, count + 1))
            for arch, count in ((teacher, teacher_stages), (student, student_stages))]
    kept = min(len(indices) for indices in ours)
    return ours[0][len(ours[0]) - kept:], ours[1][len(ours[1]) - kept:]


def ofd_margin(bn: nn.BatchNorm2d) -> Tensor:
    """Per channel, E[x | x < 0] for x ~ N(bias, |weight|^2), the BatchNorm's output before the
    ReLU: ``m - s * pdf(m/s) / cdf(-m/s)``, or ``-3 s`` where ``cdf(-m/s)`` is at most 0.001;
    computed in float64 as mdistiller does in Python floats, then float32, shaped (1, C, 1, 1)."""
    s, m = bn.weight.detach().double().abs().cpu(), bn.bias.detach().double().cpu()
    below = torch.special.ndtr(-m / s)
    truncated = -s * torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / below + m
    return torch.where(below > MARGIN_CDF_FLOOR, truncated, -3 * s).float().view(1, -1, 1, 1)


def partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's distance: no penalty where both the student (``source``) and the teacher are below
    the margin or the student is below a negative teacher value; squared error elsewhere (against
    the margin where the teacher is at or below it). Summed over channels and positions, averaged
    over the batch."""
    loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin))
            + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
            + (source - target) ** 2 * (target > 0))
    return loss.abs().mean(dim=0).sum()


def ofd_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """mdistiller's ``ConnectorConvBN`` (kernel 1): a 1x1 convolution without bias, N(0, 2 / C_out)
    weights, then BatchNorm (unit weight, zero bias)."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


class OFDDistiller(BaselineDistiller):
    """OFD on the pre-activation maps of the stages ``ofd_stages`` picks. The teacher runs in
    training mode, as mdistiller's ``OFD.train`` sets every module (the teacher included) and as
    the original code does: its maps are normalised by the batch's statistics. Trained: the
    connectors. Buffers (not saved: they follow from the teacher): the margins."""

    student_preact = teacher_preact = True
    teacher_train_mode = True
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1e-3}  # OFD.LOSS.FEAT_WEIGHT (CE_WEIGHT 1)
    flags = ("beta",)

    @classmethod
    def check(cls, config: Config) -> None:
        super().check(config)
        with torch.device("meta"):
            teacher = MODELS[config.teacher](1)
        if not hasattr(teacher, "bn_before_relu"):
            raise UsageError(f"--distillation ofd takes its margins from the BatchNorm before each of the teacher's "
                             f"stage ReLUs, which {config.teacher} does not have (as in mdistiller); choose another --teacher")

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        if setup.teacher is None:
            raise UsageError("ofd needs the teacher network (Setup.teacher): its margins come from its BatchNorms")
        self.teacher_stages, self.student_stages = ofd_stages(
            config.teacher, config.student, len(stages(setup.teacher_shapes)), len(stages(setup.student_shapes)))
        norms = bn_before_relu(setup.teacher)
        self.connectors = nn.ModuleList(
            ofd_connector(setup.student_shapes[s][0], setup.teacher_shapes[t][0])
            for t, s in zip(self.teacher_stages, self.student_stages))
        for index, stage in enumerate(self.teacher_stages):
            self.register_buffer(f"margin{index}", ofd_margin(norms[stage - 1]), persistent=False)

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return stages(outputs)

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        count = len(self.connectors)
        total = teacher[0].new_zeros(())
        for index, (t, s, connector) in enumerate(zip(self.teacher_stages, self.student_stages, self.connectors)):
            source = connector(student[s - 1])
            target = F.adaptive_avg_pool2d(teacher[t - 1], source.shape[-2:])
            total = total + partial_l2(source, target, getattr(self, f"margin{index}")) / 2 ** (count - index - 1)
        return total


# --- ReviewKD -------------------------------------------------------------------------------------------

# The weights the authors and mdistiller publish per pair (REVIEWKD_WEIGHT): ReviewKD's
# CIFAR-100/script/reviewKD.sh and ImageNet/README.md, mdistiller's configs/imagenet/*/reviewkd.yaml;
# every other pair keeps mdistiller's configs/cifar100/reviewkd.yaml's 5.0.
REVIEWKD_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("resnet34", "resnet18"): 1.0,
    ("resnet50", "MobileNetV1"): 8.0,
}
MAX_MID_CHANNELS = 512  # mdistiller: min(512, the student's pooled width); its MAX_MID_CHANNEL setting is never read


class AttentionFusion(nn.Module):
    """ReviewKD's ABF: the student's map to ``mid`` channels (1x1 convolution + BatchNorm), fused
    with the deeper level's (nearest-upsampled) by two per-pixel sigmoid attention weights, resized
    to the teacher's size and mapped to its width (3x3 convolution + BatchNorm). Returns the output
    and the fused map, which the next (shallower) level fuses in."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Optional[Tensor], size: int, out_size: int) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            deeper = F.interpolate(deeper, (size, size), mode="nearest")
            weights = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * weights[:, 0:1] + deeper * weights[:, 1:2]
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), x


def hcl_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """The hierarchical context loss: per level, the mean squared error of the maps and of their
    4x4, 2x2 and 1x1 average pools smaller than the map, weighted 1, 1/2, 1/4, 1/8 and normalised
    by the weights' sum; summed over the levels."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)) * weight
            weights += weight
        total = total + loss / weights
    return total


class ReviewKDDistiller(StageWiseDistiller):
    """ReviewKD on every stage and the pooled features (as 1x1 maps): the student's, after its
    last ReLU (before it with ``--reviewkd_student_preact``), fused deepest first into maps of the
    teacher's widths and sizes; the teacher's before its last ReLU. mdistiller's ``SHAPES``,
    ``OUT_SHAPES``, ``IN_CHANNELS`` and ``OUT_CHANNELS`` are the two networks' stage sizes and
    widths, which its configs spell out per pair. Trained: the fusion modules."""

    teacher_preact = True
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 5.0}  # configs/cifar100/reviewkd.yaml (CE_WEIGHT 1)
    flags = ("beta", "reviewkd_warmup", "reviewkd_student_preact")

    @classmethod
    def defaults_for(cls, config: Config) -> dict[str, Any]:
        return {**cls.defaults, "beta": REVIEWKD_BETA.get((config.teacher, config.student), cls.defaults["beta"])}

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.student_preact = config.reviewkd_student_preact
        self.warmup = config.reviewkd_warmup
        student = [*stages(setup.student_shapes), setup.student_shapes[-2]]
        teacher = [*stages(setup.teacher_shapes), setup.teacher_shapes[-2]]
        mid = min(MAX_MID_CHANNELS, student[-1][0])
        fusions = [AttentionFusion(s[0], mid, t[0], fuse=index < len(student) - 1)
                   for index, (s, t) in enumerate(zip(student, teacher))]
        self.fusions = nn.ModuleList(fusions[::-1])  # deepest first
        self.sizes = [1, *(shape[1] for shape in student[-2::-1])]
        self.out_sizes = [1, *(shape[1] for shape in teacher[-2::-1])]

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [*stages(outputs), outputs[-2][:, :, None, None]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        deepest_first = student[::-1]
        out, fused = self.fusions[0](deepest_first[0], None, self.sizes[0], self.out_sizes[0])
        results = [out]
        for features, fusion, size, out_size in zip(deepest_first[1:], self.fusions[1:], self.sizes[1:], self.out_sizes[1:]):
            out, fused = fusion(features, fused, size, out_size)
            results.insert(0, out)
        warm = min(step.epoch / self.warmup, 1.0) if self.warmup else 1.0
        return hcl_loss(results, teacher) * warm
