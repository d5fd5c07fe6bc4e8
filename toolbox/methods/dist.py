"""``--distillation dist``: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022).

Computes what its authors' ``lib/models/losses/dist_kd.py`` (hunto/image_classification_sota, the
classification code of hunto/DIST_KD) computes.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller

PEARSON_EPS = 1e-8  # added to the product of the norms, as DIST's cosine_similarity


def row_correlation(a: Tensor, b: Tensor) -> Tensor:
    """The Pearson correlation of each row of ``a`` with the same row of ``b``: the cosine of the
    centred rows, the product of their norms plus 1e-8 below."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, inter_weight: float, intra_weight: float
) -> Tensor:
    """DIST's loss: T^2 times the weighted sum of 1 - the mean correlation between the two networks'
    softmax outputs at temperature T, across each sample's classes (inter-class relation) and
    across each class's samples of the batch (intra-class relation)."""
    student, teacher = ((logits / temperature).softmax(dim=1) for logits in (student_logits, teacher_logits))
    inter = 1 - row_correlation(student, teacher).mean()
    intra = 1 - row_correlation(student.T, teacher.T).mean()
    return temperature**2 * (inter_weight * inter + intra_weight * intra)


class DISTDistiller(BaselineDistiller):
    """Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022): ``dist_loss`` on
    the logits, ``--dist_beta`` times the inter-class and ``--dist_gamma`` times the intra-class
    relation. The defaults are its CIFAR-100 config (``dist_cifar.yaml``: ``dist_t4``, the loss
    weighted 2, cross-entropy 1); ``--recipe imagenet`` takes its ImageNet temperature, 1."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 2.0}
    flags = ("beta", "kd_temperature", "dist_beta", "dist_gamma")
    # not mdistiller's: DIST's configs/strategies/distill/resnet_dist.yaml (hunto/image_classification_sota),
    # tau 1, 8 GPUs x batch 32 at lr 0.1 (its other settings are the recipe's solver's)
    recipes = {"imagenet": {"kd_temperature": 1.0, "batch_size": 256, "lr": 0.1}}

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.temperature = config.kd_temperature
        self.inter_weight = config.dist_beta
        self.intra_weight = config.dist_gamma

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return dist_loss(student[0], teacher[0], self.temperature, self.inter_weight, self.intra_weight)
