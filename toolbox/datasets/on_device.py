"""Data sets kept whole on the training device as uint8, with batched augmentation (CIFAR, digits).

CIFAR is small enough (150 MB as uint8) to live on the GPU, so an epoch is a permutation plus a few
batched tensor ops: random 4-pixel-padded crops and horizontal flips for all images at once, then
normalisation. No DataLoader workers, no host-to-device copies on the hot path. Each epoch's
augmentation is drawn from a generator seeded by (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one. ``DataSource`` is what the training loop reads from any data set,
these or the files of ``toolbox.datasets.imagenet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.datasets.sampling import epoch_generator, share

PAD = 4


class DataSource(Protocol):
    """What the training loop reads from a data set, wherever its images are kept."""

    num_classes: int
    train_labels: Tensor  # (N,) on the training device, by sample index (CRD draws negatives by class)
    reads_files: bool  # its epochs read files, and may fail on one: each is saved before its test

    @property
    def image_size(self) -> int: ...  # the side of the images fed to the models

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        max_batches: Optional[int] = None,
        rank: int = 0,
        ranks: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The epoch's batches from ``start_batch`` on (normalised images, labels, sample indices,
        on the device): the same ones an uninterrupted epoch sees there. ``batch_size`` is global:
        of each batch, rank ``rank`` of ``ranks`` gets its part (``toolbox.datasets.sampling.share``),
        each sample augmented as one process would."""
        ...

    def eval_batches(self, batch_size: int, rank: int = 0, ranks: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """Rank ``rank``'s part of the test split, in order: normalised images and labels on the device."""
        ...


@dataclass
class Dataset:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64, both on the training device; a ``DataSource``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor  # (1, 3, 1, 1) float, in [0, 255] units
    std: Tensor
    num_classes: int
    reads_files = False  # all on the device: nothing to read during an epoch

    def normalize(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        max_batches: Optional[int] = None,
        rank: int = 0,
        ranks: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        return train_batches(self, batch_size, seed, epoch, max_batches, start_batch, rank, ranks)

    def eval_batches(self, batch_size: int, rank: int = 0, ranks: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        return eval_batches(self, batch_size, rank, ranks)


def on_device(
    arrays: tuple[np.ndarray, ...], mean: Tensor, std: Tensor, num_classes: int, device: torch.device | str
) -> Dataset:
    """A ``Dataset`` on ``device`` from (train images, train labels, test images, test labels) and the
    per-channel statistics of the training images, in [0, 1] units."""
    train_x, train_y, test_x, test_y = (torch.from_numpy(np.ascontiguousarray(array)).to(device) for array in arrays)
    return Dataset(
        train_x,
        train_y,
        test_x,
        test_y,
        mean=(mean * 255).view(1, 3, 1, 1).to(device),
        std=(std * 255).view(1, 3, 1, 1).to(device),
        num_classes=num_classes,
    )


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random crops from zero-padded images and horizontal flips, for a whole batch at once."""
    n, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n, 1, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1, 1), device=device, generator=generator)
    rows = dy + torch.arange(height, device=device).view(1, height, 1)
    cols = dx + torch.arange(width, device=device).view(1, 1, width)
    flip = torch.rand(n, 1, 1, device=device, generator=generator) < 0.5
    cols = torch.where(flip, dx + width - 1 - torch.arange(width, device=device).view(1, 1, width), cols)
    batch_index = torch.arange(n, device=device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch_index, rows, cols].permute(0, 3, 1, 2)


def train_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    max_batches: int | None = None,
    start_batch: int = 0,
    rank: int = 0,
    ranks: int = 1,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Shuffled, augmented, normalised training batches (images, labels, and the samples' indices
    in the training set); the last one may be smaller. From ``start_batch`` on, the epoch's whole
    permutation and augmentation are drawn as for the whole epoch, then sliced: a run resumed
    mid-epoch sees exactly the remaining batches, and rank ``rank`` of ``ranks`` its part of each."""
    device = dataset.train_images.device
    generator = epoch_generator(seed, epoch, device)
    order = torch.randperm(len(dataset.train_labels), device=device, generator=generator)
    images = augment(dataset.train_images[order], generator)
    labels = dataset.train_labels[order]
    for index, start in enumerate(range(0, len(order), batch_size)):
        if index < start_batch:
            continue
        if max_batches is not None and index >= max_batches:
            return
        first, end = share(start, min(start + batch_size, len(order)), rank, ranks)
        yield dataset.normalize(images[first:end]), labels[first:end], order[first:end]


def eval_batches(dataset: Dataset, batch_size: int, rank: int = 0, ranks: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Rank ``rank``'s part of the test set (``share``) in order, normalised, without augmentation."""
    first, last = share(0, len(dataset.test_labels), rank, ranks)
    for start in range(first, last, batch_size):
        end = min(start + batch_size, last)
        yield dataset.normalize(dataset.test_images[start:end]), dataset.test_labels[start:end]
