"""``--distillation ofd``: "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019),
as mdistiller's ``distillers/OFD.py`` computes it.

Each distilled stage of the student (before its last ReLU) goes through a connector (1x1
convolution + BatchNorm) to the teacher's width and is compared with the teacher's pre-activation
map (average-pooled to the student's size) by the partial L2 distance, whose margin per channel is
the expected negative pre-activation under the teacher's BatchNorm (its weight as the spread, its
bias as the mean); stage i of n weighs 1 / 2^(n-i).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.errors import UsageError
from toolbox.methods.base import Distiller, Setup, Step, stages
from toolbox.methods.bases import BaselineDistiller
from toolbox.models import MODELS
from toolbox.nets.common import bn_before_relu

NO_STEM_ENTRY = frozenset({"ResNet50", "resnet18", "resnet34", "resnet50", "MobileNetV1"})
"""Architectures whose mdistiller ``get_stage_channels()`` has no entry for the stem, so that OFD's
``[1:]`` leaves out their first stage (the ImageNet pair is distilled at stages 2..4)."""


MARGIN_CDF_FLOOR = 0.001  # mdistiller: below this probability of a negative pre-activation the margin is -3 std


def ofd_stages(teacher: str, student: str, teacher_stages: int, student_stages: int) -> tuple[list[int], list[int]]:
    """The stages OFD distils (output indices, 1..k) of teacher and student: mdistiller's
    ``get_stage_channels()[1:]`` of each, aligned on their last entries (``_align_list``)."""
    ours = [
        list(range(2 if arch in NO_STEM_ENTRY else 1, count + 1))
        for arch, count in ((teacher, teacher_stages), (student, student_stages))
    ]
    kept = min(len(indices) for indices in ours)
    return ours[0][len(ours[0]) - kept :], ours[1][len(ours[1]) - kept :]


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
    loss = (
        (source - margin) ** 2 * ((source > margin) & (target <= margin))
        + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
        + (source - target) ** 2 * (target > 0)
    )
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
    recipes = {"imagenet": {"batch_size": 128, "lr": 0.05, "beta": 1e-4}}  # r50_mv1/ofd.yaml: OFD.LOSS.FEAT_WEIGHT

    @classmethod
    def check(cls, config: Config) -> None:
        super().check(config)
        with torch.device("meta"):
            teacher = MODELS[config.teacher](1)
        if not hasattr(teacher, "bn_before_relu"):
            raise UsageError(
                f"--distillation ofd takes its margins from the BatchNorm before each of the teacher's "
                f"stage ReLUs, which {config.teacher} does not have (as in mdistiller); choose another --teacher"
            )

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        if setup.teacher is None:
            raise UsageError("ofd needs the teacher network (Setup.teacher): its margins come from its BatchNorms")
        self.teacher_stages, self.student_stages = ofd_stages(
            config.teacher, config.student, len(stages(setup.teacher_shapes)), len(stages(setup.student_shapes))
        )
        norms = bn_before_relu(setup.teacher)
        self.connectors = nn.ModuleList(
            ofd_connector(setup.student_shapes[s][0], setup.teacher_shapes[t][0])
            for t, s in zip(self.teacher_stages, self.student_stages)
        )
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
