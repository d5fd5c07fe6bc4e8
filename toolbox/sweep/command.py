"""runner.py's command line: its flags (with their TD_* environment variables), the grid they describe,
and the checks made before anything is submitted; ``runner.py`` maps what they raise to exit statuses.

Longer than the project's other modules: most of it is ``build_parser``, one flag after another with
its help, which is runner.py's documentation (``--help``) and reads best in one place.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

from toolbox.cli import OneLineParser
from toolbox.config import Config
from toolbox.config.choices import RECOMP_TARGETS, parse_ranks
from toolbox.config.naming import validate_experiment_name
from toolbox.data_loader import prepare_dataset
from toolbox.errors import UsageError
from toolbox.methods import METHODS
from toolbox.rundir import read_regular_text
from toolbox.sweep import (
    Axes,
    JobSettings,
    parse_axis,
)
from toolbox.sweep.file import read_sweep_file
from toolbox.sweep.local import LocalScheduler, local_gpus
from toolbox.sweep.pbs import PbsScheduler
from toolbox.sweep.scheduler import Resources, Scheduler
from toolbox.sweep.slurm import SlurmScheduler
from toolbox.sweep.studies import BENCHMARK, BENCHMARK_RUNS, BENCHMARKS, IMAGENET_BENCHMARK, STUDY, STUDY_RUNS
from toolbox.utils import atomic_write_json

DISTILLATIONS = [name for name in METHODS if name != "none"]
OWN_FLAGS = {
    "distillation": "--distillations",
    "ranks": "--ranks_list",
    "recomp_target": "--recomp_targets",
    "seed": "--runs",
    "experiment_name": "--study",
    "dataset": "--dataset",
    "teacher": "--teacher",
    "student": "--student",
    "epochs": "--epochs",
    "batch_size": "--batch_size",
    "experiments_dir": "--experiments_dir",
    "config": "--config",
}
"""Training flags runner.py sets for every run, and its own flag that sets each (or --grid)."""
T = TypeVar("T")
MAX_SIGNAL_SECONDS = 65535  # sbatch refuses a --signal time above it


# ---------------------------------------------------------------- flags


def _time_limit(text: str) -> str:
    if text and not re.fullmatch(r"(\d+-)?\d{1,3}:[0-5]\d:[0-5]\d", text):
        raise argparse.ArgumentTypeError(f"must be [D-]HH:MM:SS, e.g. 12:00:00 or 1-00:00:00; got {text!r}")
    return text


def _memory(text: str) -> str:
    if text and not re.fullmatch(r"[1-9]\d*[KMGT]", text):
        raise argparse.ArgumentTypeError(f"must be a whole number with K, M, G or T, e.g. 16G; got {text!r}")
    return text


def _count(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise argparse.ArgumentTypeError(f"must be a whole number (0 or more); got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more; got {text!r}")
    return int(text)


def _signal_seconds(text: str) -> int:
    if _count(text) > MAX_SIGNAL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_SIGNAL_SECONDS} (sbatch --signal's limit); got {text!r}"
        )
    return int(text)


def _switch(text: str) -> bool:
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false; got {text!r}")
    return text == "true"


SCHEDULERS = ("slurm", "pbs", "local")


def _scheduler(text: str) -> str:
    if text not in SCHEDULERS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(SCHEDULERS)}; got {text!r}")
    return text


def _from_env(variable: str, fallback: str, convert: Callable[[str], T]) -> T:
    """A flag's default from its environment variable, checked at once: argparse leaves defaults
    unchecked against choices (a misspelt TD_SCHEDULER would run the grid here), and a bad value
    should name the variable, which the user may have forgotten was set."""
    try:
        return convert(os.environ.get(variable, fallback))
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"{variable} {error}") from None


def _one_line(text: str) -> str:
    if any(char in text for char in "\n\r\0"):
        raise argparse.ArgumentTypeError(f"must be one line; got {text!r}")
    return text


def _axis(text: str) -> tuple[str, list[str]]:
    try:
        return parse_axis(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--grid ")) from None


def _ranks(text: str) -> str:
    try:
        parse_ranks(text, "each value")
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser(description: str = "") -> argparse.ArgumentParser:
    env = os.environ.get
    parser = OneLineParser(
        prog="runner.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags after '--' go to every run's tucker_distillation.py, e.g. -- --max_batches 3 --lr 0.05.",
    )
    grid = parser.add_argument_group("the grid")
    grid.add_argument(
        "--benchmark",
        nargs="?",
        const="cifar100",
        choices=tuple(BENCHMARKS),
        help="a benchmark's grid instead of the study. cifar100 (the default): the CRD/DKD benchmark's seven "
        f"same-architecture pairs ({', '.join(BENCHMARK['pair'])}) x {{{', '.join(BENCHMARK['distillation'])}}} "
        f"(tucker_recomp with every target; Tucker ranks {BENCHMARK['ranks'][0]}) x --runs seeds, --recipe crd, "
        "less the pairs a method cannot train (fsp on wrn_40_2-wrn_40_1, N/A in RepDistiller's table); "
        "teachers are trained first, or read from --teacher_dir. imagenet: the pairs "
        f"{', '.join(IMAGENET_BENCHMARK['pair'])} x {{{', '.join(IMAGENET_BENCHMARK['distillation'])}}} x "
        "--runs seeds (default 1, as the field reports ImageNet), --recipe imagenet, --dataset imagenet, "
        "distilled from torchvision's pretrained teachers in --teacher_dir (required). digits: "
        "./util.sh study's grid, README's 'What to expect' (a ResNet20 teacher, ResNetBaby students, 8 "
        "epochs on digits, both --tucker_core). The flags below replace its axes",
    )
    grid.add_argument(
        "--distillations",
        nargs="+",
        choices=["none", *DISTILLATIONS],
        metavar="METHOD",
        help=f"methods to compare, from {', '.join(DISTILLATIONS)}, or none, the student without a teacher "
        f"(default: {' '.join(STUDY['distillation'])})",
    )
    grid.add_argument(
        "--ranks_list",
        nargs="+",
        type=_ranks,
        metavar="RANKS",
        help="Tucker ranks, one configuration each, for tucker and tucker_recomp "
        f"(default: {' '.join(STUDY['ranks'])})",
    )
    grid.add_argument(
        "--recomp_targets",
        nargs="+",
        choices=RECOMP_TARGETS,
        metavar="TARGET",
        help=f"tucker_recomp targets (default: all of {' '.join(RECOMP_TARGETS)})",
    )
    grid.add_argument(
        "--runs",
        type=_positive,
        help=f"runs per configuration; run i has seed i (default: {STUDY_RUNS}; "
        f"{', '.join(f'{runs} for --benchmark {name}' for name, runs in BENCHMARK_RUNS.items())})",
    )
    same = "as for tucker_distillation.py (default: %(default)s)"
    grid.add_argument("--dataset", help="as for tucker_distillation.py (default: cifar100)")
    grid.add_argument("--teacher", help="as for tucker_distillation.py (default: ResNet112)")
    grid.add_argument("--student", help="as for tucker_distillation.py (default: ResNet56)")
    grid.add_argument(
        "--epochs", type=_positive, help="as for tucker_distillation.py (default: the recipe's, 150 for the study)"
    )
    grid.add_argument(
        "--batch_size", type=_positive, help="as for tucker_distillation.py (default: the recipe's, 512 for the study)"
    )
    grid.add_argument("--experiments_dir", default="experiments", help=same)
    grid.add_argument(
        "--teacher_dir",
        type=Path,
        metavar="DIR",
        help="distil from the teachers in DIR instead of training them: DIR/<arch>_vanilla/ckpt_epoch_240.pth "
        "(RepDistiller's and mdistiller's downloads) or DIR/<arch>.pth (torchvision's resnet34-b627a593.pth, "
        "renamed or linked as DIR/resnet34.pth), for every teacher the grid needs",
    )
    grid.add_argument(
        "--grid",
        action="append",
        default=[],
        type=_axis,
        metavar="FLAG=V1,V2",
        help="an axis of the grid over any training flag that defines a run, crossed with the others; "
        "repeatable, e.g. --grid beta=50,125,250 --grid lr=0.1,0.05; ':' separates values that contain "
        "commas (--grid ranks=BATCH_SIZE,32,8,8:BATCH_SIZE,8,8,8); it replaces the flag above that "
        "sets the same training flag; flags a method does not read are dropped from its runs",
    )
    grid.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="training flags for every run from a YAML (or .json) file, as tucker_distillation.py --config "
        "reads them, and a grid: section of axes beside --grid (flag: [values], e.g. 'beta: [50, 125]'); "
        "a flag that defines a run is an axis of one value; the flags here, --grid and those after '--' "
        "override the file's (docs/training.md, Flags from a file)",
    )
    grid.add_argument(
        "--study",
        default="",
        help="sub-folder of --experiments_dir for the students of this grid, e.g. to "
        "keep a variant with other flags after '--' apart (teachers are shared); runner.py records the grid it "
        "submits there (grid.json), so that later --study NAME alone names it (with --status too); flags given "
        "then replace the recorded ones",
    )

    jobs = parser.add_argument_group("the jobs (each flag's default comes from the environment variable named)")
    jobs.add_argument(
        "--scheduler",
        default=_from_env("TD_SCHEDULER", "slurm", _scheduler),
        choices=SCHEDULERS,
        help="TD_SCHEDULER; local runs the grid on this machine (default: %(default)s)",
    )
    jobs.add_argument(
        "--partition", default=env("TD_PARTITION", ""), help="TD_PARTITION; the PBS queue (default: the cluster's)"
    )
    jobs.add_argument(
        "--account", default=env("TD_ACCOUNT", ""), help="TD_ACCOUNT; the PBS project (default: the cluster's)"
    )
    jobs.add_argument(
        "--time",
        type=_time_limit,
        default=_from_env("TD_TIME", "", _time_limit),
        help="TD_TIME; [D-]HH:MM:SS per job (default: the partition's)",
    )
    jobs.add_argument(
        "--gpus",
        type=_count,
        default=_from_env("TD_GPUS", "1", _count),
        help="TD_GPUS; 0 asks for none (default: %(default)s)",
    )
    jobs.add_argument(
        "--cpus",
        type=_count,
        default=_from_env("TD_CPUS", "4", _count),
        help="TD_CPUS; per training process; 0 asks for none: the scheduler's default (SLURM's: one per "
        "task, which the runs of a job then share) (default: %(default)s)",
    )
    jobs.add_argument(
        "--mem",
        type=_memory,
        default=_from_env("TD_MEM", "16G", _memory),
        help="TD_MEM; per training process (default: %(default)s)",
    )
    jobs.add_argument(
        "--nodes",
        type=_positive,
        default=_from_env("TD_NODES", "1", _positive),
        help="TD_NODES; nodes per run: with --gpus_per_node, each run trains data-parallel over "
        "nodes x gpus_per_node processes (SLURM only; docs/many-gpus.md) (default: %(default)s)",
    )
    jobs.add_argument(
        "--gpus_per_node",
        type=_positive,
        default=_from_env("TD_GPUS_PER_NODE", "1", _positive),
        help="TD_GPUS_PER_NODE; training processes per node, one GPU each (CPU processes talking through "
        "gloo with --gpus 0); --batch_size stays the global batch (default: %(default)s)",
    )
    jobs.add_argument(
        "--runs_per_gpu",
        type=_positive,
        default=_from_env("TD_RUNS_PER_GPU", "1", _positive),
        help="TD_RUNS_PER_GPU; runs trained side by side in one job on one GPU, each in its own folder, "
        "with --cpus and --mem each (students of one teacher share a job; teachers get one each) "
        "(default: %(default)s)",
    )
    jobs.add_argument(
        "--mps",
        action=argparse.BooleanOptionalAction,
        default=_from_env("TD_MPS", "false", _switch),
        help="TD_MPS (true/false); the runs of a --runs_per_gpu job share their GPU through CUDA MPS, a "
        "daemon of the job's own, where the node has nvidia-cuda-mps-control (default: off)",
    )
    jobs.add_argument(
        "--signal_seconds",
        type=_signal_seconds,
        default=_from_env("TD_SIGNAL_SECONDS", "300", _signal_seconds),
        help="TD_SIGNAL_SECONDS; SLURM warns a job this long before its time limit: it stops and "
        "requeues itself, to resume from the step where it stopped; 0: no warning; at most 65535 "
        "(default: %(default)s)",
    )
    jobs.add_argument(
        "--env_setup",
        type=_one_line,
        default=_from_env("TD_ENV_SETUP", "", _one_line),
        help="TD_ENV_SETUP; a shell line each job runs first, e.g. 'module load cuda; source venv/bin/activate' "
        "(default: none, and jobs use this Python interpreter)",
    )
    jobs.add_argument(
        "--python",
        default=env("TD_PYTHON", ""),
        help="TD_PYTHON; the interpreter jobs run (default: this one, or 'python' after --env_setup)",
    )
    jobs.add_argument(
        "--parallel",
        type=_positive,
        default=1,
        help="local: jobs at a time, each of --runs_per_gpu runs; "
        "they share this machine's cores (default: %(default)s)",
    )

    actions = parser.add_argument_group("what to do (default: submit what is missing)")
    actions.add_argument(
        "--max_queued",
        type=_count,
        default=0,
        help="stop submitting once you have this many jobs in the queue (0: no limit)",
    )
    actions.add_argument(
        "--prepare_data",
        action="store_true",
        help="download and check the grid's data sets into their "
        "--data_dir, then exit (runner.py also does it before submitting; run this where there is internet)",
    )
    actions.add_argument(
        "--dry_run", action="store_true", help="print the grid as a table and what would be submitted; submit nothing"
    )
    actions.add_argument("--scripts", action="store_true", help="--dry_run: print each job's script too")
    only = actions.add_mutually_exclusive_group()
    only.add_argument(
        "--status",
        action="store_true",
        help="print the grid as a table: finished, running, pending, failed, not started",
    )
    only.add_argument(
        "--cancel", action="store_true", help="cancel the live jobs recorded in any job.json under --experiments_dir"
    )
    only.add_argument(
        "--clean", action="store_true", help="delete the folders of unfinished runs without a live job, after asking"
    )
    actions.add_argument("--yes", action="store_true", help="--clean: do not ask")
    return parser


GRID_RECORD = "grid.json"
"""A study's grid as runner.py last submitted it (``--experiments_dir``/STUDY/grid.json): the command's
flags, which ``--study STUDY`` reads back, so that ``--status`` and a later submission need no more."""
ACTIONS = ("--status", "--cancel", "--clean", "--yes", "--dry_run", "--scripts", "--prepare_data")
"""runner.py's flags that say what to do with a grid, not which grid: never recorded."""


def record_grid(folder: Path, argv: list[str]) -> None:
    """Record the grid of ``argv`` for ``--study`` (folder: the study's), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / GRID_RECORD, {"argv": [token for token in argv if token not in ACTIONS]})


def recorded_grid(folder: Path) -> Optional[list[str]]:
    """The flags ``record_grid`` wrote in ``folder`` (None: none); a damaged record is one line."""
    path = folder / GRID_RECORD
    if not path.exists():
        return None
    try:
        argv = json.loads(read_regular_text(path)).get("argv")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        argv = None
    if not isinstance(argv, list) or not all(isinstance(token, str) for token in argv):
        raise UsageError(f"{path} is not a grid runner.py recorded; it was left as it is: move it away, then rerun")
    return argv


def with_recorded_grid(argv: list[str], recorded: list[str]) -> list[str]:
    """The recorded command with ``argv``'s flags after its own, so that a flag given now wins
    (a --grid axis given now replaces the recorded one of that flag); the training flags likewise."""

    def split(tokens: list[str]) -> tuple[list[str], list[str]]:
        cut = tokens.index("--") if "--" in tokens else len(tokens)
        return tokens[:cut], tokens[cut + 1 :]

    def axes(tokens: list[str]) -> list[tuple[int, str]]:
        """(position, flag name) of each --grid axis, as ``--grid NAME=...`` or ``--grid=NAME=...``."""
        found = [(i, tokens[i + 1]) for i in range(len(tokens) - 1) if tokens[i] == "--grid"]
        found += [(i, token.removeprefix("--grid=")) for i, token in enumerate(tokens) if token.startswith("--grid=")]
        return [(i, value.split("=")[0]) for i, value in found]

    (ours, our_training), (theirs, their_training) = split(argv), split(recorded)
    given = {name for _, name in axes(ours)}
    dropped: set[int] = set()
    for index, name in axes(theirs):
        if name in given:
            dropped |= {index, index + 1} if theirs[index] == "--grid" else {index}
    kept = [token for index, token in enumerate(theirs) if index not in dropped]
    return [*kept, *ours, "--", *their_training, *our_training]


def parse_args(argv: list[str], description: str = "") -> tuple[argparse.Namespace, list[str]]:
    """runner.py's flags, and the training flags after ``--`` (refusing those it sets itself); with
    ``--study`` of a recorded grid, that grid's flags under the ones given."""
    args, extra = parse_command(argv, description)
    recorded = recorded_grid(Path(args.experiments_dir) / args.study) if args.study and args.experiments_dir else None
    if recorded is not None:
        args, extra = parse_command(with_recorded_grid(argv, recorded), description)
    return args, extra


def parse_command(argv: list[str], description: str = "") -> tuple[argparse.Namespace, list[str]]:
    """``argv`` as runner.py's flags and the training flags after ``--``."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser(description).parse_args(argv[:cut])
    extra = argv[cut + 1 :]
    for token in extra:
        name = token[2:].split("=")[0] if token.startswith("--") else ""
        own = next((flag for flag in OWN_FLAGS if name and flag.startswith(name)), None)  # argparse takes prefixes
        if own:
            raise UsageError(
                f"{token.split('=')[0]} cannot follow '--': runner.py sets --{own} for every run "
                f"from its own {OWN_FLAGS[own]}"
            )
    names = [name for name, _ in args.grid]
    twice = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if twice is not None:
        raise UsageError(f"--grid {twice}=... is given twice; give all its values in one, e.g. --grid {twice}=V1,V2")
    for name in names:
        if any(token == f"--{name}" or token.startswith(f"--{name}=") for token in extra):
            raise UsageError(f"--{name} is both a --grid axis and a flag after '--'; give it once")
    if args.study:
        validate_experiment_name(args.study, "--study")
    args.file_axes, file_flags = read_sweep_file(args.config, extra, args.runs is not None) if args.config else ({}, [])
    return args, [*file_flags, *extra]


def grid_axes(args: argparse.Namespace) -> Axes:
    """The grid's axes: the study's or the benchmark's, the --config file's, the values of the flags
    above that were given, then each --grid axis (replacing the one for the same flag), seeds last."""
    axes: Axes = {**(BENCHMARKS[args.benchmark] if args.benchmark else STUDY), **args.file_axes}
    given = {
        "dataset": args.dataset,
        "teacher": args.teacher,
        "student": args.student,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "distillation": args.distillations,
        "ranks": args.ranks_list,
        "recomp_target": args.recomp_targets,
    }
    axes.update(
        {
            name: [str(v) for v in value] if isinstance(value, list) else [str(value)]
            for name, value in given.items()
            if value is not None
        }
    )
    axes.update(dict(args.grid))
    if "pair" in axes and ({"teacher", "student"} & axes.keys()):
        raise UsageError(
            "--teacher/--student and the pairs (of --benchmark or --grid pair=...) both set the teacher and "
            "student; give one of them"
        )
    runs = args.runs or BENCHMARK_RUNS.get(args.benchmark, STUDY_RUNS)
    axes["seed"] = axes.pop("seed", [str(seed) for seed in range(runs)])
    return axes


def check_teachers(args: argparse.Namespace) -> None:
    """The ImageNet benchmark distils from downloaded teachers: training them here would cost more
    than the whole grid, so it is refused without --teacher_dir rather than planned."""
    if args.benchmark == "imagenet" and args.teacher_dir is None:
        teachers = sorted({pair.partition("-")[0] for pair in IMAGENET_BENCHMARK["pair"]})
        raise UsageError(
            f"--benchmark imagenet distils from torchvision's pretrained teachers: pass --teacher_dir DIR "
            f"with {' and '.join(f'DIR/{arch}.pth' for arch in teachers)} (docs/imagenet.md)"
        )


def teacher_files(teacher_dir: Optional[Path], runs_axes: Axes) -> dict[str, Path]:
    """--teacher_dir: the checkpoint of every teacher architecture the grid's axes name."""
    if teacher_dir is None:
        return {}
    if not teacher_dir.is_dir():
        raise UsageError(
            f"--teacher_dir {teacher_dir} is not a folder: pass the folder that holds the teachers' "
            "checkpoints (<arch>.pth, or <arch>_vanilla/ckpt_epoch_240.pth)"
        )
    if "pair" in runs_axes:
        archs = {pair.partition("-")[0] for pair in runs_axes["pair"]}
    else:
        archs = set(runs_axes.get("teacher", [Config.teacher]))
    found = {}
    for arch in sorted(archs):
        candidates = [teacher_dir / f"{arch}_vanilla" / "ckpt_epoch_240.pth", teacher_dir / f"{arch}.pth"]
        path = next((candidate for candidate in candidates if candidate.exists()), None)
        if path is None:
            raise UsageError(
                f"--teacher_dir {teacher_dir} has no checkpoint for the teacher {arch}: put it at "
                f"{candidates[0]} or {candidates[1]}"
            )
        if not path.is_file():
            raise UsageError(f"--teacher_dir: {path} is not a regular file; put the teacher {arch}'s checkpoint there")
        found[arch] = path.absolute()
    return found


def prepare_data(runs: list, workdir: Path) -> None:
    """Download (once) and check every data set the grid reads, in the folder its jobs will read:
    a relative --data_dir is relative to where the jobs run."""
    for dataset, data_dir in sorted({(run.config.dataset, run.config.data_dir) for run in runs}):
        path = Path(data_dir)
        prepare_dataset(dataset, path if path.is_absolute() else workdir / path)


def job_settings(args: argparse.Namespace) -> JobSettings:
    resources = Resources(
        args.partition,
        args.account,
        args.time,
        args.gpus,
        args.cpus,
        args.mem,
        args.signal_seconds,
        args.nodes,
        args.gpus_per_node,
        args.runs_per_gpu,
    )
    if args.runs_per_gpu > 1 and resources.ranks > 1:
        raise UsageError(
            f"--runs_per_gpu {args.runs_per_gpu} packs small runs onto one GPU; a run over "
            "--nodes/--gpus_per_node has GPUs of its own: give one of them"
        )
    if args.runs_per_gpu > 1 and args.gpus > 1:
        raise UsageError(
            f"--runs_per_gpu {args.runs_per_gpu} packs runs onto one GPU, which they share; --gpus "
            f"{args.gpus} would give the job GPUs no run uses: pass --gpus 1 (the default), or 0 for CPU runs"
        )
    if resources.ranks > 1 and args.gpus > 1:
        raise UsageError(
            f"--gpus {args.gpus} with --nodes/--gpus_per_node: each process gets one GPU; pass --gpus 1 "
            "(the default), or 0 for CPU processes, and the GPUs per node with --gpus_per_node"
        )
    python = args.python or ("python" if args.env_setup else sys.executable)
    return JobSettings(resources, python, args.env_setup, args.mps)


def check_ranks(runs: list, settings: JobSettings, scheduler: Scheduler) -> None:
    """Several processes per run: refused before anything is submitted where the scheduler cannot
    start them, or where a run's global batch has fewer samples than processes."""
    scheduler.launcher(settings.resources)
    ranks = settings.resources.ranks
    small = next((run for run in runs if run.config.batch_size < ranks), None)
    if small is not None:
        raise UsageError(
            f"--batch_size {small.config.batch_size} of {small.name} is the global batch: with {ranks} "
            "processes (--nodes x --gpus_per_node) it needs at least one sample each; pass a larger "
            "--batch_size or fewer processes"
        )


def make_scheduler(args: argparse.Namespace) -> Scheduler:
    user = os.environ.get("USER") or getpass.getuser()
    if args.scheduler == "slurm":
        return SlurmScheduler(user)
    if args.scheduler == "pbs":
        return PbsScheduler(user)
    return LocalScheduler(args.parallel, local_gpus() if args.gpus else [], args.gpus)


def ask(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("--clean asks before deleting; pass --yes when there is no terminal to answer")
    return input(question).strip().lower() in ("y", "yes")


# ---------------------------------------------------------------- main


def check_folder(path: Path, flag: str) -> None:
    """``path`` is, or can become, a folder: no file stands where it or a folder above it should be,
    and its name is one line (job scripts hold it on one)."""
    if "\n" in str(path) or "\r" in str(path):
        raise UsageError(
            f"{flag} {str(path)!r} holds a line break, which no job script line can hold; pass another {flag}"
        )
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {path} cannot be a folder: {existing} is not a folder; pass another {flag}")
