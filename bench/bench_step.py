#!/usr/bin/env python
"""Images per second of one distillation training step, ours against the original's, side by side.

    python bench/bench_step.py [--quick] [--json FILE] [--device cpu|cuda] [--repeats N]
                               [--teacher ResNet112 --student ResNet56] [--batch_size 128]

A step is: fetch a batch, teacher forward (no grad), student forward and backward, loss, SGD step,
all through ``Trainer.step`` with the same models and batch size. Per method (``featuremap``,
``tucker``, ``tucker_recomp``) three pipelines are timed, interleaved:

* ours: the core's defaults (batches augmented on the device from uint8 images, fast Tucker,
  channels-last, bf16 autocast where the core turns it on);
* ours, contiguous: the same with ``--no-channels_last``, to show what channels-last buys here;
* reference, built like the original: a torchvision ``DataLoader`` with its CPU transforms
  (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) over an in-memory data
  set of the same uint8 images, tensorly's ``tucker`` at its defaults in the loss, float32,
  contiguous memory.

The data are random CIFAR-shaped images (100 classes; CIFAR cannot be downloaded everywhere) and
the teacher is randomly initialised, its BatchNorm statistics calibrated on them so that its maps
have realistic scale. Each timed sample is ``--steps`` consecutive steps. Two more tables: the
teacher's forward and the student's forward and backward passes alone, channels-last against
contiguous; and each input pipeline alone over a whole epoch, which counts our once-per-epoch
augmentation of the whole data set (a median over step samples would skip it). The last line is
the headline: the ``tucker`` step's speed-up over the reference and its overhead over
``featuremap`` in our path.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    Column,
    LoadMonitor,
    add_common_flags,
    add_pair_flags,
    finish,
    interleaved,
    median,
    paired_ratio,
    save_teacher,
    setup,
    synthetic_data,
)
from PIL import Image
from torch import Tensor
from torchvision import transforms

from toolbox.config import parse_config
from toolbox.config.choices import CROSS_ARCH_PAIRS, SAME_ARCH_PAIRS
from toolbox.data_loader import CIFAR_MEAN_STD, IMAGE_SIZE, PAD, Dataset, train_batches
from toolbox.rundir import RunDir, resolve
from toolbox.training import Trainer

METHODS = ("featuremap", "tucker", "tucker_recomp")
PIPELINES = ("ours", "ours_contiguous", "reference")
MEAN, STD = CIFAR_MEAN_STD["cifar100"]
OVERHEAD_GOAL = 0.05
# Values of the size flags left unset; --quick: small enough for a smoke test.
DEFAULTS = {"teacher": "ResNet56", "student": "ResNet20", "batch_size": 128, "epoch_batches": 391, "steps": 3}
QUICK = {"teacher": "ResNet20", "student": "ResNetBaby", "batch_size": 16, "epoch_batches": 4, "steps": 1}

Batches = Iterator[tuple[Tensor, Tensor, Tensor]]  # images, labels, sample indices
BENCHMARK_PAIRS = (*SAME_ARCH_PAIRS, *CROSS_ARCH_PAIRS)
QUICK_PAIRS = (("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2"), ("wrn_40_2", "ShuffleV1"))  # one per model family
PAIR_RANKS = "BATCH_SIZE,x0.5,x1,x1"  # half the teacher's channels, on any map
PAIR_BATCH = {"quick": 8, "full": 64}  # the benchmark recipe's batch size

PAIR_COLUMNS = [
    Column("pair", "teacher -> student"),
    Column("teacher_map", "teacher map"),
    Column("images_per_s", "tucker img/s", "{:.1f}"),
]
STEP_COLUMNS = [
    Column("method", "method"),
    Column("ours_images_per_s", "ours img/s", "{:.1f}"),
    Column("ours_contiguous_images_per_s", "ours contiguous img/s", "{:.1f}"),
    Column("reference_images_per_s", "reference img/s", "{:.1f}"),
    Column("speedup", "speed-up", "{:.2f}x"),
    Column("channels_last_gain", "channels_last gain", "{:.3f}x"),
    Column("overhead_vs_featuremap", "overhead vs featuremap", "{:+.1%}"),
]
PASS_COLUMNS = [
    Column("pass", "pass"),
    Column("channels_last_ms", "channels-last ms", "{:.1f}"),
    Column("contiguous_ms", "contiguous ms", "{:.1f}"),
    Column("channels_last_gain", "channels_last gain", "{:.3f}x"),
]
DATA_COLUMNS = [
    Column("data_path", "data path"),
    Column("ours_ms_per_batch", "ours ms/batch", "{:.2f}"),
    Column("reference_ms_per_batch", "reference ms/batch", "{:.2f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
]


class InMemoryImages(torch.utils.data.Dataset):
    """torchvision's CIFAR data set, minus the files: HWC uint8 arrays turned into PIL images and
    passed through the transform one by one, as the original's DataLoader did."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index]), index


def forever(epoch_batches: Callable[[int], Iterable[tuple[Tensor, Tensor, Tensor]]]) -> Batches:
    """Epoch after epoch, as training does."""
    for epoch in itertools.count():
        yield from epoch_batches(epoch)


def our_batches(data: Dataset, batch_size: int, seed: int) -> Batches:
    """The core's data path: each epoch augments the whole data set on the device, then slices it."""
    return forever(lambda epoch: train_batches(data, batch_size, seed, epoch))


def reference_batches(data: Dataset, batch_size: int, workers: int, seed: int, device: torch.device) -> Batches:
    """The original's input pipeline over the same images, its batches copied to ``device``."""
    transform = transforms.Compose(
        [
            transforms.RandomCrop(IMAGE_SIZE, padding=PAD),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    images = InMemoryImages(data.train_images.cpu().numpy(), data.train_labels.cpu().numpy(), transform)
    loader = torch.utils.data.DataLoader(
        images,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return (tuple(t.to(device, non_blocking=True) for t in batch) for batch in forever(lambda _: loader))


def build_trainer(
    args: argparse.Namespace,
    method: str,
    pipeline: str,
    data: Dataset,
    checkpoint: Path,
    device: torch.device,
    *more: str,
) -> Trainer:
    """A trainer for one pipeline, in training mode; every one starts from the same weights."""
    flags = [
        "--distillation",
        method,
        "--teacher",
        args.teacher,
        "--student",
        args.student,
        "--teacher_checkpoint",
        str(checkpoint),
        "--batch_size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--device",
        str(device),
        *more,
    ]
    if pipeline == "reference":
        flags += ["--amp", "off", "--no-channels_last", "--tucker_backend", "tensorly"]
    else:
        flags += ["--amp", args.amp, "--compile" if args.compile else "--no-compile"]
        flags += ["--no-channels_last"] if pipeline == "ours_contiguous" else []
    trainer = Trainer(resolve(parse_config(flags)), RunDir(checkpoint.parent / f"{method}-{pipeline}"), data)
    trainer.student.train()
    trainer.distiller.train()
    return trainer


def training_steps(trainer: Trainer, batches: Batches, count: int) -> Callable[[], None]:
    """``count`` training steps, each fetching its batch."""

    def run() -> None:
        for images, labels, indices in itertools.islice(batches, count):
            trainer.step(images, labels, indices)

    return run


def fetch_only(batches: Batches, count: int) -> Callable[[], None]:
    """Fetch ``count`` batches (one epoch) and nothing else: the data path alone."""
    return lambda: sum(1 for _ in itertools.islice(batches, count))


def measure_steps(
    args: argparse.Namespace, data: Dataset, checkpoint: Path, device: torch.device
) -> list[dict[str, Any]]:
    candidates: dict[str, Callable[[], None]] = {}
    for method in args.methods:
        for pipeline in PIPELINES:
            trainer = build_trainer(args, method, pipeline, data, checkpoint, device)
            if pipeline == "reference":
                batches = reference_batches(data, args.batch_size, args.ref_workers, args.seed, device)
            else:
                batches = our_batches(data, args.batch_size, args.seed)
            candidates[f"{method}/{pipeline}"] = training_steps(trainer, batches, args.steps)
    samples = interleaved(candidates, device, args.repeats)

    rows = []
    for method in args.methods:
        row: dict[str, Any] = {"method": method}
        for pipeline in PIPELINES:
            step_s = median(samples[f"{method}/{pipeline}"]) / args.steps
            row[f"{pipeline}_step_ms"] = 1e3 * step_s
            row[f"{pipeline}_images_per_s"] = args.batch_size / step_s
        row["speedup"] = paired_ratio(samples[f"{method}/reference"], samples[f"{method}/ours"])
        row["channels_last_gain"] = paired_ratio(samples[f"{method}/ours_contiguous"], samples[f"{method}/ours"])
        if method != "featuremap" and "featuremap" in args.methods:
            row["overhead_vs_featuremap"] = paired_ratio(samples[f"{method}/ours"], samples["featuremap/ours"]) - 1
        rows.append(row)
    return rows


def measure_pairs(args: argparse.Namespace, data: Dataset, folder: Path, device: torch.device) -> list[dict[str, Any]]:
    """Our ``tucker`` step (ranks ``PAIR_RANKS`` on layer 3) for every pair of the benchmark: every
    architecture runs through the same path (channels-last, autocast where the core turns it on)."""
    candidates: dict[str, Callable[[], None]] = {}
    maps = {}
    batch_size = PAIR_BATCH["quick" if args.quick else "full"]
    for teacher, student in QUICK_PAIRS if args.quick else BENCHMARK_PAIRS:
        checkpoint = folder / f"{teacher}.pth"
        if not checkpoint.exists():
            save_teacher(teacher, data, checkpoint)
        pair = argparse.Namespace(**{**vars(args), "teacher": teacher, "student": student, "batch_size": batch_size})
        trainer = build_trainer(pair, "tucker", "ours", data, checkpoint, device, "--ranks", PAIR_RANKS)
        name = f"{teacher} -> {student}"
        maps[name] = "x".join(map(str, trainer.feature_shapes["teacher"]))
        candidates[name] = training_steps(trainer, our_batches(data, batch_size, args.seed), args.steps)
    samples = interleaved(candidates, device, max(1, args.repeats // 2))
    return [
        {"pair": name, "teacher_map": maps[name], "images_per_s": batch_size * args.steps / median(samples[name])}
        for name in candidates
    ]


def passes(trainer: Trainer, images: Tensor, labels: Tensor) -> dict[str, Callable[[], None]]:
    """The teacher's forward pass and the student's forward and backward passes alone, run as
    ``Trainer.step`` runs them (same memory format, same autocast)."""
    images = images.contiguous(memory_format=trainer.memory_format)

    def teacher_forward() -> None:
        with trainer.autocast(), torch.no_grad():
            trainer.teacher_step(images)

    def student_forward_backward() -> None:
        with trainer.autocast():
            logits = trainer.student_step(images)[-1]
        F.cross_entropy(logits.float(), labels).backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    return {"teacher forward": teacher_forward, "student forward and backward": student_forward_backward}


def measure_passes(
    args: argparse.Namespace, data: Dataset, checkpoint: Path, device: torch.device
) -> list[dict[str, Any]]:
    """Channels-last against contiguous memory for the passes that make up most of a step."""
    images, labels, _ = next(our_batches(data, args.batch_size, args.seed))
    candidates: dict[str, Callable[[], None]] = {}
    for pipeline in ("ours", "ours_contiguous"):
        trainer = build_trainer(args, "featuremap", pipeline, data, checkpoint, device)
        candidates.update({f"{name}/{pipeline}": run for name, run in passes(trainer, images, labels).items()})
    samples = interleaved(candidates, device, args.repeats)
    return [
        {
            "pass": name,
            "channels_last_ms": 1e3 * median(samples[f"{name}/ours"]),
            "contiguous_ms": 1e3 * median(samples[f"{name}/ours_contiguous"]),
            "channels_last_gain": paired_ratio(samples[f"{name}/ours_contiguous"], samples[f"{name}/ours"]),
        }
        for name in ("teacher forward", "student forward and backward")
    ]


def measure_data(args: argparse.Namespace, data: Dataset, device: torch.device) -> list[dict[str, Any]]:
    """Milliseconds per batch of each input pipeline over whole epochs, so that our
    once-per-epoch augmentation of the whole data set is included."""
    candidates = {
        "ours": fetch_only(our_batches(data, args.batch_size, args.seed), args.epoch_batches),
        "reference": fetch_only(
            reference_batches(data, args.batch_size, args.ref_workers, args.seed, device), args.epoch_batches
        ),
    }
    samples = interleaved(candidates, device, max(1, args.repeats // 2))
    return [
        {
            "data_path": "fetch, augment, normalise",
            "ours_ms_per_batch": 1e3 * median(samples["ours"]) / args.epoch_batches,
            "reference_ms_per_batch": 1e3 * median(samples["reference"]) / args.epoch_batches,
            "speedup": paired_ratio(samples["reference"], samples["ours"]),
        }
    ]


def headline(rows: list[dict[str, Any]], device: torch.device) -> str:
    """The tucker step against the reference, and its overhead over featuremap against the goal."""
    by_method = {row["method"]: row for row in rows}
    focus = by_method.get("tucker", rows[0])
    text = (
        f"{focus['method']} step {focus['speedup']:.2f}x the reference's speed "
        f"({focus['ours_images_per_s']:.1f} vs {focus['reference_images_per_s']:.1f} images/s on {device.type})"
    )
    overhead = focus.get("overhead_vs_featuremap")
    if overhead is not None:
        met = "met" if overhead < OVERHEAD_GOAL else "NOT met"
        text += f"; overhead over featuremap {overhead:+.1%} (goal < {OVERHEAD_GOAL:.0%}: {met})"
    return text + f"; channels_last gain {focus['channels_last_gain']:.3f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_flags(parser)
    add_pair_flags(parser, DEFAULTS)
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="distillation methods to time"
    )
    parser.add_argument("--steps", type=int, help="consecutive steps per timed sample (default 3)")
    parser.add_argument(
        "--epoch_batches", type=int, help="synthetic training set size, in batches (default 391: CIFAR's 50,000 images)"
    )
    parser.add_argument(
        "--ref_workers",
        type=int,
        default=0,
        help="the reference DataLoader's worker processes (their prefetching runs on while the other pipelines "
        "are timed)",
    )
    parser.add_argument(
        "--amp", default="auto", choices=("auto", "bf16", "off"), help="our pipelines' --amp (the reference is float32)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile our pipelines' models (compiled in the untimed warm-up round)",
    )
    args = parser.parse_args()
    device = setup(args, DEFAULTS, QUICK)

    with LoadMonitor() as load, tempfile.TemporaryDirectory() as folder:
        data = synthetic_data(args.batch_size * args.epoch_batches, device)
        checkpoint = Path(folder) / "teacher.pth"
        save_teacher(args.teacher, data, checkpoint)
        step_rows = measure_steps(args, data, checkpoint, device)
        pass_rows = measure_passes(args, data, checkpoint, device)
        data_rows = measure_data(args, data, device)
        pair_rows = measure_pairs(args, data, Path(folder), device)
    settings = {
        name: getattr(args, name)
        for name in (
            "teacher",
            "student",
            "batch_size",
            "methods",
            "steps",
            "epoch_batches",
            "ref_workers",
            "amp",
            "compile",
            "repeats",
        )
    }
    tables = {
        f"One training step, {args.teacher} -> {args.student}, batch {args.batch_size}, {device.type}: "
        f"median of {args.repeats} samples of {args.steps} steps": (step_rows, STEP_COLUMNS),
        f"Passes alone, {args.teacher} -> {args.student}, batch {args.batch_size}, --amp {args.amp}: "
        f"channels-last against contiguous": (pass_rows, PASS_COLUMNS),
        f"Input pipeline alone, {args.epoch_batches} batches of {args.batch_size} (one epoch)": (
            data_rows,
            DATA_COLUMNS,
        ),
        f"The benchmark's pairs: our tucker step ({PAIR_RANKS}, layer 3), "
        f"batch {PAIR_BATCH['quick' if args.quick else 'full']}, "
        f"{device.type}": (pair_rows, PAIR_COLUMNS),
    }
    finish(args, device, tables, settings, load, headline(step_rows, device))


if __name__ == "__main__":
    main()
