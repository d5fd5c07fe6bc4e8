"""``--distillation at``: Attention Transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller computes it."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from toolbox.methods.base import Distiller, Step
from toolbox.methods.bases import StageWiseDistiller, attention_map, match_spatial


class AttentionDistiller(StageWiseDistiller):
    """Attention Transfer (Zagoruyko & Komodakis, 2017): at every stage, the mean squared
    difference between the two networks' normalised attention maps, summed over the stages."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1000.0}
    flags = ("beta",)

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        pairs = (match_spatial(s, t) for s, t in zip(student, teacher))
        return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in pairs)
