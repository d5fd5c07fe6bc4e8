"""The published per-pair settings of the logit methods, as data: DKD's non-target weight and the
temperature and weights that logit standardisation was published with.

Torch-free, so that the flag layer (``toolbox.config``) can give a run these values as its defaults
before anything loads torch; ``toolbox.baselines`` reads DKD's from here too.
"""

from __future__ import annotations

from typing import Any, Optional

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

# Logit standardisation (Sun et al., CVPR 2024; github.com/sunshangquan/logit-standardization-KD at f6e5aa5).
# Its tools/train.py turns a KD run into KD+LS with --base-temp T --kd-weight W: KD.TEMPERATURE = T,
# KD.LOSS.KD_WEIGHT = W; for DKD, DKD.T = T and both DKD.ALPHA and DKD.BETA multiplied by W. The published
# runs' T, W (and DKD.BETA) are in the names of its logs/KD/*.txt and logs/DKD/*.txt files, which its README's
# CIFAR-100 tables link: KD_TYPE,TEACHER,STUDENT,T,W[,DKD.BETA].
LS_TEMPERATURE, LS_WEIGHT = 2.0, 9.0  # tools/train.py's defaults of --base-temp and --kd-weight
LS_KD: dict[Pair, tuple[float, float]] = {  # (T, W)
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
LS_IMAGENET_KD_CE_WEIGHT = 1.0  # its configs/imagenet/*/kd.yaml, KD.LOSS.CE_WEIGHT (mdistiller's is 0.5)
STANDARDIZED_METHODS = ("kd", "dkd")
"""The methods of ours that logit standardisation was published for (also CTKD and MLKD, which we lack)."""


def standardization_defaults(recipe: str, distillation: str, teacher: Optional[str], student: str) -> dict[str, Any]:
    """The temperature and weights a run with ``--logit_standardization`` takes unless they are
    given: the published run's for the pair, else tools/train.py's defaults (T 2, W 9)."""
    pair = (teacher or "", student)
    if distillation == "kd":
        temperature, weight = LS_KD.get(pair, (LS_TEMPERATURE, LS_WEIGHT))
        values = {"kd_temperature": temperature, "beta": weight}
        return {**values, "ce_weight": LS_IMAGENET_KD_CE_WEIGHT} if recipe == "imagenet" else values
    if distillation == "dkd":
        beta = DKD_BETA.get(pair, DKD_DEFAULT_BETA)
        temperature, weight, beta = LS_DKD.get(pair, (LS_TEMPERATURE, LS_WEIGHT, beta))
        return {"kd_temperature": temperature, "dkd_alpha": weight, "dkd_beta": weight * beta}
    return {}
