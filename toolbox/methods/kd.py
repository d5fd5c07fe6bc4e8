"""``--distillation kd``: Hinton et al.'s knowledge distillation (NIPS workshop 2015), weighted as
RepDistiller and mdistiller train it on CIFAR-100, with its published ImageNet and
logit-standardisation settings."""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.standardization import LS_TEMPERATURE, LS_WEIGHT

Pair = tuple[str, str]  # (teacher, student)

LS_KD: dict[Pair, tuple[float, float]] = {  # (T, W): logit standardisation's published KD runs
    ("resnet32x4", "resnet8x4"): (2.0, 9.0),
    ("vgg13", "vgg8"): (3.0, 9.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 9.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 9.0),
    ("resnet56", "resnet20"): (2.0, 9.0),
    ("resnet110", "resnet32"): (2.0, 9.0),
    ("resnet110", "resnet20"): (4.0, 12.0),
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0),
    ("resnet32x4", "wrn_16_2"): (3.0, 9.0),
    ("resnet32x4", "wrn_40_2"): (3.0, 9.0),
    ("wrn_40_2", "resnet8x4"): (2.0, 9.0),
    ("wrn_40_2", "MobileNetV2"): (3.0, 9.0),
    ("vgg13", "MobileNetV2"): (3.0, 9.0),
    ("ResNet50", "MobileNetV2"): (3.0, 1.0),
}
LS_IMAGENET_KD_CE_WEIGHT = 1.0  # its configs/imagenet/*/kd.yaml, KD.LOSS.CE_WEIGHT (mdistiller's is 0.5)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) between temperature-softened outputs, averaged over the batch and
    scaled by T^2 so that its gradients keep their size as T changes (RepDistiller's DistillKL)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


class LogitDistiller(Distiller):
    """Hinton et al.'s knowledge distillation, weighted as RepDistiller and mdistiller train it on
    CIFAR-100: 0.1 * cross-entropy + 0.9 * KD at T = 4."""

    reads_maps = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 0.9, "ce_weight": 0.1}
    flags = ("beta", "kd_temperature", "logit_standardization")
    # mdistiller's configs/imagenet/*/kd.yaml: KD.TEMPERATURE, KD.LOSS.CE_WEIGHT, KD.LOSS.KD_WEIGHT
    recipes = {"imagenet": {"kd_temperature": 1.0, "ce_weight": 0.5, "beta": 0.5}}

    @classmethod
    def standardization_defaults(cls, recipe: str, teacher: Optional[str], student: str) -> dict[str, Any]:
        """The published run's T and W for the pair (``LS_KD``), else tools/train.py's defaults (T 2, W 9)."""
        temperature, weight = LS_KD.get((teacher or "", student), (LS_TEMPERATURE, LS_WEIGHT))
        values = {"kd_temperature": temperature, "beta": weight}
        return {**values, "ce_weight": LS_IMAGENET_KD_CE_WEIGHT} if recipe == "imagenet" else values

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.temperature = config.kd_temperature

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        return kd_loss(student_out[-1], teacher_out[-1], self.temperature)
