#!/usr/bin/env python
"""Images per second of the ImageNet input path, ours against torchvision's default, side by side.

    python bench/bench_imagenet_input.py [--quick] [--json FILE] [--device cpu|cuda]
                                         [--data_dir DATA_DIR --images 2048] [--workers N]

Each candidate reads one whole epoch of the same JPEG files with the same number of DataLoader
workers and the same batch size, and hands normalised float32 batches to ``--device``:

* ours: ``toolbox.datasets.imagenet``: the workers decode and augment to uint8 (PILToTensor), the
  uint8 batch is pinned (on CUDA), copied, then normalised there by ``normalize_on_device``;
* torchvision's default, as mdistiller and the ImageNet examples read ImageNet: ``ImageFolder``
  with ToTensor + Normalize in the workers, float32 batches pinned and copied.

Two rows: training (RandomResizedCrop(224) + flip) and evaluation (Resize(256) + CenterCrop(224)).
The images are ``--classes`` x ``--per_class`` JPEGs of ImageNet's typical 500x375 pixels written
into a temporary folder (smooth random content, quality 90), or, with ``--data_dir``, ``--images``
files spread evenly over each split of ``DATA_DIR/imagenet``. The last line is the headline: our
speed over torchvision's default for both rows.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from common import Column, LoadMonitor, add_common_flags, finish, interleaved, median, paired_ratio, setup
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from toolbox.datasets.imagenet import IMAGENET_MEAN_STD, image_loader, imagenet_datasets, normalize_on_device
from toolbox.datasets.sampling import EpochBatchSampler

IMAGE_SIZE = (500, 375)  # ImageNet's most common size (width, height)
DEFAULTS = {"classes": 4, "per_class": 64, "batch_size": 32, "images": 2048}
QUICK = {"classes": 2, "per_class": 6, "batch_size": 4, "images": 12}
COLUMNS = [
    Column("split", "split (transforms)"),
    Column("images", "images"),
    Column("ours_images_per_s", "ours img/s", "{:.1f}"),
    Column("torchvision_images_per_s", "torchvision img/s", "{:.1f}"),
    Column("speedup", "ours / torchvision", "{:.2f}x"),
]
SPLITS = {"train": "train (RandomResizedCrop + flip)", "val": "eval (Resize + CenterCrop)"}


def write_images(root: Path, classes: int, per_class: int, seed: int) -> None:
    """``classes`` x ``per_class`` photo-like JPEGs in root/imagenet/{train,val}/<wnid>/: smooth
    colour fields (bilinearly upsampled noise) with fine grain, which compress like photographs."""
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        for label in range(classes):
            folder = root / "imagenet" / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
                    IMAGE_SIZE, Image.BILINEAR
                )
                grain = rng.integers(-12, 13, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3))
                pixels = np.clip(np.asarray(coarse, dtype=np.int64) + grain, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{label}_{i}.JPEG", quality=90)


def spread(dataset: Any, count: int) -> Any:
    """``count`` samples spread evenly over the dataset (all of them when it is no larger)."""
    if len(dataset) <= count:
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist())


def torchvision_default(root: Path, split: str) -> ImageFolder:
    normalize = [transforms.ToTensor(), transforms.Normalize(*IMAGENET_MEAN_STD)]
    crop = (
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
        if split == "train"
        else [transforms.Resize(256), transforms.CenterCrop(224)]
    )
    return ImageFolder(str(root / "imagenet" / split), transform=transforms.Compose([*crop, *normalize]))


def epoch_of(loader: DataLoader, device: torch.device, normalize: bool) -> Callable[[], None]:
    """One pass over ``loader`` delivering normalised float32 batches on ``device``; each pass is
    the next epoch (fresh crops, as the reference's unseeded ones are)."""
    epochs = itertools.count()

    def run() -> None:
        if isinstance(loader.batch_sampler, EpochBatchSampler):
            loader.batch_sampler.set_epoch(next(epochs))
        for images, *_ in loader:
            images = images.to(device, non_blocking=True)
            if normalize:
                images = normalize_on_device(images)

    return run


def measure(args: argparse.Namespace, root: Path, split: str, device: torch.device) -> dict[str, Any]:
    train = split == "train"
    ours_data = spread(imagenet_datasets(root)[0 if train else 1], args.images)
    reference_data = spread(torchvision_default(root, split), args.images)
    options = {"num_workers": args.workers, "pin_memory": device.type == "cuda", "persistent_workers": args.workers > 0}
    candidates = {
        "ours": epoch_of(
            image_loader(ours_data, args.batch_size, train, args.seed, device, args.workers), device, normalize=True
        ),
        "torchvision": epoch_of(
            DataLoader(reference_data, args.batch_size, shuffle=train, **options), device, normalize=False
        ),
    }
    times = interleaved(candidates, device, args.repeats)
    count = len(ours_data)
    return {
        "split": SPLITS[split], "images": count,
        "ours_images_per_s": count / median(times["ours"]),
        "torchvision_images_per_s": count / median(times["torchvision"]),
        "speedup": paired_ratio(times["torchvision"], times["ours"]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_flags(parser)
    parser.add_argument("--data_dir", type=Path, help="read DATA_DIR/imagenet/{train,val} instead of writing images")
    parser.add_argument("--images", type=int, help="with --data_dir: images read per split (default 2048)")
    parser.add_argument("--classes", type=int, help="classes of the written folder (default 4)")
    parser.add_argument("--per_class", type=int, help="images per class and split of the written folder (default 64)")
    parser.add_argument("--batch_size", type=int, help="batch size of both loaders (default 32)")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="DataLoader workers of both (default: the usable cores, %(default)s)",
    )
    args = parser.parse_args()
    device = setup(args, DEFAULTS, QUICK)
    with LoadMonitor() as load, tempfile.TemporaryDirectory() as folder:
        root = args.data_dir
        if root is None:
            root = Path(folder)
            write_images(root, args.classes, args.per_class, args.seed)
        rows = [measure(args, root, split, device) for split in SPLITS]
    settings = {
        name: getattr(args, name)
        for name in ("data_dir", "images", "classes", "per_class", "batch_size", "workers", "repeats")
    }
    settings["data_dir"] = (
        str(args.data_dir)
        if args.data_dir
        else f"written: {args.classes} classes x {args.per_class} {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEGs"
    )
    title = (
        f"One epoch of JPEG decoding and augmentation into normalised float32 batches on {device.type}, "
        f"{args.workers} workers, batch {args.batch_size}, median of {args.repeats} rounds"
    )
    train, val = rows
    headline = (
        f"ours {train['speedup']:.2f}x torchvision's default on training ({train['ours_images_per_s']:.0f} vs "
        f"{train['torchvision_images_per_s']:.0f} images/s), {val['speedup']:.2f}x on evaluation "
        f"({val['ours_images_per_s']:.0f} vs {val['torchvision_images_per_s']:.0f}), {args.workers} workers, "
        f"{device.type}"
    )
    finish(args, device, {title: (rows, COLUMNS)}, settings, load, headline)


if __name__ == "__main__":
    main()
