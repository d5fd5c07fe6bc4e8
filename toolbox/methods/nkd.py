"""``--distillation nkd``: Normalized Knowledge Distillation (Yang et al., "From Knowledge Distillation
to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels",
ICCV 2023).

Computes what its authors' ``mmcls/models/dis_losses/nkd.py`` (yzd-v/cls_KD) computes, added to the
student's cross-entropy as their ``ClassificationDistiller`` adds it (both weighted 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller


def nkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, gamma: float
) -> Tensor:
    """NKD: the teacher's target probability times the student's target log-probability (both at T 1),
    negated; plus ``gamma`` T^2 times the cross-entropy between the two networks' non-target
    probabilities, each renormalised over the non-target classes (a softmax of the non-target logits at
    T). Both terms are means over the batch."""
    rows, classes = student_logits.shape
    target = labels.view(rows, 1)
    student_target = F.log_softmax(student_logits, dim=1).gather(1, target)
    teacher_target = F.softmax(teacher_logits, dim=1).gather(1, target)
    target_term = -(teacher_target * student_target).mean()
    non_target = torch.ones_like(student_logits, dtype=torch.bool).scatter_(1, target, False)
    student_rest = F.log_softmax(student_logits[non_target].view(rows, classes - 1) / temperature, dim=1)
    teacher_rest = F.softmax(teacher_logits[non_target].view(rows, classes - 1) / temperature, dim=1)
    non_target_term = -gamma * temperature**2 * (teacher_rest * student_rest).sum(dim=1).mean()
    return target_term + non_target_term


class NKDDistiller(BaselineDistiller):
    """Normalized KD on the logits: ``nkd_loss`` with the authors' CIFAR-100 settings (T 3, gamma 3.5,
    their ``res34_distill_res18_cifar.py``), the ImageNet ones (T 1, gamma 1.5) with ``--recipe
    imagenet``; the loss and the cross-entropy weighted 1."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}
    flags = ("beta", "nkd_temperature", "nkd_gamma")
    recipes = {"imagenet": {"nkd_temperature": 1.0, "nkd_gamma": 1.5}}  # their res34_distill_res18_img.py

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.temperature = config.nkd_temperature
        self.gamma = config.nkd_gamma

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return nkd_loss(student[0], teacher[0], step.labels, self.temperature, self.gamma)
