#!/usr/bin/env python
"""Start-up cost of the main commands: the CPU seconds and wall seconds a command spends before (or
instead of) training, as a user meets them: ``--help``, a bad flag, the no-op rerun of a finished
run, and runner.py's plan and status of a small grid.

    python bench/bench_startup.py [--quick] [--json FILE] [--repeats N]

Each command runs as its own process (the interpreter and the imports included), ``--repeats``
times; the table shows the median CPU time (user + system, of the process and its children) and
wall time. A finished run is trained once first (one epoch of a few batches on digits), in a
temporary folder.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Column, LoadMonitor, add_common_flags, finish, setup

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "--dataset",
    "digits",
    "--distillation",
    "none",
    "--student",
    "ResNetBaby",
    "--epochs",
    "1",
    "--batch_size",
    "64",
    "--max_batches",
    "2",
]
GRID = [
    "--dataset",
    "digits",
    "--teacher",
    "ResNetBaby",
    "--student",
    "ResNetBaby",
    "--epochs",
    "1",
    "--distillations",
    "featuremap",
    "kd",
    "--runs",
    "1",
    "--scheduler",
    "local",
]


def commands(experiments: Path) -> dict[str, list[str]]:
    training, runner = [sys.executable, str(ROOT / "tucker_distillation.py")], [sys.executable, str(ROOT / "runner.py")]
    return {
        "tucker_distillation.py --help": [*training, "--help"],
        "tucker_distillation.py, a bad flag": [*training, "--lr", "-1"],
        "tucker_distillation.py, a finished run": [*training, *RUN, "--experiments_dir", str(experiments)],
        "runner.py --help": [*runner, "--help"],
        "runner.py --dry_run (2 runs)": [*runner, *GRID, "--experiments_dir", str(experiments), "--dry_run"],
        "runner.py --status (2 runs)": [*runner, *GRID, "--experiments_dir", str(experiments), "--status"],
    }


def measure(command: list[str]) -> tuple[float, float]:
    """CPU seconds (user + system of the command's process and its children) and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    args = parser.parse_args()
    device = setup(args)
    with tempfile.TemporaryDirectory() as folder, LoadMonitor() as load:
        experiments = Path(folder)
        subprocess.run(
            [sys.executable, str(ROOT / "tucker_distillation.py"), *RUN, "--experiments_dir", folder],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        rows = []
        for name, command in commands(experiments).items():
            samples = [measure(command) for _ in range(args.repeats)]
            rows.append(
                {
                    "command": name,
                    "cpu_s": statistics.median(cpu for cpu, _ in samples),
                    "wall_s": statistics.median(wall for _, wall in samples),
                }
            )
    columns = [Column("command", "command"), Column("cpu_s", "CPU s", "{:.2f}"), Column("wall_s", "wall s", "{:.2f}")]
    finished = next(row for row in rows if row["command"].endswith("a finished run"))
    headline = f"a finished run's rerun costs {finished['cpu_s']:.2f} s of CPU ({finished['wall_s']:.2f} s wall)"
    finish(
        args, device, {"Start-up cost of the main commands": (rows, columns)}, {"repeats": args.repeats}, load, headline
    )


if __name__ == "__main__":
    main()
