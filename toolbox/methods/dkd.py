"""``--distillation dkd``: Decoupled KD (Zhao et al., CVPR 2022), as mdistiller computes it, with its
published per-pair weights, ImageNet settings and logit-standardisation settings."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.bases import BaselineDistiller
from toolbox.methods.standardization import LS_TEMPERATURE, LS_WEIGHT

Pair = tuple[str, str]  # (teacher, student)

DKD_DEFAULT_BETA = 8.0  # mdistiller's engine/cfg.py DKD.BETA
DKD_BETA: dict[Pair, float] = {
    # mdistiller's configs/cifar100/dkd/*.yaml and configs/imagenet/*/dkd.yaml (DKD.BETA); every other pair keeps
    # DKD_DEFAULT_BETA
    ("resnet34", "resnet18"): 0.5,
    ("resnet50", "MobileNetV1"): 2.0,
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}
# Logit standardisation's published DKD runs (toolbox.methods.standardization): DKD.T = T, and both DKD.ALPHA and
# DKD.BETA multiplied by W.
LS_DKD: dict[Pair, tuple[float, float, float]] = {  # (T, W, DKD.BETA before the multiplication by W)
    ("resnet32x4", "resnet8x4"): (2.0, 9.0, DKD_DEFAULT_BETA),  # no third value: its config's (cfg.py's)
    ("vgg13", "vgg8"): (2.0, 15.0, 2.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 12.0, 2.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0),
    ("resnet56", "resnet20"): (3.0, 18.0, 2.0),
    ("resnet110", "resnet32"): (2.0, 15.0, 2.0),
    ("resnet110", "resnet20"): (2.0, 15.0, 2.0),
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0, DKD_DEFAULT_BETA),  # no third value; its config sets no DKD.BETA
    ("resnet32x4", "wrn_16_2"): (2.0, 9.0, 2.0),
    ("resnet32x4", "wrn_40_2"): (2.0, 9.0, 8.0),
    ("wrn_40_2", "resnet8x4"): (2.0, 18.0, 2.0),
    ("wrn_40_2", "MobileNetV2"): (2.0, 15.0, 2.0),
    ("vgg13", "MobileNetV2"): (3.0, 9.0, 2.0),
    ("ResNet50", "MobileNetV2"): (2.0, 15.0, 2.0),
}


class DKDDistiller(BaselineDistiller):
    """Decoupled KD (Zhao et al., 2022): ``--dkd_alpha`` times the target-class KD (binary
    target-versus-rest distributions) plus ``--dkd_beta`` times the non-target-class KD (the
    distributions over the other classes), each a KL divergence at ``--kd_temperature`` scaled by
    T^2 and averaged over the batch; the weight rises linearly over the first ``--dkd_warmup``
    epochs (none at 0)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0, "dkd_beta": DKD_DEFAULT_BETA}
    flags = ("beta", "kd_temperature", "dkd_alpha", "dkd_beta", "dkd_warmup", "logit_standardization")
    # mdistiller's configs/imagenet/*/dkd.yaml: DKD.T, DKD.WARMUP (DKD.BETA per pair: DKD_BETA)
    recipes = {"imagenet": {"kd_temperature": 1.0, "dkd_warmup": 1}}

    @classmethod
    def standardization_defaults(cls, recipe: str, teacher: Optional[str], student: str) -> dict[str, Any]:
        """The published run's T, W and DKD.BETA for the pair (``LS_DKD``), else tools/train.py's
        defaults (T 2, W 9) on the pair's DKD.BETA."""
        pair = (teacher or "", student)
        beta = DKD_BETA.get(pair, DKD_DEFAULT_BETA)
        temperature, weight, beta = LS_DKD.get(pair, (LS_TEMPERATURE, LS_WEIGHT, beta))
        return {"kd_temperature": temperature, "dkd_alpha": weight, "dkd_beta": weight * beta}

    @classmethod
    def defaults_for(cls, config: Config) -> dict[str, Any]:
        return {**cls.defaults, "dkd_beta": DKD_BETA.get((config.teacher, config.student), DKD_DEFAULT_BETA)}

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.temperature = config.kd_temperature
        self.tckd_weight = config.dkd_alpha
        self.nckd_weight = config.dkd_beta
        self.warmup = config.dkd_warmup

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        t_logits, s_logits = teacher[0] / self.temperature, student[0] / self.temperature
        target = F.one_hot(step.labels, s_logits.shape[1]).bool()

        def target_vs_rest(probabilities: Tensor) -> Tensor:
            return torch.stack([(probabilities * target).sum(1), (probabilities * ~target).sum(1)], dim=1)

        tckd = F.kl_div(
            target_vs_rest(F.softmax(s_logits, 1)).log(), target_vs_rest(F.softmax(t_logits, 1)), reduction="sum"
        )
        # mdistiller's trick: subtracting 1000 from the target logit leaves a softmax over the other classes
        other_t = F.softmax(t_logits - 1000.0 * target, dim=1)
        other_s = F.log_softmax(s_logits - 1000.0 * target, dim=1)
        nckd = F.kl_div(other_s, other_t, reduction="sum")
        loss = (self.tckd_weight * tckd + self.nckd_weight * nckd) * self.temperature**2 / len(step.labels)
        return loss * (min(step.epoch / self.warmup, 1.0) if self.warmup else 1.0)
