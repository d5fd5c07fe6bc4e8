"""``--distillation ickd``: Inter-Channel Correlation for Knowledge Distillation (Liu et al., ICCV 2021).

Computes what its authors' ``Cifar100/distiller_zoo/ICKD.py`` (ADLab-AutoDrive/ICKD) computes on the
last stage's maps, weighted as their ``train_student.sh`` (``-b 4``, cross-entropy 1, no KD term).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step, stages
from toolbox.methods.bases import BaselineDistiller


def channel_correlations(maps: Tensor) -> Tensor:
    """Each sample's (C, C) Gram matrix of its channels over the spatial positions, each row scaled to
    unit L2 norm."""
    flat = maps.flatten(2)
    return F.normalize(torch.bmm(flat, flat.transpose(1, 2)), dim=2)


def ickd_loss(student_embedded: Tensor, teacher: Tensor) -> Tensor:
    """The squared difference of the two networks' ``channel_correlations``, summed, over the number of
    channels times the batch size."""
    rows, channels = student_embedded.shape[:2]
    difference = channel_correlations(student_embedded) - channel_correlations(teacher)
    return difference.pow(2).sum() / (channels * rows)


class ICKDDistiller(BaselineDistiller):
    """ICKD on the last stage (their ``feat[-2]``): the student's map through a trained 1x1 convolution
    to the teacher's channel count and a BatchNorm (their ``Embed``), then ``ickd_loss`` against the
    teacher's map. Their teacher-side ``Embed`` is built and given to the optimiser but never applied;
    it is left out (it changes no loss)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 4.0}
    flags = ("beta",)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        student_channels, teacher_channels = stages(setup.student_shapes)[-1][0], stages(setup.teacher_shapes)[-1][0]
        self.embed = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False), nn.BatchNorm2d(teacher_channels)
        )

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [stages(outputs)[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return ickd_loss(self.embed(student[0]), teacher[0])
