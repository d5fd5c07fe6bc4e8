#!/usr/bin/env python
"""Seconds per training epoch, end to end, as ``train()`` runs it: every batch of a CIFAR-sized
training set through ``Trainer.train_epoch`` (data path, teacher, student, loss, optimiser), then
the test set through ``Trainer.test``.

    python bench/bench_epoch.py [--quick] [--json FILE] [--device cuda]
                                [--teacher ResNet112 --student ResNet56 --batch_size 512]
                                [--methods none featuremap tucker] [--amp off bf16] [--compile]

Each configuration (method x ``--amp`` x compiled or not) gets a fresh trainer from the same
weights, a few untimed warm-up steps (``torch.compile`` compiles there), then ``--epochs`` timed
epochs, of which the median is reported. The data are random CIFAR-100-shaped images (50,000 to
train, 10,000 to test) and the teacher is randomly initialised with calibrated BatchNorm
statistics, as in ``bench_step.py``: an epoch's arithmetic does not depend on the pixels. bf16
autocast computes in another precision than float32, so its row is a timing, not a speed-up
between equal computations; the Tucker decomposition runs in float64 either way. The last column
extrapolates to a whole run on CIFAR's 50,000 + 10,000 images for ``--run_epochs`` epochs (150, the
study's; 240 for the CRD recipe), from the measured training and test rates.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    Column,
    LoadMonitor,
    add_common_flags,
    add_pair_flags,
    finish,
    median,
    save_teacher,
    setup,
    synchronize,
    synthetic_data,
)

from toolbox.config import parse_config
from toolbox.data_loader import train_batches
from toolbox.methods import DISTILLERS
from toolbox.rundir import RunDir, resolve
from toolbox.stop import StopFlag
from toolbox.training import Trainer

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
DEFAULTS = {
    "teacher": "ResNet112",
    "student": "ResNet56",
    "batch_size": 512,
    "train_size": 50_000,
    "test_size": 10_000,
    "epochs": 2,
    "warmup_steps": 5,
}
QUICK = {
    "teacher": "ResNet20",
    "student": "ResNetBaby",
    "batch_size": 32,
    "train_size": 128,
    "test_size": 64,
    "epochs": 1,
    "warmup_steps": 1,
}

COLUMNS = [
    Column("method", "method"),
    Column("amp", "--amp"),
    Column("compile", "compiled"),
    Column("epoch_s", "epoch s", "{:.2f}"),
    Column("train_images_per_s", "train img/s", "{:.0f}"),
    Column("test_s", "of which test s", "{:.2f}"),
    Column("run_hours", "run h (CIFAR)", "{:.2f}"),
]


def build_trainer(args: argparse.Namespace, method: str, amp: str, compiled: bool, checkpoint: Path, data) -> Trainer:
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
        args.device,
        "--amp",
        amp,
        "--compile" if compiled else "--no-compile",
        *args.flags,
    ]
    return Trainer(resolve(parse_config(flags)), RunDir(checkpoint.parent / f"{method}-{amp}-{compiled}"), data)


def measure(
    args: argparse.Namespace, method: str, amp: str, compiled: bool, checkpoint: Path, data, device: torch.device
) -> dict[str, Any]:
    trainer = build_trainer(args, method, amp, compiled, checkpoint, data)
    trainer.student.train()
    trainer.distiller.train()
    for images, labels, indices in itertools.islice(
        train_batches(data, args.batch_size, args.seed, 0), args.warmup_steps
    ):
        trainer.step(images, labels, indices)
    trainer.test()  # its first batches pay one-off costs (allocations); evaluation runs eagerly, compiled or not
    epochs, tests = [], []
    for _ in range(args.epochs):
        synchronize(device)
        start = time.perf_counter()
        trainer.train_epoch(StopFlag())
        synchronize(device)
        middle = time.perf_counter()
        trainer.test()
        synchronize(device)
        epochs.append(time.perf_counter() - start)
        tests.append(time.perf_counter() - middle)
        trainer.history["test_acc"].append(0.0)  # the next epoch's data order, as training advances it
    epoch_s, test_s = median(epochs), median(tests)
    cifar_epoch_s = (epoch_s - test_s) * CIFAR_TRAIN / args.train_size + test_s * CIFAR_TEST / args.test_size
    return {
        "method": method,
        "amp": amp,
        "compile": "yes" if compiled else "no",
        "epoch_s": epoch_s,
        "train_images_per_s": args.train_size / (epoch_s - test_s),
        "test_s": test_s,
        "run_hours": cifar_epoch_s * args.run_epochs / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_flags(parser)
    add_pair_flags(parser, DEFAULTS)
    parser.add_argument("--train_size", type=int, help="training images (default 50,000, CIFAR's)")
    parser.add_argument("--test_size", type=int, help="test images (default 10,000, CIFAR's)")
    parser.add_argument("--epochs", type=int, help="timed epochs per configuration (default 2)")
    parser.add_argument("--warmup_steps", type=int, help="untimed steps first (default 5)")
    parser.add_argument(
        "--run_epochs", type=int, default=150, help="epochs of a whole run, for the last column (default: %(default)s)"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=list(DISTILLERS), default=["featuremap", "tucker"], help="methods to time"
    )
    parser.add_argument("--amp", nargs="+", choices=("off", "bf16"), default=["off", "bf16"], help="precisions to time")
    parser.add_argument("--compile", action="store_true", help="also time each configuration with torch.compile")
    parser.add_argument(
        "--flags", nargs=argparse.REMAINDER, default=[], help="further tucker_distillation.py flags for every run"
    )
    args = parser.parse_args()
    device = setup(args, DEFAULTS, QUICK)
    args.device = str(device)

    with LoadMonitor() as load, tempfile.TemporaryDirectory() as folder:
        data = synthetic_data(args.train_size, device, args.test_size)
        checkpoint = Path(folder) / "teacher.pth"
        save_teacher(args.teacher, data, checkpoint)
        rows = [
            measure(args, method, amp, compiled, checkpoint, data, device)
            for method in args.methods
            for amp in args.amp
            for compiled in ((False, True) if args.compile else (False,))
        ]
    settings = {
        name: getattr(args, name)
        for name in (
            "teacher",
            "student",
            "batch_size",
            "train_size",
            "test_size",
            "epochs",
            "warmup_steps",
            "run_epochs",
            "methods",
            "amp",
            "compile",
            "flags",
        )
    }
    title = (
        f"One epoch, {args.teacher} -> {args.student}, batch {args.batch_size}, {args.train_size} training and "
        f"{args.test_size} test images, {device.type}: median of {args.epochs}"
    )
    fastest = min(rows, key=lambda row: row["epoch_s"])
    headline = (
        f"fastest epoch {fastest['epoch_s']:.2f} s ({fastest['method']}, --amp {fastest['amp']}, compiled "
        f"{fastest['compile']}): {fastest['run_hours']:.2f} h for {args.run_epochs} CIFAR epochs on {device.type}"
    )
    finish(args, device, {title: (rows, COLUMNS)}, settings, load, headline)


if __name__ == "__main__":
    main()
