"""A run's distillation loss: its method's soft loss weighted, and what any method may add to it.

The loss trained is ``ce_weight * cross-entropy + distillation``, where ``distillation`` is
``beta * soft_loss + kd_weight * KD``: ``--kd_weight`` adds Hinton's KD at ``--kd_temperature`` to
any method with a teacher (RepDistiller's ``-a``: ``--distillation crd --kd_weight 1`` is the CRD
paper's CRD+KD), and ``--logit_standardization`` z-scores both networks' logits before the method
(and the added KD) read them. The cross-entropy always reads the student's own logits. The two
parts stay apart because ``--optimizer dot`` gives them different momenta.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Step
from toolbox.methods.kd import kd_loss
from toolbox.methods.standardization import standardized


def with_standardized_logits(outputs: list[Tensor]) -> list[Tensor]:
    """The outputs with their last entry, the logits, standardised."""
    return [*outputs[:-1], standardized(outputs[-1])]


class DistillationLoss(nn.Module):
    """The distiller (trained with the student) and the weights of the run's distillation loss."""

    def __init__(self, config: Config, distiller: Distiller) -> None:
        super().__init__()
        self.distiller = distiller
        self.beta = config.beta
        self.kd_weight = config.kd_weight or 0.0
        self.temperature = config.kd_temperature
        self.standardize = bool(config.logit_standardization)

    def forward(
        self, teacher_out: Optional[list[Tensor]], student_out: list[Tensor], step: Step
    ) -> tuple[Tensor, Tensor]:
        """The method's soft loss (logged) and the weighted distillation loss (trained)."""
        if self.standardize:
            teacher_out, student_out = with_standardized_logits(teacher_out), with_standardized_logits(student_out)
        soft = self.distiller.soft_loss(teacher_out, student_out, step)
        distillation = self.beta * soft
        if self.kd_weight:
            distillation = distillation + self.kd_weight * kd_loss(student_out[-1], teacher_out[-1], self.temperature)
        return soft, distillation
