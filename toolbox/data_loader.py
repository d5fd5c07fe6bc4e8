"""Data sets kept whole on the training device as uint8, with batched augmentation.

CIFAR is small enough (150 MB as uint8) to live on the GPU, so an epoch is a permutation plus a few
batched tensor ops: random 4-pixel-padded crops and horizontal flips for all images at once, then
normalisation. No DataLoader workers, no host-to-device copies on the hot path. Each epoch's
augmentation is drawn from a generator seeded by (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one.

CIFAR-10/100 are downloaded into ``data_dir`` in torchvision's folder layout (an existing
torchvision download is reused) and parsed from their python-pickle batches. ``digits`` is
scikit-learn's offline 8x8 digits, resized to 3x32x32 with a fixed split, so that every model and
every Tucker rank behaves as on CIFAR.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.errors import UsageError

PAD = 4
IMAGE_SIZE = 32  # every data set is fed as 3x32x32 images, digits included


@dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR archive comes from and how torchvision lays it out on disk."""

    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR_SOURCES = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
    ),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
    ),
}

# Per-channel statistics of the training images, in [0, 1] units.
CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

DATASETS = ("cifar10", "cifar100", "digits")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class Dataset:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64, both on the training device."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor  # (1, 3, 1, 1) float, in [0, 255] units
    std: Tensor
    num_classes: int

    def normalize(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar(source: CifarSource, data_dir: Path) -> None:
    """Download and check the archive, then extract it. Nothing is extracted from a bad archive,
    and a half-finished download never lands under its final name."""
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / Path(source.url).name
    if not archive.exists():
        print(f"downloading {source.url} into {data_dir}")
        with tempfile.NamedTemporaryFile(dir=data_dir, delete=False, suffix=".part") as part:
            try:
                with urllib.request.urlopen(source.url) as response:
                    shutil.copyfileobj(response, part)
            except OSError as error:
                Path(part.name).unlink()
                raise UsageError(f"could not download {source.url} ({error}); place the archive at {archive}") from None
        Path(part.name).replace(archive)
    if md5sum(archive) != source.md5:
        raise UsageError(f"{archive} fails its MD5 check (expected {source.md5}); delete it to download it again")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(data_dir, filter="data")


def read_cifar_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) from CIFAR's python-pickle batch files."""
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[label_key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            raise UsageError(
                f"{path} is missing or corrupt ({type(error).__name__}: {error}); "
                f"delete {folder} to download the data set again"
            ) from None
        if len(images[-1]) != len(labels[-1]):
            raise UsageError(f"{path} is corrupt: {len(images[-1])} images but {len(labels[-1])} labels")
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(name: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    source = CIFAR_SOURCES[name]
    folder = data_dir / source.folder
    if not folder.is_dir():
        download_cifar(source, data_dir)
    train = read_cifar_batches(folder, source.train_files, source.label_key)
    test = read_cifar_batches(folder, source.test_files, source.label_key)
    return (*train, *test)


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as CIFAR-shaped uint8 images with a fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values 0..16
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).numpy()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    n_test = int(len(images) * DIGITS_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    labels = digits.target.astype(np.int64)
    return images[train], labels[train], images[test], labels[test]


def load_dataset(name: str, data_dir: str | Path, device: torch.device | str) -> Dataset:
    """Load a data set by name onto ``device``."""
    if name == "digits":
        train_x, train_y, test_x, test_y = load_digits()
        num_classes = 10
        pixels = torch.from_numpy(train_x).float()
        mean = pixels.mean(dim=(0, 2, 3)) / 255
        std = pixels.std(dim=(0, 2, 3)) / 255
    elif name in CIFAR_SOURCES:
        train_x, train_y, test_x, test_y = load_cifar(name, Path(data_dir))
        num_classes = CIFAR_SOURCES[name].num_classes
        mean, std = map(torch.tensor, CIFAR_MEAN_STD[name])
    else:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    to_device = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(device)  # noqa: E731
    return Dataset(
        train_images=to_device(train_x),
        train_labels=to_device(train_y),
        test_images=to_device(test_x),
        test_labels=to_device(test_y),
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


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """A generator for one epoch's order and augmentation, independent of all other randomness."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def train_batches(
    dataset: Dataset, batch_size: int, seed: int, epoch: int, max_batches: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled, augmented, normalised training batches; the last one may be smaller."""
    device = dataset.train_images.device
    generator = epoch_generator(seed, epoch, device)
    order = torch.randperm(len(dataset.train_labels), device=device, generator=generator)
    images = augment(dataset.train_images[order], generator)
    labels = dataset.train_labels[order]
    for index, start in enumerate(range(0, len(order), batch_size)):
        if max_batches is not None and index >= max_batches:
            return
        yield dataset.normalize(images[start : start + batch_size]), labels[start : start + batch_size]


def eval_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The test set in order, normalised, without augmentation."""
    for start in range(0, len(dataset.test_labels), batch_size):
        end = start + batch_size
        yield dataset.normalize(dataset.test_images[start:end]), dataset.test_labels[start:end]
