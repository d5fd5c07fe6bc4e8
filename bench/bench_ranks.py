#!/usr/bin/env python
"""Images per second of data-parallel training steps: one process against torchrun's ranks.

    python bench/bench_ranks.py [--quick] [--json FILE] [--device cpu|cuda] [--repeats N]
                                [--teacher ResNet20 --student ResNetBaby] [--batch_size 64]
                                [--method kd] [--ranks 2] [--threads 1]

Each candidate is a fresh set of processes running ``--steps`` steps of ``Trainer.step`` on the
same global batch (random CIFAR-shaped data, a randomly initialised teacher), after two untimed
ones. A rank takes its part of the global batch, weights its loss as training does, and agrees on
the stop flag after every step (the per-step all-reduce of ``World.any``), so a step costs what a
training step costs. Candidates:

* one process, as ``tucker_distillation.py`` runs without torchrun;
* one process under torchrun: a world of one, which by design takes the one-process path (no DDP),
  so the ratio shows what torchrun's start-up leaves in the step: nothing, or noise;
* ``--ranks`` processes under torchrun with DDP (gloo on the CPU, NCCL on GPUs), each with
  ``--threads`` threads; on the CPU the one-process candidates get ``ranks x threads`` threads, so
  every candidate has the same cores.

Candidates run in turn, ``--repeats`` rounds, each round in the other order; the ratio is the
median over rounds of the per-round step time against one process. On one GPU, the ranks share
it: the table then shows DDP's cost, not a speed-up (a real speed-up needs one GPU per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Column, LoadMonitor, add_common_flags, add_pair_flags, finish, save_teacher, setup, synthetic_data

from toolbox.cli import exit_process
from toolbox.config import parse_config
from toolbox.distributed import join
from toolbox.rundir import RunDir, resolve
from toolbox.training import Trainer

DEFAULTS = {"teacher": "ResNet20", "student": "ResNetBaby", "batch_size": 64, "steps": 30}
QUICK = {"teacher": "ResNetBaby", "student": "ResNetBaby", "batch_size": 16, "steps": 3}
WARMUP_STEPS = 2


def worker(args: argparse.Namespace) -> None:
    """One rank of a candidate: time ``args.steps`` steps; rank 0 prints the seconds per step."""
    world = join(args.device)
    torch.set_num_threads(args.threads)
    data = synthetic_data(8 * args.batch_size, world.device)
    folder = Path(args.folder)
    flags = [
        "--distillation",
        args.method,
        "--teacher",
        args.teacher,
        "--student",
        args.student,
        "--teacher_checkpoint",
        str(folder / "teacher.pth"),
        "--batch_size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
    ]
    trainer = Trainer(resolve(parse_config(flags)), RunDir(folder / "run"), data, world)
    trainer.student.train()
    trainer.distiller.train()
    first, last = world.rank * args.batch_size // world.size, (world.rank + 1) * args.batch_size // world.size
    indices = torch.arange(first, last, device=world.device)
    images, labels = data.normalize(data.train_images[indices]), data.train_labels[indices]
    weight = world.loss_weight(len(indices), args.batch_size)
    for step in range(WARMUP_STEPS + args.steps):
        if step == WARMUP_STEPS:
            world.barrier()
            if world.device.type == "cuda":
                torch.cuda.synchronize(world.device)
            start = time.perf_counter()
        trainer.step(images, labels, indices, weight)
        world.any(False)  # the stop flag every training step agrees on
    if world.device.type == "cuda":
        torch.cuda.synchronize(world.device)
    seconds = (time.perf_counter() - start) / args.steps
    if world.is_writer:
        print(json.dumps({"seconds_per_step": seconds}), flush=True)
    world.close()


def candidates(args: argparse.Namespace, folder: Path, cpu: bool) -> dict[str, tuple[list[str], int, int]]:
    """name -> (command, processes, threads per process)."""
    all_threads = args.ranks * args.threads if cpu else args.threads
    script = [
        str(Path(__file__).resolve()),
        "--worker",
        "--folder",
        str(folder),
        "--device",
        args.device,
        "--teacher",
        args.teacher,
        "--student",
        args.student,
        "--batch_size",
        str(args.batch_size),
        "--method",
        args.method,
        "--steps",
        str(args.steps),
        "--seed",
        str(args.seed),
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return {
        "one process": ([sys.executable, *script, "--threads", str(all_threads)], 1, all_threads),
        "torchrun, 1 rank": (
            [*torchrun, "--nproc_per_node", "1", *script, "--threads", str(all_threads)],
            1,
            all_threads,
        ),
        f"torchrun, {args.ranks} ranks": (
            [*torchrun, "--nproc_per_node", str(args.ranks), *script, "--threads", str(args.threads)],
            args.ranks,
            args.threads,
        ),
    }


def measure(command: list[str]) -> float:
    """Seconds per step of one candidate's fresh processes."""
    # As tucker_distillation.py runs: idle OpenMP threads sleep instead of spinning (config.wait_passively).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench_ranks.py: a candidate failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    add_pair_flags(parser, DEFAULTS)
    parser.add_argument("--steps", type=int, help=f"timed steps per candidate (default {DEFAULTS['steps']})")
    parser.add_argument("--method", default="kd", help="the distillation method (default: %(default)s)")
    parser.add_argument(
        "--ranks", type=int, default=2, help="ranks of the data-parallel candidate (default: %(default)s)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        exit_process(0)
    args.threads = args.threads or 1
    device = setup(args, DEFAULTS, QUICK)
    args.device = str(device)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, LoadMonitor() as load:
        folder = Path(tmp)
        save_teacher(args.teacher, synthetic_data(8 * args.batch_size, device), folder / "teacher.pth")
        runs = candidates(args, folder, device.type == "cpu")
        order = list(runs)
        for round_index in range(args.repeats):
            for name in order if round_index % 2 == 0 else reversed(order):
                samples.setdefault(name, []).append(measure(runs[name][0]))
    base = samples["one process"]
    rows = [
        {
            "candidate": name,
            "processes": runs[name][1],
            "threads": runs[name][2],
            "step_ms": 1000 * statistics.median(times),
            "images_per_s": args.batch_size / statistics.median(times),
            "vs_one_process": statistics.median(t / b for t, b in zip(times, base)),
        }
        for name, times in samples.items()
    ]
    columns = [
        Column("candidate", "candidate"),
        Column("processes", "processes"),
        Column("threads", "threads each"),
        Column("step_ms", "ms / step", "{:.1f}"),
        Column("images_per_s", "images/s", "{:.0f}"),
        Column("vs_one_process", "step time vs one process", "{:.2f}x"),
    ]
    title = (
        f"{args.method}, {args.teacher} -> {args.student}, global batch {args.batch_size}, on {device} "
        f"(median of {args.repeats} rounds of {args.steps} steps)"
    )
    ranks_row = rows[-1]
    headline = (
        f"{args.ranks} ranks take {ranks_row['vs_one_process']:.2f}x the step time of one process "
        f"({args.method}, batch {args.batch_size}, {device})"
    )
    settings = {name: value for name, value in vars(args).items() if name not in ("json", "worker", "folder")}
    finish(args, device, {title: (rows, columns)}, {**settings, "warmup_steps": WARMUP_STEPS}, load, headline)


if __name__ == "__main__":
    main()
