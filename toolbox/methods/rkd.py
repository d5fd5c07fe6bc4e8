"""``--distillation rkd``: Relational KD (Park et al., CVPR 2019), as RepDistiller computes it."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller


def rkd_distances(feature: Tensor) -> Tensor:
    """Pairwise Euclidean distances (squares clamped at 1e-12, a zero diagonal) divided by their
    mean over the pairs at positive distance; all zeros where there is no pair (a one-sample batch),
    whose mean RepDistiller's 0/0 makes NaN."""
    squares = feature.pow(2).sum(1)
    distances = (squares[:, None] + squares[None, :] - 2 * feature @ feature.T).clamp(min=1e-12).sqrt()
    distances = distances.masked_fill(torch.eye(len(feature), dtype=torch.bool, device=feature.device), 0.0)
    mean = distances.sum() / (distances > 0).sum().clamp(min=1)  # the mean of d[d > 0], without a device sync
    return distances / torch.where(mean > 0, mean, torch.ones_like(mean))


def rkd_angles(feature: Tensor) -> Tensor:
    """Cosines of the angles at every sample between the directions to every pair of samples."""
    directions = F.normalize(feature[None, :, :] - feature[:, None, :], dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


class RKDDistiller(BaselineDistiller):
    """Relational KD (Park et al., 2019): smooth-L1 losses between the two networks' normalised
    pairwise distances (weighted by ``--rkd_distance``) and triplet angles (``--rkd_angle``) of the
    batch's pooled features. A batch of one sample (the last of an epoch can be) has no pair and no
    triplet: both terms are 0 for that step, where RepDistiller's distance term is NaN."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}
    flags = ("beta", "rkd_distance", "rkd_angle")
    # distances of samples close together far from the origin, from |a|^2 + |b|^2 - 2 a.b: float32 kept
    # 1e-4 of the loss and 7e-3 of the gradient on a briefly trained MobileNetV2's pooled features
    precision = torch.float64

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.distance_weight = config.rkd_distance
        self.angle_weight = config.rkd_angle

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-2]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        t, s = teacher[0].flatten(1), student[0].flatten(1)
        distance = F.smooth_l1_loss(rkd_distances(s), rkd_distances(t))
        angle = F.smooth_l1_loss(rkd_angles(s), rkd_angles(t))
        return self.distance_weight * distance + self.angle_weight * angle
