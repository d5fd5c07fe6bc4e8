"""``--distillation fitnet``: FitNets (Romero et al., ICLR 2015), as RepDistiller computes it."""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller, conv_regressor


class FitNetDistiller(BaselineDistiller):
    """FitNets (Romero et al., 2015): the student's hint-layer map, through a trained regressor
    (RepDistiller's ConvReg: a convolution chosen by the size ratio, BatchNorm, ReLU), regressed
    onto the teacher's map by mean squared error."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 100.0, "feature_layer": 2}
    flags = ("feature_layer", "beta")

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        conv = conv_regressor(self.student_shape, self.teacher_shape)
        self.regressor = nn.Sequential(conv, nn.BatchNorm2d(self.teacher_shape[0]), nn.ReLU())

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[self.layer]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return F.mse_loss(self.regressor(student[0]), teacher[0])
