"""``--distillation pkt``: Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018), as RepDistiller
computes it."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from toolbox.methods.base import Distiller, Step
from toolbox.methods.bases import BaselineDistiller

PKT_EPS = 1e-7  # RepDistiller's cosine_similarity_loss


def pkt_probabilities(feature: Tensor) -> Tensor:
    """Each sample's cosine similarities to the batch, mapped to [0, 1] and normalised to sum 1.
    At an all-zero feature the gradient is the formula's derivative there (that of x / (|x| + eps):
    I / eps), where RepDistiller's, through the square root of the zero sum of squares, is NaN."""
    unit = feature / (torch.linalg.vector_norm(feature, dim=1, keepdim=True) + PKT_EPS)
    unit = unit.masked_fill(unit.isnan(), 0.0)  # as published: NaN features count as zero
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


class PKTDistiller(BaselineDistiller):
    """Probabilistic Knowledge Transfer (Passalis & Tefas, 2018): KL divergence between the
    teacher's and the student's conditional distributions of cosine similarities among the batch's
    pooled features, averaged over the batch-by-batch entries."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 30000.0}
    flags = ("beta",)
    precision = torch.float64  # logarithms of ratios of near-equal probabilities: float32 keeps ~1e-4 of the loss

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-2]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        target, model = pkt_probabilities(teacher[0]), pkt_probabilities(student[0])
        return (target * torch.log((target + PKT_EPS) / (model + PKT_EPS))).mean()
