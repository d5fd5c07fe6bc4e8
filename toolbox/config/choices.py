"""The flags' vocabularies: the valid values of every choice flag and the Tucker-rank syntax.

Torch-free, so that ``--help`` and the flag checks run without loading torch. The methods are
``toolbox.methods``' list; the registries that implement the other names (``MODELS``, the data
loaders, the Tucker back ends) are checked against these lists by the tests.
"""

from __future__ import annotations

import math
from typing import Optional

from toolbox.errors import UsageError
from toolbox.methods import METHODS as METHOD_CLASSES

METHODS = tuple(METHOD_CLASSES)
"""``--distillation``: the methods of ``toolbox.methods.METHODS``, in that order."""
ORIGINAL_MODELS = ("ResNet112", "ResNet110", "ResNet56", "ResNet32", "ResNet20", "ResNetBaby")
FIELD_MODELS = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet50",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg13",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
)
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "MobileNetV1")
"""torchvision's ImageNet ResNets (``resnet50`` is not the CIFAR bottleneck ``ResNet50``) and mdistiller's
MobileNetV1."""
MODELS = (*ORIGINAL_MODELS, *FIELD_MODELS, *IMAGENET_MODELS)
"""``--teacher``, ``--student``: the keys of ``toolbox.models.MODELS``, in that order."""
FILE_DATASETS = ("imagenet", "tiny-imagenet")
"""Data sets read from JPEG files by DataLoader workers (the others are kept on the device)."""
DATASETS = ("cifar10", "cifar100", "digits", *FILE_DATASETS)
IMAGE_SIZES = {"cifar10": 32, "cifar100": 32, "digits": 32, "imagenet": 224, "tiny-imagenet": 64}
"""The side of the images each data set feeds the models: what the feature maps' shapes follow."""
SAME_ARCH_PAIRS = (
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
)
CROSS_ARCH_PAIRS = (
    ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"),
    ("ResNet50", "vgg8"),
    ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
)
"""The (teacher, student) pairs of the CRD/DKD CIFAR-100 benchmark, in the order of its tables."""
IMAGENET_PAIRS = (("resnet34", "resnet18"), ("resnet50", "MobileNetV1"))
"""The (teacher, student) pairs of the field's ImageNet table (CRD's, mdistiller's), in its order."""
SOFT_LOSSES = ("l1", "l2")
RECOMP_TARGETS = ("teacher", "student", "both")
BACKENDS = ("fast", "tensorly")
TUCKER_CORES = ("original", "per_sample")
HOOI_MAX_SWEEPS = 100  # tensorly's default n_iter_max
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``--compile_mode``: torch.compile's modes; reduce-overhead and max-autotune replay CUDA graphs on a GPU."""

BATCH_TOKEN = "BATCH_SIZE"
MODE_NAMES = ("batch", "channel", "height", "width")
RankSpec = tuple[Optional[int | float], ...]  # as given: None keeps the batch whole, a float is a fraction (x0.5)


def parse_ranks(text: str, flag: str = "--ranks") -> RankSpec:
    """Parse ``BATCH_SIZE,32,8,8``: the token keeps the batch mode whole, whatever a batch's size.
    A rank may be a fraction of its mode instead, ``x0.5`` (half the channels, rounded), so that one
    spelling fits the maps of every architecture: ``BATCH_SIZE,x0.5,x1,x1``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(MODE_NAMES):
        raise UsageError(
            f"{flag} needs 4 comma-separated ranks for (batch, channel, height, width), "
            f"e.g. {BATCH_TOKEN},32,8,8; got {text!r}"
        )
    ranks: list[Optional[int | float]] = []
    for mode, part in zip(MODE_NAMES, parts):
        if mode == "batch" and part == BATCH_TOKEN:
            ranks.append(None)
            continue
        if mode != "batch" and part.startswith("x"):
            try:
                fraction = float(part[1:])
            except ValueError:
                fraction = math.nan
            if not 0 < fraction <= 1:
                raise UsageError(
                    f"{flag}: a relative {mode} rank is x followed by a fraction in (0, 1], e.g. x0.5; "
                    f"got {part!r} in {text!r}"
                )
            ranks.append(fraction)
            continue
        try:
            value = int(part)
        except ValueError:
            valid = (
                f"{BATCH_TOKEN} or a positive integer" if mode == "batch" else "a positive integer or a fraction x0.5"
            )
            raise UsageError(f"{flag}: the {mode} rank must be {valid}; got {part!r} in {text!r}") from None
        if value < 1:
            raise UsageError(f"{flag}: the {mode} rank must be at least 1; got {value} in {text!r}")
        ranks.append(value)
    return tuple(ranks)


def format_ranks(ranks: RankSpec) -> str:
    """The inverse of :func:`parse_ranks`."""
    return ",".join(BATCH_TOKEN if r is None else f"x{r:g}" if isinstance(r, float) else str(r) for r in ranks)
