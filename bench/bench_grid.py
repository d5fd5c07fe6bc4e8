#!/usr/bin/env python
"""Throughput of the CRD benchmark's pair (resnet32x4 -> resnet8x4, batch 64) on one device: K
training processes side by side against one alone, and one step of each method eager, compiled and
replayed as CUDA graphs.

    python bench/bench_grid.py [--quick] [--json FILE] [--device cuda] [--processes 1 2 4 8]
                               [--grid_method tucker] [--grid_mode eager] [--steps 300] [--no-mps]
                               [--methods none kd featuremap tucker crd] [--modes eager compiled cudagraphs]

The benchmark's grid is hundreds of short runs whose steps at batch 64 are launch-bound (a few
milliseconds each on a GPU, bench/RESULTS.md), so one process leaves the device idle between kernel
launches; several runs side by side may fill it. For each K in --processes, K worker processes (this
script with --worker) each build the trainer on synthetic CIFAR-100-shaped data on the device, take
--warmup_steps untimed steps (torch.compile compiles there), wait until all K are ready, then run
--steps steps. Their total images/s is all their images over the span from the first start to the
last end (CLOCK_MONOTONIC is the same clock in every process); the ratio is to the first row's (one
process alone). On a GPU with ``nvidia-cuda-mps-control`` on the PATH, each K is measured again under
a CUDA MPS daemon of this script's own (its pipe and log folders in a temporary folder), which lets the
processes' kernels run concurrently instead of time-sliced; on the CPU, or without it, MPS is skipped.

The second table times --sample_steps consecutive steps of each method, interleaved as in
bench_step.py: eager, compiled (--compile) and CUDA graphs (--compile --compile_mode reduce-overhead,
a GPU only: n/a elsewhere). Compiling happens in the untimed first round. A speed-up is the median
over rounds of eager's time over the mode's in the same round (both share that round's load), so
with few rounds on a busy machine it can differ from the ratio of the two median times shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from bench_step import our_batches, training_steps
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
    synchronize,
    synthetic_data,
)

from toolbox.config import parse_config
from toolbox.data_loader import Dataset
from toolbox.rundir import RunDir, resolve
from toolbox.training import Trainer

METHODS = ("none", "kd", "featuremap", "tucker", "crd")
MODES = {
    "eager": ["--no-compile"],
    "compiled": ["--compile"],
    "cudagraphs": ["--compile", "--compile_mode", "reduce-overhead"],
}
"""How each mode runs a step: its tucker_distillation.py flags."""
CUDA_ONLY_MODES = {"cudagraphs"}
RANKS = "BATCH_SIZE,x0.5,x1,x1"  # half the teacher's channels on any map, as bench_step.py's pairs
MPS_CONTROL = "nvidia-cuda-mps-control"
DEFAULTS = {
    "teacher": "resnet32x4",
    "student": "resnet8x4",
    "batch_size": 64,
    "epoch_batches": 50,
    "steps": 300,
    "warmup_steps": 20,
    "sample_steps": 10,
    "processes": [1, 2, 4, 8],
}
QUICK = {
    "teacher": "resnet8",
    "student": "ResNetBaby",
    "batch_size": 8,
    "epoch_batches": 4,
    "steps": 3,
    "warmup_steps": 1,
    "sample_steps": 1,
    "processes": [1, 2],
}

GRID_COLUMNS = [
    Column("processes", "processes"),
    Column("mps", "MPS"),
    Column("images_per_s", "total img/s", "{:.0f}"),
    Column("process_images_per_s", "img/s per process", "{:.0f}"),
    Column("ratio", "ratio to one", "{:.2f}x"),
]
STEP_COLUMNS = [
    Column("method", "method"),
    Column("eager_ms", "eager ms", "{:.2f}"),
    Column("compiled_ms", "compiled ms", "{:.2f}"),
    Column("cudagraphs_ms", "CUDA graphs ms", "{:.2f}"),
    Column("compiled_speedup", "compiled speed-up", "{:.2f}x"),
    Column("cudagraphs_speedup", "CUDA graphs speed-up", "{:.2f}x"),
]


def build_trainer(args: argparse.Namespace, method: str, mode: str, data: Dataset, checkpoint: Path) -> Trainer:
    """A trainer of ``method`` run in ``mode``, in training mode, from the shared random teacher."""
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
        args.amp,
        "--ranks",
        RANKS,
        *MODES[mode],
    ]
    trainer = Trainer(resolve(parse_config(flags)), RunDir(checkpoint.parent / f"{method}-{mode}"), data)
    trainer.student.train()
    trainer.distiller.train()
    return trainer


def worker(args: argparse.Namespace, device: torch.device) -> None:
    """One of the side-by-side processes: "ready" after its warm-up, then for each "go" from the
    parent its timed steps, until the parent closes its input."""
    data = synthetic_data(args.batch_size * args.epoch_batches, device)
    trainer = build_trainer(args, args.grid_method, args.grid_mode, data, args.worker)
    batches = our_batches(data, args.batch_size, args.seed)
    training_steps(trainer, batches, args.warmup_steps)()
    synchronize(device)
    print("ready", flush=True)
    while sys.stdin.readline() == "go\n":
        start = time.monotonic()
        training_steps(trainer, batches, args.steps)()
        synchronize(device)
        print(json.dumps({"start": start, "end": time.monotonic(), "images": args.steps * args.batch_size}), flush=True)


def worker_command(args: argparse.Namespace, checkpoint: Path) -> list[str]:
    settings = [
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        "--teacher",
        args.teacher,
        "--student",
        args.student,
        "--batch_size",
        str(args.batch_size),
        "--epoch_batches",
        str(args.epoch_batches),
        "--steps",
        str(args.steps),
        "--warmup_steps",
        str(args.warmup_steps),
        "--grid_method",
        args.grid_method,
        "--grid_mode",
        args.grid_mode,
        "--amp",
        args.amp,
    ]
    settings += ["--threads", str(args.threads)] if args.threads else []
    return [sys.executable, str(Path(__file__).resolve()), "--worker", str(checkpoint), *settings]


class Workers:
    """Side-by-side worker processes, started once (each builds, warms up and, compiled, compiles
    once); ``time(k)`` runs the first ``k`` of them together."""

    def __init__(self, args: argparse.Namespace, count: int, checkpoint: Path, environment: dict[str, str]) -> None:
        self.logs = [tempfile.TemporaryFile(mode="w+") for _ in range(count)]
        self.processes = [
            subprocess.Popen(
                worker_command(args, checkpoint),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=environment,
            )
            for log in self.logs
        ]

    def __enter__(self) -> Workers:
        try:
            for index, process in enumerate(self.processes):
                self.expect(index, process.stdout.readline() == "ready\n")
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def time(self, count: int) -> dict[str, Any]:
        """All the images of the first ``count`` workers over the span of their timed steps."""
        for process in self.processes[:count]:
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for index, process in enumerate(self.processes[:count]):
            line = process.stdout.readline()
            self.expect(index, line.startswith("{"))
            results.append(json.loads(line))
        span = max(result["end"] for result in results) - min(result["start"] for result in results)
        return {
            "processes": count,
            "images_per_s": sum(result["images"] for result in results) / span,
            "process_images_per_s": median(
                [result["images"] / (result["end"] - result["start"]) for result in results]
            ),
        }

    def expect(self, index: int, condition: bool) -> None:
        """A worker that did not answer as agreed ends the benchmark with the end of its stderr."""
        if not condition:
            process, log = self.processes[index], self.logs[index]
            process.kill()
            process.wait()
            log.seek(0)
            raise SystemExit(f"a worker process failed (exit status {process.returncode}):\n{log.read()[-3000:]}")

    def __exit__(self, *exc_info: object) -> None:
        """Close their input (they finish), or kill them after a failure."""
        for process in self.processes:
            if exc_info[0] is not None:
                process.kill()
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        for process, log in zip(self.processes, self.logs):
            process.wait(timeout=60)
            log.close()


@contextlib.contextmanager
def mps_daemon(folder: Path) -> Iterator[dict[str, str]]:
    """A CUDA MPS control daemon of our own (its pipe and log folders under ``folder``); the
    environment under which processes become its clients. The daemon quits on leaving."""
    environment = {
        **os.environ,
        "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(folder / "log"),
    }
    for name in ("pipe", "log"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([MPS_CONTROL, "-d"], env=environment, check=True, timeout=60, capture_output=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise SystemExit(f"{MPS_CONTROL} -d failed ({error}); rerun with --no-mps") from None
    try:
        yield environment
    finally:
        subprocess.run([MPS_CONTROL], input="quit\n", env=environment, text=True, timeout=60, check=False)


def mps_choices(args: argparse.Namespace, device: torch.device) -> list[Optional[bool]]:
    """Without and with MPS where it exists and was not turned off; None: not applicable (the CPU)."""
    if device.type != "cuda":
        return [None]
    return [False, True] if args.mps and shutil.which(MPS_CONTROL) else [False]


def measure_grid(
    args: argparse.Namespace, device: torch.device, checkpoint: Path, folder: Path
) -> list[dict[str, Any]]:
    rows = []
    counts = sorted(set(args.processes))
    for mps in mps_choices(args, device):
        with (
            mps_daemon(folder / "mps") if mps else contextlib.nullcontext(dict(os.environ)) as environment,
            Workers(args, counts[-1], checkpoint, environment) as workers,
        ):
            rows += [{**workers.time(count), "mps": {None: "n/a", False: "off", True: "on"}[mps]} for count in counts]
    for row in rows:
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def measure_steps(args: argparse.Namespace, device: torch.device, checkpoint: Path) -> list[dict[str, Any]]:
    """Each method's step in each mode, timed in interleaved rounds; a CUDA-only mode is n/a elsewhere."""
    data = synthetic_data(args.batch_size * args.epoch_batches, device)
    modes = [mode for mode in args.modes if device.type == "cuda" or mode not in CUDA_ONLY_MODES]
    rows = []
    for method in args.methods:
        torch._dynamo.reset()  # each method's graphs alone in dynamo's caches (their size is limited)
        candidates = {
            mode: training_steps(
                build_trainer(args, method, mode, data, checkpoint),
                our_batches(data, args.batch_size, args.seed),
                args.sample_steps,
            )
            for mode in modes
        }
        samples = interleaved(candidates, device, args.repeats)
        row: dict[str, Any] = {"method": method}
        for mode in args.modes:
            row[f"{mode}_ms"] = 1e3 * median(samples[mode]) / args.sample_steps if mode in samples else "n/a"
            if mode != "eager" and "eager" in args.modes:
                row[f"{mode}_speedup"] = paired_ratio(samples["eager"], samples[mode]) if mode in samples else "n/a"
        rows.append(row)
    return rows


def headline(grid: list[dict[str, Any]], steps: list[dict[str, Any]], device: torch.device) -> str:
    """The most processes' ratio to one (with and without MPS where both ran), and the range of
    each non-eager mode's speed-up over the methods."""
    largest = [row for row in grid if row["processes"] == grid[-1]["processes"]]
    ratios = " and ".join(
        f"{row['ratio']:.2f}x" + ("" if row["mps"] == "n/a" else f" (MPS {row['mps']})") for row in largest
    )
    text = f"{largest[0]['processes']} processes side by side: {ratios} the images/s of one on {device.type}"
    for mode in ("compiled", "cudagraphs"):
        speedups = [row[f"{mode}_speedup"] for row in steps if isinstance(row.get(f"{mode}_speedup"), float)]
        if speedups:
            text += f"; {mode} step {min(speedups):.2f}-{max(speedups):.2f}x eager"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_flags(parser)
    add_pair_flags(parser, DEFAULTS)
    parser.add_argument("--processes", type=int, nargs="+", help="numbers of processes side by side (default 1 2 4 8)")
    parser.add_argument(
        "--grid_method",
        default="tucker",
        choices=METHODS,
        help="the method the side-by-side processes train (default: %(default)s)",
    )
    parser.add_argument(
        "--grid_mode", default="eager", choices=list(MODES), help="how they run their steps (default: %(default)s)"
    )
    parser.add_argument("--steps", type=int, help="timed steps per process (default 300)")
    parser.add_argument("--warmup_steps", type=int, help="untimed steps per process first (default 20)")
    parser.add_argument("--epoch_batches", type=int, help="synthetic training set size, in batches (default 50)")
    parser.add_argument(
        "--mps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"on a GPU, also measure under CUDA MPS when {MPS_CONTROL} exists (default: on)",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods whose step is timed"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES), help="eager, compiled, CUDA graphs (GPU only)"
    )
    parser.add_argument(
        "--sample_steps", type=int, help="consecutive steps per timed sample of the step table (default 10)"
    )
    parser.add_argument(
        "--amp", default="auto", choices=("auto", "bf16", "off"), help="--amp of every trainer (default: %(default)s)"
    )
    parser.add_argument(
        "--worker", type=Path, help=argparse.SUPPRESS
    )  # a side-by-side process; its value: the teacher file
    args = parser.parse_args()
    device = setup(args, DEFAULTS, QUICK)
    args.device = str(device)
    if min(args.processes + [args.steps, args.sample_steps, args.epoch_batches]) < 1 or args.warmup_steps < 0:
        raise SystemExit(
            "--processes, --steps, --sample_steps and --epoch_batches must be positive, --warmup_steps not negative"
        )
    if args.worker:
        worker(args, device)
        return

    with LoadMonitor() as load, tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "teacher.pth"
        save_teacher(args.teacher, synthetic_data(args.batch_size * args.epoch_batches, device), checkpoint)
        grid_rows = measure_grid(args, device, checkpoint, Path(folder))
        step_rows = measure_steps(args, device, checkpoint)
    settings = {
        name: getattr(args, name)
        for name in (
            "teacher",
            "student",
            "batch_size",
            "processes",
            "grid_method",
            "grid_mode",
            "steps",
            "warmup_steps",
            "epoch_batches",
            "mps",
            "methods",
            "modes",
            "sample_steps",
            "amp",
            "repeats",
        )
    }
    tables = {
        f"{args.teacher} -> {args.student} ({args.grid_method}, {args.grid_mode}), batch {args.batch_size}, "
        f"{device.type}: "
        f"processes side by side, {args.steps} timed steps each": (grid_rows, GRID_COLUMNS),
        f"One step per method, {args.teacher} -> {args.student}, batch {args.batch_size}, {device.type}: median of "
        f"{args.repeats} samples of {args.sample_steps} steps": (step_rows, STEP_COLUMNS),
    }
    finish(args, device, tables, settings, load, headline(grid_rows, step_rows, device))


if __name__ == "__main__":
    main()
