"""``--distillation tucker``: the original study's loss, Tucker cores of the teacher's map and the student's.

The teacher's map is Tucker-decomposed (``toolbox.tucker``: the fast closed form, or tensorly's
``tucker`` as the original called it); the student's map is projected on the teacher's factors and
the two cores are compared by ``normalized_distance``. ``--tucker_core original`` rotates the
full-rank modes (batch, spatial) as tensorly does, the study's loss; ``per_sample`` leaves them
unrotated, comparing each sample's own core (docs/methods.md, "Why the original's tucker loss can
make the student worse").
"""

from __future__ import annotations

import torch
from torch import Tensor

from toolbox.config import Config
from toolbox.config.choices import parse_ranks
from toolbox.config.naming import ranks_tag
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.featuremap import normalized_distance
from toolbox.tucker import Factors, absolute_ranks, check_core, project, tucker


class TuckerDistiller(Distiller):
    """Tucker-decompose the teacher's map; compare cores after projecting the student's map on
    the teacher's factors, the original's loss (``--tucker_core original``: the full-rank modes
    rotated as tensorly rotates them) or each sample's own core (``per_sample``). Subclasses compare
    other views of the same decomposition."""

    flags = (*Distiller.flags, "ranks", "tucker_backend", "hooi_iters", "tucker_core")
    tag_flags = ("ranks",)

    @classmethod
    def run_tag(cls, config: Config) -> list[str]:
        return [*super().run_tag(config)[:-1], ranks_tag(config.ranks)]  # B-32-8-8: no commas in names

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.ranks = absolute_ranks(parse_ranks(config.ranks), self.teacher_shape)
        self.backend = config.tucker_backend
        self.hooi_iters = config.hooi_iters
        self.core = self.core_kind(config)
        check_core(self.core, self.backend)

    def core_kind(self, config: Config) -> str:
        """Which core the decomposition computes, one of ``toolbox.config.choices.TUCKER_CORES``."""
        return config.tucker_core

    def decompose(self, teacher_map: Tensor) -> tuple[Tensor, Factors]:
        with torch.no_grad():  # the teacher's factors are fixed targets, never trained through
            return tucker(teacher_map, self.ranks, backend=self.backend, n_iter=self.hooi_iters, core=self.core)

    def compare(self, teacher_map: Tensor, student_map: Tensor, core: Tensor, factors: Factors) -> Tensor:
        return normalized_distance(project(student_map.float(), factors), core, self.loss)

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        teacher_map, student_map = self.maps(teacher_out, student_out)
        core, factors = self.decompose(teacher_map)
        # in float32 even under autocast: a bf16 rotation of the batch would swamp the core's small rows
        with torch.autocast(student_map.device.type, enabled=False):
            return self.compare(teacher_map, student_map, core, factors)
