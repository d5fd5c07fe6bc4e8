"""``--distillation nst``: Neuron Selectivity Transfer (Huang & Wang, 2017), as RepDistiller's
``distiller_zoo/NST.py`` computes it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.methods.base import Distiller, Step
from toolbox.methods.bases import StageWiseDistiller, match_spatial


def mean_squared_similarity(a: Tensor, b: Tensor) -> Tensor:
    """The mean over the batch and every pair of channels of (a_i . b_j)^2: NST's polynomial kernel
    (degree 2, no constant) between the flattened channels of two maps, (B, C, N) each."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2).mean()


class NSTDistiller(StageWiseDistiller):
    """Neuron Selectivity Transfer (Huang & Wang, 2017): at every stage, the squared maximum mean
    discrepancy, under the degree-2 polynomial kernel, between the distributions of the two
    networks' channels (each flattened over the positions and L2-normalised; the larger map first
    average-pooled to the other's size), summed over the stages. The teacher-teacher term is a
    constant (RepDistiller's ``full_loss``)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 50.0}
    flags = ("beta",)
    precision = torch.float64  # a difference of near-equal kernel means: float32 kept 1.3e-6 of it on random maps

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        total = student[0].new_zeros(())
        for s, t in zip(student, teacher):
            s, t = (F.normalize(x.flatten(2), dim=2) for x in match_spatial(s, t))
            total = total + (
                mean_squared_similarity(t, t) + mean_squared_similarity(s, s) - 2 * mean_squared_similarity(s, t)
            )
        return total
