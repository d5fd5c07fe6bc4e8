"""The data sets' face: ``load_dataset(name, data_dir, device)`` for every ``--dataset``, and
``prepare_dataset`` (runner.py's download before it submits).

Each data set lives in ``toolbox/datasets/``: ``cifar`` (CIFAR-10/100, downloaded once under a lock,
verified, read by torchvision), ``digits`` (scikit-learn's offline digits), both kept whole on the
device with batched augmentation (``on_device``); ``imagenet`` (ImageNet and Tiny-ImageNet, JPEG
files read by DataLoader workers); ``sampling`` (each rank's share of a batch, the epochs' seeds).
Every one is a ``DataSource``, so the training loop reads them all the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from toolbox.config.choices import DATASETS, FILE_DATASETS
from toolbox.datasets.cifar import CIFAR_MEAN_STD, CIFAR_NUM_CLASSES, cifar, cifar_class, prepare_cifar
from toolbox.datasets.digits import IMAGE_SIZE, digits
from toolbox.datasets.on_device import PAD, Dataset, DataSource, augment, eval_batches, train_batches
from toolbox.errors import UsageError

__all__ = [
    "CIFAR_MEAN_STD",
    "IMAGE_SIZE",
    "PAD",
    "DataSource",
    "Dataset",
    "augment",
    "cifar_class",
    "eval_batches",
    "load_dataset",
    "prepare_dataset",
    "train_batches",
]


def prepare_dataset(name: str, data_dir: str | Path, download: bool = True) -> None:
    """Make sure ``name`` is complete in ``data_dir``: CIFAR is downloaded once (``prepare_cifar``);
    digits needs nothing, nor do the data sets read from files (a run checks their layout when it
    loads them)."""
    if name in CIFAR_NUM_CLASSES:
        prepare_cifar(name, data_dir, download)
    elif name not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}; got {name!r}")


def load_dataset(
    name: str, data_dir: str | Path, device: torch.device | str, download: bool = True, workers: Optional[int] = None
) -> DataSource:
    """Load a data set by name for ``device``: CIFAR (downloaded once) and digits onto it; ImageNet
    and Tiny-ImageNet as files read by ``workers`` processes."""
    if name in FILE_DATASETS:
        from toolbox.datasets.imagenet import FileImages  # torchvision and PIL: only for these data sets

        return FileImages(name, data_dir, torch.device(device), workers)
    if name == "digits":
        return digits(device)
    if name in CIFAR_NUM_CLASSES:
        return cifar(name, Path(data_dir), device, download)
    raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}; got {name!r}")
