"""``--distillation vid``: Variational Information Distillation (Ahn et al., CVPR 2019), as RepDistiller computes it."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step, stages
from toolbox.methods.bases import StageWiseDistiller, match_spatial


class VIDStage(nn.Module):
    """One stage of VID: a 1x1-convolution regressor predicts the mean of a Gaussian over the
    teacher's map from the student's, with a trained variance per channel; the loss is its
    negative log-likelihood per entry, less the constant."""

    init_variance = 5.0
    eps = 1e-5

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
        )
        # softplus(log_scale) + eps starts at the initial variance
        self.log_scale = nn.Parameter(
            torch.full((teacher_channels,), math.log(math.expm1(self.init_variance - self.eps)))
        )

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = match_spatial(student, teacher)
        variance = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((self.regressor(student) - teacher).pow(2) / variance + variance.log())).mean()


class VIDDistiller(StageWiseDistiller):
    """Variational Information Distillation (Ahn et al., 2019): at every stage, the Gaussian
    negative log-likelihood of the teacher's map given the student's (``VIDStage``), summed over
    the stages."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}
    flags = ("beta",)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        pairs = zip(stages(setup.student_shapes), stages(setup.teacher_shapes))
        self.per_stage = nn.ModuleList(VIDStage(s[0], t[0]) for s, t in pairs)

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return sum(stage(s, t) for stage, s, t in zip(self.per_stage, student, teacher))
