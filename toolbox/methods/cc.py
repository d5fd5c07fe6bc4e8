"""``--distillation cc``: Correlation Congruence (Peng et al., ICCV 2019), as RepDistiller's
``distiller_zoo/CC.py`` computes it with its ``train_student.py`` embeddings and published ``-b`` weight."""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller

CC_DIM = 128  # RepDistiller's --feat_dim, the width of CC's linear embeddings


def correlation_congruence(student: Tensor, teacher: Tensor) -> Tensor:
    """RepDistiller's ``Correlation``: with d = |student - teacher| per embedded sample, the mean
    over consecutive samples of the batch of sum_j d[i, j] * d[i + 1, j]. A batch of one sample has
    no consecutive pair: 0, where RepDistiller's mean over none is NaN."""
    delta = (student - teacher).abs()
    return (delta[:-1] * delta[1:]).sum() / max(len(delta) - 1, 1)


class CCDistiller(BaselineDistiller):
    """Correlation Congruence (Peng et al., ICCV 2019), as RepDistiller restructured the authors'
    code: the pooled features of each network through a trained linear embedding
    (``LinearEmbed``, 128-d, no normalisation), then ``correlation_congruence``. Both embeddings
    are trained with the student (RepDistiller gives ``embed_t`` to the optimiser too)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 0.02}
    flags = ("beta",)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.embed_s = nn.Linear(math.prod(setup.student_shapes[-2]), CC_DIM)
        self.embed_t = nn.Linear(math.prod(setup.teacher_shapes[-2]), CC_DIM)

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-2]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return correlation_congruence(self.embed_s(student[0].flatten(1)), self.embed_t(teacher[0].flatten(1)))
