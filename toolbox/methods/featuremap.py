"""``--distillation featuremap``: the original study's baseline, the distilled stage compared as a whole."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from toolbox.methods.base import Distiller, Step


def normalized_distance(student: Tensor, teacher: Tensor, loss: str) -> Tensor:
    """Mean L1 or squared-L2 distance between per-sample L2-normalised, flattened tensors.

    Normalising makes the loss blind to the overall scale of either network's activations; it is
    computed in float32 even under autocast.
    """
    s = F.normalize(student.float().flatten(1), dim=1)
    t = F.normalize(teacher.float().flatten(1), dim=1)
    return F.l1_loss(s, t) if loss == "l1" else F.mse_loss(s, t)


class FeatureMapDistiller(Distiller):
    """The student's map pulled towards the teacher's, both normalised."""

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        teacher_map, student_map = self.maps(teacher_out, student_out)
        return normalized_distance(student_map, teacher_map, self.loss)
