"""``--distillation none``: plain training with the cross-entropy alone (teachers, and the student alone)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from toolbox.methods.base import Distiller, Step


class NoDistillation(Distiller):
    """Plain training with cross-entropy alone (used to train teachers and baselines)."""

    needs_teacher = False
    reads_maps = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 0.0}
    flags = ()

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        return student_out[-1].new_zeros(())
