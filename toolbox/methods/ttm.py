"""``--distillation ttm``: Transformed Teacher Matching (Zheng & Yang, "Knowledge Distillation Based on
Transformed Teacher Matching", ICLR 2024).

Computes what its authors' ``distiller_zoo/ttm.py`` (zkxufo/TTM) computes: the teacher's probabilities
raised to a power and renormalised (a temperature of 1/gamma on the teacher alone), matched by the
student's own probabilities at temperature 1, weighted as their ``train_student.py`` weights it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller


def transformed_teacher(teacher_logits: Tensor, exponent: float) -> tuple[Tensor, Tensor]:
    """The teacher's softmax raised to ``exponent`` and renormalised per sample, and each sample's
    normaliser (the sum of the powers, which WTTM weighs the samples by)."""
    powered = F.softmax(teacher_logits, dim=1).pow(exponent)
    normaliser = powered.sum(dim=1)
    return powered / normaliser.unsqueeze(1), normaliser


def transformed_kl(student_logits: Tensor, teacher_logits: Tensor, exponent: float) -> tuple[Tensor, Tensor]:
    """Each sample's KL divergence from the transformed teacher to the student's softmax (at T 1), and
    the teacher's normalisers."""
    target, normaliser = transformed_teacher(teacher_logits, exponent)
    divergence = F.kl_div(F.log_softmax(student_logits, dim=1), target, reduction="none").sum(dim=1)
    return divergence, normaliser


class TTMDistiller(BaselineDistiller):
    """TTM on the logits: the batch's mean ``transformed_kl``, weighted ``--beta`` beside the
    cross-entropy's 1. The defaults are the settings of its authors' README (vgg13 -> vgg8: gamma 0.1,
    -b 45, -r 1, with RepDistiller's CIFAR-100 solver, this project's --recipe crd)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 45.0, "ttm_gamma": 0.1}
    flags = ("beta", "ttm_gamma")

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.exponent = config.ttm_gamma

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return transformed_kl(student[0], teacher[0], self.exponent)[0].mean()
