"""``--distillation reviewkd``: "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021), as
mdistiller's ``distillers/ReviewKD.py`` computes it.

The student's stages and pooled features, deepest first, are fused by attention-based fusion
modules (ABF) into maps of the teacher's shapes, each compared with the teacher's pre-activation
map (and pooled features) by the hierarchical context loss (HCL); the loss weight rises linearly
over ``--reviewkd_warmup`` epochs.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step, stages
from toolbox.methods.bases import StageWiseDistiller

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
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
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
    min_rows = 2  # the pooled features' fusion ends in BatchNorm over (B, C, 1, 1): one sample has no statistics
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 5.0}  # configs/cifar100/reviewkd.yaml (CE_WEIGHT 1)
    flags = ("beta", "reviewkd_warmup", "reviewkd_student_preact")
    # REVIEWKD.WARMUP_EPOCHS, STU_PREACT (REVIEWKD_WEIGHT per pair: REVIEWKD_BETA)
    recipes = {"imagenet": {"batch_size": 256, "lr": 0.1, "reviewkd_warmup": 1, "reviewkd_student_preact": True}}

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
        fusions = [
            AttentionFusion(s[0], mid, t[0], fuse=index < len(student) - 1)
            for index, (s, t) in enumerate(zip(student, teacher))
        ]
        self.fusions = nn.ModuleList(fusions[::-1])  # deepest first
        self.sizes = [1, *(shape[1] for shape in student[-2::-1])]
        self.out_sizes = [1, *(shape[1] for shape in teacher[-2::-1])]

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [*stages(outputs), outputs[-2][:, :, None, None]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        deepest_first = student[::-1]
        out, fused = self.fusions[0](deepest_first[0], None, self.sizes[0], self.out_sizes[0])
        results = [out]
        for features, fusion, size, out_size in zip(
            deepest_first[1:], self.fusions[1:], self.sizes[1:], self.out_sizes[1:]
        ):
            out, fused = fusion(features, fused, size, out_size)
            results.insert(0, out)
        warm = min(step.epoch / self.warmup, 1.0) if self.warmup else 1.0
        return hcl_loss(results, teacher) * warm
