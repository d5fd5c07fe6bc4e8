"""``--distillation sp``: Similarity-Preserving KD (Tung & Mori, ICCV 2019), as RepDistiller computes it."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.methods.base import Distiller, Step, stages
from toolbox.methods.bases import BaselineDistiller


def similarity_matrix(feature: Tensor) -> Tensor:
    """The batch's Gram matrix of flattened maps, each row L2-normalised."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.T)


class SimilarityDistiller(BaselineDistiller):
    """Similarity-Preserving KD (Tung & Mori, 2019): the squared Frobenius distance between the
    row-normalised batch similarity matrices of the last stage's maps, divided by the squared
    batch size."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 3000.0}
    flags = ("beta",)
    precision = torch.float64  # a small difference of near-equal normalised Gram matrices: float32 keeps ~1e-5 of it

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [stages(outputs)[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return (similarity_matrix(teacher[0]) - similarity_matrix(student[0])).pow(2).sum() / len(student[0]) ** 2
