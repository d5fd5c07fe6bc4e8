#!/usr/bin/env python
"""Submit the study's grid of runs to a batch scheduler; run it again later to fill the gaps.

    python runner.py                       # the whole study (17 configurations x 3 runs) on SLURM
    python runner.py --dry_run             # what it would submit, with the rendered job scripts
    python runner.py --dataset digits --teacher ResNetBaby --student ResNetBaby --epochs 2 -- --max_batches 3
    python runner.py --scheduler local --parallel 2      # no cluster: the grid on this machine
    python runner.py --status              # the grid as a table (also: --cancel, --clean)

Every run has its own folder experiments/<name>/, named as tucker_distillation.py names it. A run
is skipped when it has finished (metrics.json) or when its job, recorded in job.json, is queued or
running; every other run is submitted, and resumes from its last.pt if it has one. A student
whose teacher is not trained yet waits for the teacher's job, submitted first when needed.
Cluster settings come from flags or TD_* environment variables (listed by --help).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import getpass
import io
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from toolbox.config import Config, OneLineParser, parse_config
from toolbox.distillation import DISTILLERS, RECOMP_TARGETS
from toolbox.errors import UsageError
from toolbox.naming import validate_experiment_name
from toolbox.rundir import (CONFIG_FILE, CONFLICTING, CORRUPT, FAILED, FINISHED, JOB_FILE, LAST_CHECKPOINT, LOCK_FILE,
                            METRICS_FILE, NOT_STARTED, PENDING, RUNNING, SCRIPT_FILE, TEACHER_SEED, RunDir, RunState,
                            default_teacher_checkpoint, experiment_name, resolve)
from toolbox.scheduler import (LocalScheduler, PbsScheduler, Resources, Scheduler, SchedulerError, SlurmScheduler,
                               render)
from toolbox.tucker import parse_ranks
from toolbox.utils import atomic_write, atomic_write_json

REPO = Path(__file__).resolve().parent
TEMPLATE = REPO / "run.job"
DISTILLATIONS = [name for name in DISTILLERS if name != "none"]
DEFAULT_DISTILLATIONS = ["featuremap", "tucker", "tucker_recomp"]
DEFAULT_RANKS = ["BATCH_SIZE,32,8,8", "BATCH_SIZE,24,8,8", "BATCH_SIZE,16,8,8", "BATCH_SIZE,8,8,8"]
OWN_FLAGS = {
    "distillation": "--distillations", "ranks": "--ranks_list", "recomp_target": "--recomp_targets",
    "seed": "--runs", "experiment_name": "--study", "dataset": "--dataset", "teacher": "--teacher",
    "student": "--student", "epochs": "--epochs", "batch_size": "--batch_size",
    "experiments_dir": "--experiments_dir",
}
"""Training flags runner.py sets for every run, and its own flag that sets each."""


# ---------------------------------------------------------------- flags

def _time_limit(text: str) -> str:
    if text and not re.fullmatch(r"(\d+-)?\d{1,3}:\d\d:\d\d", text):
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
    if _count(text) < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more; got {text!r}")
    return int(text)


def _one_line(text: str) -> str:
    if any(char in text for char in "\n\r\0"):
        raise argparse.ArgumentTypeError(f"must be one line; got {text!r}")
    return text


def _ranks(text: str) -> str:
    try:
        parse_ranks(text, "each value")
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = OneLineParser(prog="runner.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="Flags after '--' go to every run's tucker_distillation.py, e.g. -- --max_batches 3 --lr 0.05.")
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--distillations", nargs="+", default=DEFAULT_DISTILLATIONS, choices=DISTILLATIONS, metavar="METHOD",
                      help=f"methods to compare, from {', '.join(DISTILLATIONS)} (default: {' '.join(DEFAULT_DISTILLATIONS)})")
    grid.add_argument("--ranks_list", nargs="+", default=DEFAULT_RANKS, type=_ranks, metavar="RANKS",
                      help=f"Tucker ranks, one configuration each, for tucker and tucker_recomp (default: {' '.join(DEFAULT_RANKS)})")
    grid.add_argument("--recomp_targets", nargs="+", default=list(RECOMP_TARGETS), choices=RECOMP_TARGETS, metavar="TARGET",
                      help=f"tucker_recomp targets (default: all of {' '.join(RECOMP_TARGETS)})")
    grid.add_argument("--runs", type=_positive, default=3, help="runs per configuration; run i has seed i (default: %(default)s)")
    same = "as for tucker_distillation.py (default: %(default)s)"
    grid.add_argument("--dataset", default="cifar100", help=same)
    grid.add_argument("--teacher", default="ResNet112", help=same)
    grid.add_argument("--student", default="ResNet56", help=same)
    grid.add_argument("--epochs", type=_positive, default=150, help=same)
    grid.add_argument("--batch_size", type=_positive, default=512, help=same)
    grid.add_argument("--experiments_dir", default="experiments", help=same)
    grid.add_argument("--study", default="", help="sub-folder of --experiments_dir for the students of this grid, e.g. to "
                      "keep a variant with other flags after '--' apart (teachers are shared)")

    jobs = parser.add_argument_group("the jobs (each flag's default comes from the environment variable named)")
    jobs.add_argument("--scheduler", default=env("TD_SCHEDULER", "slurm"), choices=("slurm", "pbs", "local"),
                      help="TD_SCHEDULER; local runs the grid on this machine (default: %(default)s)")
    jobs.add_argument("--partition", default=env("TD_PARTITION", ""), help="TD_PARTITION; the PBS queue (default: the cluster's)")
    jobs.add_argument("--account", default=env("TD_ACCOUNT", ""), help="TD_ACCOUNT; the PBS project (default: the cluster's)")
    jobs.add_argument("--time", type=_time_limit, default=env("TD_TIME", ""), help="TD_TIME; [D-]HH:MM:SS per job (default: the partition's)")
    jobs.add_argument("--gpus", type=_count, default=env("TD_GPUS", "1"), help="TD_GPUS; 0 asks for none (default: %(default)s)")
    jobs.add_argument("--cpus", type=_positive, default=env("TD_CPUS", "4"), help="TD_CPUS (default: %(default)s)")
    jobs.add_argument("--mem", type=_memory, default=env("TD_MEM", "16G"), help="TD_MEM (default: %(default)s)")
    jobs.add_argument("--signal_seconds", type=_count, default=env("TD_SIGNAL_SECONDS", "300"),
                      help="TD_SIGNAL_SECONDS; SLURM warns a job this long before its time limit: it stops and "
                      "requeues itself, to resume from its last epoch; 0: no warning (default: %(default)s)")
    jobs.add_argument("--env_setup", type=_one_line, default=env("TD_ENV_SETUP", ""),
                      help="TD_ENV_SETUP; a shell line each job runs first, e.g. 'module load cuda; source venv/bin/activate' "
                      "(default: none, and jobs use this Python interpreter)")
    jobs.add_argument("--python", default=env("TD_PYTHON", ""),
                      help="TD_PYTHON; the interpreter jobs run (default: this one, or 'python' after --env_setup)")
    jobs.add_argument("--parallel", type=_positive, default=1, help="local: runs at a time (default: %(default)s)")

    actions = parser.add_argument_group("what to do (default: submit what is missing)")
    actions.add_argument("--max_queued", type=_count, default=0, help="stop submitting once you have this many jobs in the queue (0: no limit)")
    actions.add_argument("--dry_run", action="store_true", help="print what would be submitted, and the job scripts; submit nothing")
    only = actions.add_mutually_exclusive_group()
    only.add_argument("--status", action="store_true", help="print the grid as a table: finished, running, pending, failed, not started")
    only.add_argument("--cancel", action="store_true", help="cancel the live jobs recorded in any job.json under --experiments_dir")
    only.add_argument("--clean", action="store_true", help="delete the folders of unfinished runs without a live job, after asking")
    actions.add_argument("--yes", action="store_true", help="--clean: do not ask")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """runner.py's flags, and the training flags after ``--`` (refusing those it sets itself)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    extra = argv[cut + 1:]
    for token in extra:
        name = token[2:].split("=")[0] if token.startswith("--") else ""
        own = next((flag for flag in OWN_FLAGS if name and flag.startswith(name)), None)  # argparse takes prefixes
        if own:
            raise UsageError(f"{token.split('=')[0]} cannot follow '--': runner.py sets --{own} for every run "
                             f"from its own {OWN_FLAGS[own]}")
    if args.study:
        validate_experiment_name(args.study, "--study")
    return args, extra


def make_scheduler(args: argparse.Namespace) -> Scheduler:
    user = os.environ.get("USER") or getpass.getuser()
    if args.scheduler == "slurm":
        return SlurmScheduler(user)
    if args.scheduler == "pbs":
        return PbsScheduler(user)
    return LocalScheduler(args.parallel)


# ---------------------------------------------------------------- the grid

@dataclass
class Run:
    """One training job: its folder, its flags, and what it needs first."""

    name: str  # relative to the experiments folder
    path: Path
    flags: list[str]  # for tucker_distillation.py, --experiment_name included
    config: Config  # resolved, as the training will save it
    teacher: Optional[Run] = None  # the run that trains the teacher this one needs
    teacher_checkpoint: Optional[Path] = None


def training_config(flags: list[str]) -> Config:
    """The training script's own parsing of ``flags``, so runner.py accepts exactly what it does."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_config(flags, prog="runner.py")
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines() or ["bad training flags"]
        raise UsageError(lines[-1].removeprefix("runner.py: error: ")) from None


def make_run(flags: list[str], experiments_dir: Path, study: str = "") -> Run:
    """A run named as the training script names it (under ``study``), refused if the name would
    leave the experiments folder."""
    config = training_config(flags)
    name = "/".join(filter(None, [study, experiment_name(config)]))
    validate_experiment_name(name)
    path = experiments_dir / name
    if not path.resolve().is_relative_to(experiments_dir.resolve()):
        raise UsageError(f"run folder {path} leaves --experiments_dir {experiments_dir} (a symbolic link?)")
    config = resolve(dataclasses.replace(config, experiment_name=name))
    return Run(name, path, [*flags, "--experiment_name", name], config)


def variants(args: argparse.Namespace, distillation: str) -> list[list[str]]:
    """The configurations of one method: its flags besides the seed."""
    if distillation == "tucker":
        return [["--ranks", ranks] for ranks in args.ranks_list]
    if distillation == "tucker_recomp":
        return [["--recomp_target", target, "--ranks", ranks] for target in args.recomp_targets for ranks in args.ranks_list]
    return [[]]


def build_grid(args: argparse.Namespace, extra: list[str]) -> list[Run]:
    """The student runs, in submission order; each points to the teacher run it needs."""
    experiments_dir = Path(args.experiments_dir).absolute()
    common = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--batch_size", str(args.batch_size),
              "--experiments_dir", str(experiments_dir), *extra]
    teacher = make_run(["--distillation", "none", "--student", args.teacher, "--seed", str(TEACHER_SEED), *common],
                       experiments_dir)
    runs = []
    for distillation in args.distillations:
        for variant in variants(args, distillation):
            for seed in range(args.runs):
                flags = ["--distillation", distillation, *variant, "--teacher", args.teacher,
                         "--student", args.student, "--seed", str(seed), *common]
                run = make_run(flags, experiments_dir, args.study)
                if DISTILLERS[distillation].needs_teacher:
                    attach_teacher(run, teacher)
                runs.append(run)
    return runs


def attach_teacher(run: Run, teacher: Run) -> None:
    """Point ``run`` at the weights it distils from: the teacher run's, or --teacher_checkpoint."""
    config = run.config
    run.teacher_checkpoint = Path(config.teacher_checkpoint)
    if run.teacher_checkpoint != default_teacher_checkpoint(config):  # given with --teacher_checkpoint
        if not run.teacher_checkpoint.exists():
            raise UsageError(f"--teacher_checkpoint {config.teacher_checkpoint} does not exist")
        return
    run.teacher = teacher


def teachers(runs: list[Run]) -> list[Run]:
    return list({run.teacher.name: run.teacher for run in runs if run.teacher}.values())


# ---------------------------------------------------------------- run folders

def run_state(run: Run, live: dict[str, str], scheduler: Scheduler) -> RunState:
    """What the run's folder holds, checked against the flags the grid gives it."""
    return RunDir(run.path).state(live, scheduler.name, run.config)


def run_folders(experiments_dir: Path) -> list[Path]:
    """Folders under ``experiments_dir`` that the runner or the training wrote."""
    markers = (JOB_FILE, SCRIPT_FILE, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, LOCK_FILE)
    return sorted({found.parent for marker in markers for found in experiments_dir.rglob(marker)})


@contextlib.contextmanager
def exclusive(experiments_dir: Path) -> Iterator[None]:
    """One runner.py at a time per experiments folder: two would submit the same runs twice."""
    experiments_dir.mkdir(parents=True, exist_ok=True)
    with open(experiments_dir / ".runner.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another runner.py is working on {experiments_dir}; let it finish first") from None
        yield


# ---------------------------------------------------------------- submitting

@dataclass
class JobSettings:
    """Everything in a job script besides the run itself."""

    resources: Resources
    python: str
    env_setup: str = ""
    workdir: Path = REPO
    template: str = field(default_factory=TEMPLATE.read_text)


def job_settings(args: argparse.Namespace) -> JobSettings:
    resources = Resources(args.partition, args.account, args.time, args.gpus, args.cpus, args.mem, args.signal_seconds)
    python = args.python or ("python" if args.env_setup else sys.executable)
    return JobSettings(resources, python, args.env_setup)


def job_name(run_name: str) -> str:
    """A job name every scheduler accepts: ``digits/teacher/ResNet20/seed0`` -> ``td.digits.teacher.ResNet20.seed0``."""
    return "td." + re.sub(r"[^A-Za-z0-9_.-]", ".", run_name)


def render_job(run: Run, scheduler: Scheduler, settings: JobSettings) -> str:
    command = [settings.python, str(settings.workdir / "tucker_distillation.py"), *run.flags]
    values = {
        "job_name": job_name(run.name),
        "workdir": str(settings.workdir),
        "env_setup": settings.env_setup,
        "command": shlex.join(command),
        **scheduler.header_values(settings.resources, run.path),
    }
    return render(settings.template, scheduler.directive, values)


class QueueFull(Exception):
    """--max_queued jobs are in the queue."""


@dataclass
class Summary:
    submitted: list[str] = field(default_factory=list)
    teachers: int = 0
    finished: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run, the scheduler's message)
    crashed: list[tuple[str, str]] = field(default_factory=list)  # local runs that ended badly
    held_back: int = 0  # not submitted because of --max_queued

    def report(self, max_queued: int, dry_run: bool = False) -> str:
        lines = [f"{'would submit' if dry_run else 'submitted'} {len(self.submitted)} (teachers: {self.teachers}), skipped as finished "
                 f"{len(self.finished)}, skipped as queued or running {len(self.queued)}, failed to submit {len(self.failed)}"]
        if self.crashed:
            lines[0] += f", failed while running {len(self.crashed)}"
        lines += [f"failed to submit {name}: {message}" for name, message in self.failed]
        lines += [f"failed while running {name}: {message}" for name, message in self.crashed]
        if self.held_back:
            lines.append(f"--max_queued {max_queued} reached: {self.held_back} runs remain; run runner.py again later")
        return "\n".join(lines)


class Submitter:
    """Walks the grid once: skips what is finished or live, submits the rest, teachers first."""

    def __init__(self, scheduler: Scheduler, settings: JobSettings, max_queued: int = 0, dry_run: bool = False,
                 out: Callable[[str], None] = print) -> None:
        self.scheduler, self.settings, self.max_queued, self.dry_run, self.out = scheduler, settings, max_queued, dry_run, out
        self.live = self._live_jobs()
        self.queued = len(self.live)
        self.new_jobs: dict[str, str] = {}  # run name -> job submitted now
        self.broken_teachers: dict[str, str] = {}  # teacher run name -> why it cannot be submitted
        self.summary = Summary()

    def _live_jobs(self) -> dict[str, str]:
        try:
            return self.scheduler.live_jobs()
        except SchedulerError as error:
            if not self.dry_run:
                raise SchedulerError(f"cannot list the queue, so nothing was submitted: {error}") from None
            self.out(f"warning: cannot list the queue ({error}); the dry run assumes it is empty")
            return {}

    def state(self, run: Run) -> RunState:
        if run.name in self.new_jobs:
            return RunState(PENDING, self.new_jobs[run.name])
        return run_state(run, self.live, self.scheduler)

    def visit(self, run: Run) -> None:
        state = self.state(run)
        if state.state == FINISHED:
            self.summary.finished.append(run.name)
        elif state.state in (RUNNING, PENDING):
            self.summary.queued.append(run.name)
            self.out(f"{state.state:<12} {run.name}  " + (f"job {state.job_id}" if state.job_id else state.detail))
        elif state.state in (CONFLICTING, CORRUPT):  # never submitted: training would refuse it anyway
            message = (f"its folder holds a run with other flags ({state.detail}); give this grid its own --study"
                       if state.state == CONFLICTING else state.detail)
            self.summary.failed.append((run.name, message))
            self.out(f"{'refused':<12} {run.name}: {message}")
        else:
            try:
                dependency = self.teacher_job(run) if run.teacher else None
                self.submit(run, dependency)
            except QueueFull:
                self.summary.held_back += 1
            except SchedulerError as error:
                self.summary.failed.append((run.name, str(error)))
                self.out(f"{'failed':<12} {run.name}: {error}")

    def teacher_job(self, run: Run) -> Optional[str]:
        """The job ``run`` must wait for: none when its teacher is trained, else the teacher's live
        job or one submitted now."""
        teacher = run.teacher
        if teacher.name in self.broken_teachers:
            raise SchedulerError(self.broken_teachers[teacher.name])
        teacher_state = self.state(teacher)
        state, job_id = teacher_state.state, teacher_state.job_id
        has_weights = run.teacher_checkpoint.exists()
        if state == FINISHED and not has_weights:
            self.broken_teachers[teacher.name] = f"teacher {teacher.name} finished but {run.teacher_checkpoint} is missing"
            raise SchedulerError(self.broken_teachers[teacher.name])
        if state == FINISHED or (state == NOT_STARTED and has_weights):
            return None  # trained, or weights put in place by hand
        if state in (CONFLICTING, CORRUPT):
            self.broken_teachers[teacher.name] = f"its teacher {teacher.name} cannot be trained: {teacher_state.detail}"
            raise SchedulerError(self.broken_teachers[teacher.name])
        if state == RUNNING and job_id is None:  # trained by a process no job records: nothing to wait for
            self.broken_teachers[teacher.name] = (f"its teacher {teacher.name} is being trained by {teacher_state.detail}, "
                                                  "outside any job to wait for; run runner.py again once it has finished")
            raise SchedulerError(self.broken_teachers[teacher.name])
        if state in (RUNNING, PENDING):
            return job_id
        try:
            job_id = self.submit(teacher, None)
        except SchedulerError as error:
            self.broken_teachers[teacher.name] = f"its teacher {teacher.name} failed to submit: {error}"
            raise SchedulerError(self.broken_teachers[teacher.name]) from None
        self.summary.teachers += 1
        return job_id

    def submit(self, run: Run, dependency: Optional[str]) -> str:
        if self.max_queued and self.queued >= self.max_queued:
            raise QueueFull
        script = render_job(run, self.scheduler, self.settings)
        resumes = " (resumes from last.pt)" if (run.path / LAST_CHECKPOINT).exists() else ""
        after = f" after job {dependency}" if dependency else ""
        if self.dry_run:
            job_id = f"dry-run-{len(self.new_jobs) + 1}"
            self.out(f"{'would submit':<12} {run.name}{after}{resumes}\n{script}")
        else:
            fresh = not run.path.exists()
            run.path.mkdir(parents=True, exist_ok=True)
            script_path = run.path / SCRIPT_FILE
            atomic_write(script_path, lambda tmp: tmp.write_text(script))
            try:
                job_id = self.scheduler.submit(script_path, dependency)
            except SchedulerError:  # leave no folder that only a run.job says is a run
                if fresh:
                    script_path.unlink()
                    run.path.rmdir()
                raise
            atomic_write_json(run.path / JOB_FILE, {
                "run": run.name, "job_id": job_id, "scheduler": self.scheduler.name, "dependency": dependency,
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "script": SCRIPT_FILE,
            })
            self.out(f"{'submitted':<12} {run.name}  job {job_id}{after}{resumes}")
        self.queued += 1
        self.new_jobs[run.name] = job_id
        self.summary.submitted.append(run.name)
        return job_id

    def wait_local(self) -> None:
        """Where the scheduler runs the jobs itself, wait for them and count the failures."""
        names = {job_id: name for name, job_id in self.new_jobs.items()}
        for job_id, status in self.scheduler.wait_all().items():
            name = names[job_id]
            self.summary.crashed.append((name, f"exit status {status}, see its local.out"))


def submit_grid(runs: list[Run], scheduler: Scheduler, settings: JobSettings, max_queued: int = 0,
                dry_run: bool = False, out: Callable[[str], None] = print) -> Summary:
    submitter = Submitter(scheduler, settings, max_queued, dry_run, out)
    for run in runs:
        submitter.visit(run)
    submitter.wait_local()
    return submitter.summary


# ---------------------------------------------------------------- status, cancel, clean

def status_table(runs: list[Run], scheduler: Scheduler) -> str:
    """The grid as a table, teachers first, with the best accuracy of finished runs."""
    try:
        live, note = scheduler.live_jobs(), ""
    except SchedulerError as error:
        live, note = {}, f"\n(the queue could not be listed: {error}; queued runs show as failed)"
    rows = [(run, run_state(run, live, scheduler)) for run in teachers(runs) + runs]
    ended = scheduler.final_states(state.job_id for _, state in rows if state.state == FAILED and state.job_id)
    lines = [f"{'state':<24} {'job':<12} {'best acc':>8}  run"]
    counts: dict[str, int] = {}
    for run, state in rows:
        counts[state.state] = counts.get(state.state, 0) + 1
        accuracy = state.detail if state.state == FINISHED else ""
        shown = f"{state.state} ({ended[state.job_id]})" if state.job_id in ended and state.state == FAILED else state.state
        why = f"  ({state.detail})" if state.state in (CONFLICTING, CORRUPT) or (state.state == RUNNING and not state.job_id) else ""
        lines.append(f"{shown:<24} {state.job_id or '':<12} {accuracy:>8}  {run.name}{why}")
    shown_states = (FINISHED, RUNNING, PENDING, FAILED, NOT_STARTED, CONFLICTING, CORRUPT)
    lines.append(", ".join(f"{state} {counts.get(state, 0)}" for state in shown_states if counts.get(state) or state in shown_states[:5]))
    return "\n".join(lines) + note


def cancel_jobs(experiments_dir: Path, scheduler: Scheduler, out: Callable[[str], None] = print) -> list[str]:
    """Cancel the live jobs that runner.py recorded under ``experiments_dir``; their ids."""
    live = scheduler.live_jobs()
    ids = []
    for path in run_folders(experiments_dir):
        state = RunDir(path).state(live, scheduler.name)
        if state.job_id in live and state.state in (RUNNING, PENDING):
            ids.append(state.job_id)
            out(f"cancel {state.job_id} ({state.state})  {path.relative_to(experiments_dir)}")
    scheduler.cancel(ids)
    out(f"cancelled {len(ids)} jobs")
    return ids


def clean(experiments_dir: Path, scheduler: Scheduler, confirm: Callable[[str], bool],
          out: Callable[[str], None] = print) -> list[Path]:
    """Delete unfinished runs that nothing is training, once ``confirm`` agrees. Only folders that
    are provably this project's runs (``RunDir.is_ours``) qualify, never one holding a metrics.json
    (its own or below it), never one whose lock a live process holds; and only the files the
    project writes are deleted: a folder with anything else in it is kept with that."""
    live = scheduler.live_jobs()
    doomed = [path for path in run_folders(experiments_dir)
              if RunDir(path).is_ours(experiments_dir) and RunDir(path).state(live, scheduler.name).state == FAILED
              and not any(path.rglob(METRICS_FILE))]
    for path in doomed:
        out(f"unfinished, no live job or process: {path}")
    if not doomed:
        out("nothing to clean")
        return []
    if not confirm(f"delete these {len(doomed)} run folders? [y/N] "):
        out("nothing deleted")
        return []
    deleted = []
    for path in doomed:
        run = RunDir(path)
        try:
            with run.locked(wait_s=0):  # a training that started meanwhile keeps its folder
                files = run.own_files()
                for file in files:
                    file.unlink()
        except UsageError as error:
            out(f"kept {path}: {error}")
            continue
        kept = sorted(p.name for p in path.iterdir())
        if kept:
            out(f"kept {path}: it also holds {', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}")
            continue
        path.rmdir()
        deleted.append(path)
        for parent in path.parents:  # and the folders that only held it, up to the experiments folder
            if parent == experiments_dir or not parent.is_relative_to(experiments_dir) or any(parent.iterdir()):
                break
            parent.rmdir()
    out(f"deleted {len(deleted)} run folders")
    return deleted


def ask(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("--clean asks before deleting; pass --yes when there is no terminal to answer")
    return input(question).strip().lower() in ("y", "yes")


# ---------------------------------------------------------------- main

def main(argv: Optional[list[str]] = None, scheduler: Optional[Scheduler] = None) -> int:
    try:
        args, extra = parse_args(sys.argv[1:] if argv is None else argv)
        scheduler = scheduler or make_scheduler(args)
        experiments_dir = Path(args.experiments_dir).absolute()
        if args.cancel:
            cancel_jobs(experiments_dir, scheduler)
            return 0
        if args.clean:
            with exclusive(experiments_dir):
                clean(experiments_dir, scheduler, (lambda _: True) if args.yes else ask)
            return 0
        runs = build_grid(args, extra)
        if args.status:
            print(status_table(runs, scheduler))
            return 0
        settings = job_settings(args)
        with contextlib.nullcontext() if args.dry_run else exclusive(experiments_dir):
            summary = submit_grid(runs, scheduler, settings, args.max_queued, args.dry_run,
                                  out=lambda line: print(line, flush=True))
        print(summary.report(args.max_queued, args.dry_run))
        return 1 if summary.failed or summary.crashed else 0
    except UsageError as error:
        print(f"runner.py: error: {error}", file=sys.stderr)
        return error.exit_code
    except SchedulerError as error:
        print(f"runner.py: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
