"""``--distillation fsp``: "A Gift from Knowledge Distillation" (Yim et al., CVPR 2017), as RepDistiller
computes it, with its initialisation phase.

The initialisation (``toolbox.methods.phases``, ``--init_epochs``) trains the student's stem and
stages on the distance between the two networks' FSP (Gram) matrices of consecutive activated
maps; the main phase trains the student with the cross-entropy alone (``-b 50`` weighs a loss that
RepDistiller sets to 0 there).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from toolbox.config import Config
from toolbox.config.choices import IMAGE_SIZES
from toolbox.errors import UsageError
from toolbox.methods.base import Distiller, Step
from toolbox.methods.bases import INIT, InitialisedDistiller, match_spatial
from toolbox.models import stage_shapes
from toolbox.nets.common import feature_modules


def fsp_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """The FSP matrix of each pair of consecutive maps, (B, C_next, C): the mean over positions of
    the products of their channels, the larger map average-pooled to the other's size first."""
    matrices = []
    for bottom, top in zip(maps[:-1], maps[1:]):
        top, bottom = match_spatial(top, bottom)
        matrices.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / bottom[0, 0].numel())
    return matrices


class FSPDistiller(InitialisedDistiller):
    """FSP on the stem's and every stage's activated maps (RepDistiller's ``feat[:-1]``): the sum
    over consecutive pairs of the mean squared difference of the two networks' FSP matrices,
    which needs the same widths in both. Trained: in ``init`` the student but its head; afterwards
    the student."""

    main_loss = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 50.0}  # -b 50, on a main-phase loss of 0
    flags = ("init_epochs",)

    @classmethod
    def check(cls, config: Config) -> None:
        super().check(config)
        size = IMAGE_SIZES[config.dataset]
        widths = {
            arch: [shape[0] for shape in stage_shapes(arch, image_size=size)]
            for arch in (config.teacher, config.student)
        }
        if widths[config.teacher] != widths[config.student]:
            listed = "; ".join(f"{arch} has {', '.join(map(str, channels))}" for arch, channels in widths.items())
            raise UsageError(
                f"--distillation fsp compares FSP matrices entry by entry, so it needs the same widths in "
                f"teacher and student at the stem and every stage; {listed}"
            )

    def trained_modules(self, student: nn.Module, phase: str | None) -> list[nn.Module]:
        return feature_modules(student) if phase == INIT else [student]

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return outputs[:-2]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        pairs = zip(fsp_matrices(student), fsp_matrices(teacher))
        return sum((s - t).pow(2).mean() for s, t in pairs)
