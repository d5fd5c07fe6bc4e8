"""What the two benchmarks share: flags, device set-up, interleaved timing, the machine record,
the table, the JSON file and the closing headline.

Timing is interleaved: every round runs each candidate once, in turn, so that a burst of load from
another process slows ours and the reference alike instead of whichever happened to be running.
Every other round runs them in reverse order, so that no candidate always finds the caches warmed
by the same neighbour (worth 10-20% on millisecond operations). Times are medians over rounds, and
a ratio is the median of the per-round ratios (each round pairs the candidates, so slow drifts of
the load cancel). The device is synchronised before a clock is read, because CUDA kernels run
asynchronously.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python bench/bench_*.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from toolbox.config.choices import MODELS  # noqa: E402
from toolbox.data_loader import CIFAR_MEAN_STD, IMAGE_SIZE, Dataset  # noqa: E402
from toolbox.models import build_model  # noqa: E402
from toolbox.utils import environment, select_device  # noqa: E402

Samples = list[float]
NUM_CLASSES = 100  # the synthetic data are CIFAR-100-shaped


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every benchmark takes."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (smoke test)")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the tables, settings, machine record and headline here as JSON",
    )
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA when present, else the CPU), 'cpu', 'cuda', 'cuda:1'"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds per measurement (default: 7, or 2 with --quick)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the synthetic data and the models")


def add_pair_flags(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """--teacher, --student and --batch_size, left unset (None) for ``setup`` to fill in."""
    parser.add_argument("--teacher", choices=list(MODELS), help=f"teacher architecture (default {defaults['teacher']})")
    parser.add_argument("--student", choices=list(MODELS), help=f"student architecture (default {defaults['student']})")
    parser.add_argument("--batch_size", type=int, help=f"training batch size (default {defaults['batch_size']})")


def setup(
    args: argparse.Namespace, defaults: Optional[Mapping[str, Any]] = None, quick: Optional[Mapping[str, Any]] = None
) -> torch.device:
    """Device, threads and seed from the common flags; the size flags left unset take their values
    from ``quick`` (with --quick) or ``defaults``, and ``args.repeats`` its own."""
    for name, value in ((quick if args.quick else defaults) or {}).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return select_device(args.device)


def synthetic_data(size: int, device: torch.device, test_size: int = 0) -> Dataset:
    """``size`` random uint8 CIFAR-shaped training images (and ``test_size`` test images) with
    CIFAR-100's statistics, on ``device`` as training keeps them."""
    images = torch.randint(0, 256, (size + test_size, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (size + test_size,), device=device)
    mean, std = ((torch.tensor(values) * 255).view(1, 3, 1, 1).to(device) for values in CIFAR_MEAN_STD["cifar100"])
    return Dataset(images[:size], labels[:size], images[size:], labels[size:], mean, std, NUM_CLASSES)


def save_teacher(name: str, data: Dataset, path: Path) -> None:
    """A random teacher whose BatchNorm running statistics are the exact averages over a few
    batches (momentum None): without them a deep random ResNet's maps grow by orders of magnitude."""
    teacher = build_model(name, NUM_CLASSES).to(data.train_images.device)
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    teacher.train()
    with torch.no_grad():
        for start in range(0, min(len(data.train_labels), 512), 128):
            teacher(data.normalize(data.train_images[start : start + 128]))
    torch.save({"weights": teacher.state_dict()}, path)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a clock read after this covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: Mapping[str, Callable[[], Any]], device: torch.device, rounds: int, warmup: int = 1
) -> dict[str, Samples]:
    """Seconds per call of each candidate over ``rounds`` rounds, after ``warmup`` untimed ones
    (first calls pay for allocations, lazy imports and library initialisation)."""
    samples: dict[str, Samples] = {name: [] for name in candidates}
    order = list(candidates.items())
    for round_index in range(warmup + rounds):
        for name, candidate in order if round_index % 2 == 0 else reversed(order):
            synchronize(device)
            start = time.perf_counter()
            candidate()
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def median(samples: Samples) -> float:
    return statistics.median(samples)


def paired_ratio(numerator: Samples, denominator: Samples) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


class LoadMonitor:
    """How busy the machine was with other work while a benchmark ran: the load average at both
    ends, and the share of all cores' time used by other processes (from /proc/stat, minus this
    process and its finished children). Times measured under such load are noted, not hidden."""

    def __enter__(self) -> LoadMonitor:
        self.start = self._snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end = self._snapshot()

    @staticmethod
    def _snapshot() -> dict[str, Optional[float]]:
        own = sum(
            getattr(resource.getrusage(who), field)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for field in ("ru_utime", "ru_stime")
        )
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy: Optional[float] = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = None
        return {"wall": time.monotonic(), "own": own, "busy": busy, "load": os.getloadavg()[0]}

    def record(self) -> dict[str, Optional[float]]:
        wall = self.end["wall"] - self.start["wall"]
        other = None
        if self.start["busy"] is not None and self.end["busy"] is not None and wall > 0:
            busy = self.end["busy"] - self.start["busy"]
            own = self.end["own"] - self.start["own"]
            other = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))
        return {
            "wall_s": round(wall, 1),
            "load_average_start": self.start["load"],
            "load_average_end": self.end["load"],
            "other_processes_cpu_share": None if other is None else round(other, 3),
        }


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform`` gives only the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import torchvision

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE matters on a shared CPU
        "device": str(device),
        "python": platform.python_version(),
        "torchvision": torchvision.__version__,
        **environment(),
    }


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, and how a value is printed."""

    key: str
    header: str
    fmt: str = "{}"

    def cell(self, row: Mapping[str, Any]) -> str:
        """The formatted value; "-" where the row has none, and a text (such as "n/a") as it is."""
        value = row.get(self.key)
        return "-" if value is None else value if isinstance(value, str) else self.fmt.format(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table (readable in a terminal, pasteable into RESULTS.md)."""
    cells = [[c.header for c in columns]] + [[c.cell(row) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(text.rjust(width) for text, width in zip(line, widths)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 1) + ":" for width in widths) + "|")
    return "\n".join(lines)


def finish(
    args: argparse.Namespace,
    device: torch.device,
    tables: Mapping[str, tuple[Sequence[Mapping[str, Any]], Sequence[Column]]],
    settings: Mapping[str, Any],
    load: LoadMonitor,
    headline: str,
) -> None:
    """Print every table and the machine record, write the JSON file if asked, and end with the
    headline on one line (the last line of the output, for scripts and the smoke test)."""
    record = {"machine": machine(device), "settings": dict(settings), "load": load.record()}
    for title, (rows, columns) in tables.items():
        print(f"\n{title}\n\n{format_table(rows, columns)}")
    print(f"\nmachine: {json.dumps(record['machine'])}")
    print(f"load while running: {json.dumps(record['load'])}")
    if args.json:
        payload = {**record, "tables": {title: list(rows) for title, (rows, _) in tables.items()}, "headline": headline}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"headline: {headline}", flush=True)
