"""Sweeps: a grid of runs from any training flags, submitted, listed, cancelled and cleaned.

``runner.py`` and ``test_noise.py`` are command lines over this module. A grid is a set of axes
(``beta=50,125,250``) crossed with each other; each point is one run folder, named by the training
script's own rule (``toolbox.rundir``), which is also what decides a run's state. Schedulers
(SLURM, PBS, local) are objects with ``submit``, ``live_jobs`` and ``cancel`` (``toolbox.scheduler``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import itertools
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from toolbox.choices import MODELS
from toolbox.config import RUNTIME_FIELDS, Config, parse_config
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS, with_defaults
from toolbox.naming import format_value, validate_experiment_name
from toolbox.rundir import (CONFIG_FILE, CONFLICTING, CORRUPT, FAILED, FINISHED, JOB_FILE, LAST_CHECKPOINT, LOCK_FILE, METRICS_FILE,
                            NOT_STARTED, PACKED_LOG, PENDING, RUNNING, SCRIPT_FILE, TEACHER_SEED, RunDir, RunState,
                            QUIET_S, default_teacher_checkpoint, defining_flags, experiment_name, method_defaulted,
                            open_nofollow, resolve)
from toolbox.scheduler import LocalScheduler, Resources, Scheduler, SchedulerError, render
from toolbox.utils import atomic_write, atomic_write_json, markdown_table

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "run.job"
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


Axes = dict[str, list[str]]
"""Grid axes: a training flag's name -> its values, spelled as on the command line; the axis
``pair`` sets ``teacher`` and ``student`` together (``resnet56-resnet20``)."""
PAIR = "pair"
SWITCHES = frozenset(item.name for item in dataclasses.fields(Config) if isinstance(item.default, bool))
"""The on/off flags, which a grid spells true and false."""


def axis_flags() -> set[str]:
    """What a grid axis may vary: a training flag that defines a run, or ``pair``."""
    return {item.name for item in dataclasses.fields(Config)} - RUNTIME_FIELDS - {"experiment_name"} | {PAIR}


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``beta=50,125,250`` -> ("beta", ["50", "125", "250"]). Values that contain commas (Tucker
    ranks) are separated by ``:`` instead: ``ranks=BATCH_SIZE,32,8,8:BATCH_SIZE,8,8,8``."""
    name, sep, values = text.partition("=")
    fields = axis_flags()
    if not sep or name not in fields:
        raise UsageError(f"--grid takes FLAG=VALUE,VALUE,... with FLAG a training flag that defines a run, or pair "
                         f"(teacher-student, e.g. pair=resnet56-resnet20,vgg13-vgg8) ({', '.join(sorted(fields))}); got {text!r}")
    parts = values.split(":" if ":" in values else ",")
    if not all(parts):
        raise UsageError(f"--grid {name}: empty value in {values!r}")
    if name == PAIR:
        for part in parts:
            split_pair(part)
    if name in SWITCHES and not set(parts) <= {"true", "false"}:
        raise UsageError(f"--grid {name}: an on/off flag takes true or false; got {values!r}")
    return name, list(dict.fromkeys(parts))


def split_pair(text: str) -> tuple[str, str]:
    """``resnet56-resnet20`` -> ("resnet56", "resnet20"), as run folders spell a pair."""
    teacher, sep, student = text.partition("-")
    if not sep or teacher not in MODELS or student not in MODELS:
        raise UsageError(f"--grid pair: each value is TEACHER-STUDENT with both among {', '.join(MODELS)}; got {text!r}")
    return teacher, student


def grid_points(axes: Axes) -> Iterator[dict[str, str]]:
    """Every combination of the axes' values, the first axis slowest, each with only the flags its
    method reads (a featuremap run ignores ranks), and never the same run twice."""
    seen = set()
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        if PAIR in point:
            point["teacher"], point["student"] = split_pair(point.pop(PAIR))
        applies = set(defining_flags(point.get("distillation", Config.distillation), point)) | {"distillation"}
        point = {name: value for name, value in point.items() if name in applies}
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            yield point


def as_flags(point: dict[str, str]) -> list[str]:
    """A grid point as command-line flags: an on/off flag's ``true`` is ``--flag``, ``false`` ``--no-flag``."""
    return [token for name, value in point.items()
            for token in ([f"--{name}" if value == "true" else f"--no-{name}"] if name in SWITCHES else [f"--{name}", value])]


def refused(flags: list[str]) -> bool:
    """Whether the method of these training flags cannot train their pair (its ``check``: FSP on
    networks of other widths), which a benchmark's table marks N/A."""
    config = with_defaults(training_config(flags))
    try:
        DISTILLERS[config.distillation].check(config)
    except UsageError:
        return True
    return False


def build_grid(axes: Axes, common: list[str], experiments_dir: Path, study: str = "",
               teacher_files: Mapping[str, Path] | None = None, leave_out_refused: bool = False) -> list[Run]:
    """The student runs of the grid, in submission order, deduplicated by run name; each points to
    the teacher run it needs (the plain run of its teacher with seed 0 and the same training flags,
    shared by all the students that need it, and kept outside ``study``), or to the file that
    ``teacher_files`` gives for its teacher architecture. A point whose method cannot train its pair
    is refused, or with ``leave_out_refused`` (a benchmark's every method on every pair) left out."""
    common = [*common, "--experiments_dir", str(experiments_dir)]
    runs: dict[str, Run] = {}
    teacher_runs: dict[str, Run] = {}
    for point in grid_points(axes):
        try:
            run = make_run([*as_flags(point), *common], experiments_dir, study)
        except UsageError:
            if leave_out_refused and refused([*as_flags(point), *common]):
                continue
            raise
        needs_teacher = DISTILLERS[run.config.distillation].needs_teacher
        if needs_teacher and run.config.teacher in (teacher_files or {}):
            given = ["--teacher_checkpoint", str(teacher_files[run.config.teacher])]
            run = make_run([*as_flags(point), *common, *given], experiments_dir, study)
        if run.name in runs:
            continue
        if needs_teacher:
            # the teacher's run shares the student's training flags, never its method's (teacher_config)
            general = {name: value for name, value in point.items()
                       if name in defining_flags("none") and name not in method_defaulted()}
            general.update(distillation="none", student=run.config.teacher, seed=str(TEACHER_SEED))
            teacher = make_run([*as_flags(general), *common], experiments_dir)
            attach_teacher(run, teacher_runs.setdefault(teacher.name, teacher))
        runs[run.name] = run
    return list(runs.values())


def grid_table(runs: list[Run], axes: Axes) -> str:
    """The grid as a table: one row per run, a column per axis on which its runs differ (a flag
    the run's method does not read shows as ``-``), then the run's folder."""
    columns = {name: [axis_value(run.config, name) for run in runs] for name, values in axes.items() if len(values) > 1}
    shown = [name for name, values in columns.items() if len(set(values)) > 1]
    rows = [[*(columns[name][index] for name in shown), run.name] for index, run in enumerate(runs)]
    return f"the grid: {len(runs)} runs\n" + markdown_table([*shown, "run"], rows)


def axis_value(config: Config, axis: str) -> str:
    """A run's value on a grid axis, ``-`` where its method does not read the flag."""
    own = set(defining_flags(config.distillation, dataclasses.asdict(config))) | {"distillation"}
    if axis == PAIR:
        return f"{config.teacher}-{config.student}" if "teacher" in own else config.student
    return format_value(getattr(config, axis)) if axis in own else "-"


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
    with os.fdopen(open_nofollow(experiments_dir / ".runner.lock", os.O_WRONLY | os.O_CREAT), "w") as handle:
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
    mps: bool = False  # several runs on one GPU share it through CUDA MPS
    workdir: Path = REPO
    template: str = field(default_factory=TEMPLATE.read_text)


def job_name(run_name: str) -> str:
    """A job name every scheduler accepts: ``digits/teacher/ResNet20/seed0`` -> ``td.digits.teacher.ResNet20.seed0``."""
    return "td." + re.sub(r"[^A-Za-z0-9_.-]", ".", run_name)


def render_job(runs: Sequence[Run], scheduler: Scheduler, settings: JobSettings) -> str:
    """The job script that trains ``runs`` side by side (more than one: each run's output goes to
    its own ``job.out``; one: to the job's log)."""
    launcher = [*scheduler.launcher(settings.resources), settings.python, str(settings.workdir / "tucker_distillation.py")]
    starts = [shlex.join(["start", str(run.path / PACKED_LOG) if len(runs) > 1 else "", *launcher, *run.flags])
              for run in runs]
    values = {
        "job_name": job_name(runs[0].name) + (f".and{len(runs) - 1}" if len(runs) > 1 else ""),
        "workdir": str(settings.workdir),
        "env_setup": settings.env_setup,
        "command": "; ".join(starts),
        "trainings": str(len(runs)),
        "mps": "yes" if settings.mps and len(runs) > 1 and settings.resources.gpus else "no",
        "world_size": "",
        "stop_signal": "TERM",
        **scheduler.header_values(dataclasses.replace(settings.resources, runs_per_job=len(runs)), runs[0].path),
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
        self.job_runs: dict[str, list[Run]] = {}  # job submitted now -> the runs it trains
        self.packs: dict[Optional[str], list[Run]] = {}  # runs to share a job, by the job they wait for
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
            except QueueFull:
                self.summary.held_back += 1
                return
            except SchedulerError as error:
                self.summary.failed.append((run.name, str(error)))
                self.out(f"{'failed':<12} {run.name}: {error}")
                return
            pack = self.packs.setdefault(dependency, [])
            pack.append(run)
            if len(pack) == self.settings.resources.runs_per_job:
                self.submit_pack(dependency)

    def submit_pack(self, dependency: Optional[str]) -> None:
        """Submit the runs waiting for ``dependency`` as one job (runs of one teacher share a job,
        so that none waits for a teacher it does not need)."""
        runs = self.packs.pop(dependency)
        try:
            self.submit(runs, dependency)
        except QueueFull:
            self.summary.held_back += len(runs)
        except SchedulerError as error:
            for run in runs:
                self.summary.failed.append((run.name, str(error)))
                self.out(f"{'failed':<12} {run.name}: {error}")

    def finish(self) -> None:
        """Submit the last, smaller packs; where the scheduler runs the jobs itself, wait for them."""
        for dependency in list(self.packs):
            self.submit_pack(dependency)
        self.wait_local()

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
            job_id = self.submit([teacher], None)
        except SchedulerError as error:
            self.broken_teachers[teacher.name] = f"its teacher {teacher.name} failed to submit: {error}"
            raise SchedulerError(self.broken_teachers[teacher.name]) from None
        self.summary.teachers += 1
        return job_id

    def submit(self, runs: list[Run], dependency: Optional[str]) -> str:
        """One job for ``runs``: its script in the first run's folder, a job.json in each."""
        if self.max_queued and self.queued >= self.max_queued:
            raise QueueFull
        script = render_job(runs, self.scheduler, self.settings)
        after = f" after job {dependency}" if dependency else ""
        resumes = [" (resumes from last.pt)" if (run.path / LAST_CHECKPOINT).exists() else "" for run in runs]
        if self.dry_run:
            job_id = f"dry-run-{len(set(self.new_jobs.values())) + 1}"
            self.out("\n".join(f"{'would submit':<12} {run.name}{after}{note}" for run, note in zip(runs, resumes)) + f"\n{script}")
        else:
            script_path = runs[0].path / SCRIPT_FILE
            created = [folder for run in runs
                       for folder in itertools.takewhile(lambda folder: not folder.exists(), [run.path, *run.path.parents])]
            try:
                for run in runs:
                    run.path.mkdir(parents=True, exist_ok=True)
                atomic_write(script_path, lambda tmp: tmp.write_text(script))
                job_id = self.scheduler.submit(script_path, dependency)
                try:
                    for run in runs:
                        atomic_write_json(run.path / JOB_FILE, {
                            "run": run.name, "job_id": job_id, "scheduler": self.scheduler.name, "dependency": dependency,
                            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "script": SCRIPT_FILE if run is runs[0] else str(script_path),
                            **({"pack": [member.name for member in runs]} if len(runs) > 1 else {}),
                        })
                except OSError:  # a job no job.json records would be submitted again by the next runner.py
                    self.scheduler.cancel([job_id])
                    raise
            except (SchedulerError, OSError):  # leave no folder that only a run.job says is a run
                remove_created(script_path, runs, sorted(set(created), key=lambda folder: -len(folder.parts)))
                raise
            self.out("\n".join(f"{'submitted':<12} {run.name}  job {job_id}{after}{note}" for run, note in zip(runs, resumes)))
        self.queued += 1
        self.job_runs[job_id] = runs
        for run in runs:
            self.new_jobs[run.name] = job_id
            self.summary.submitted.append(run.name)
        return job_id

    def wait_local(self) -> None:
        """Where the scheduler runs the jobs itself, wait for them and count the failures: a job's
        runs that did not finish (all of them if each did, yet the job failed)."""
        for job_id, status in self.scheduler.wait_all().items():
            runs = self.job_runs[job_id]
            log = PACKED_LOG if len(runs) > 1 else LocalScheduler.log_name
            for run in [run for run in runs if not RunDir(run.path).finished] or runs:
                self.summary.crashed.append((run.name, f"exit status {status}, see its {log}"))


def remove_created(script_path: Path, runs: list[Run], created: list[Path]) -> None:
    """Undo a failed submission: its ``run.job``, the job.json files it wrote, and the folders made
    for it (deepest first), those only; a folder something else was written into meanwhile stays."""
    if not created:
        return
    script_path.unlink(missing_ok=True)
    for run in runs:
        if run.path in created:
            (run.path / JOB_FILE).unlink(missing_ok=True)
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def submit_grid(runs: list[Run], scheduler: Scheduler, settings: JobSettings, max_queued: int = 0,
                dry_run: bool = False, out: Callable[[str], None] = print) -> Summary:
    submitter = Submitter(scheduler, settings, max_queued, dry_run, out)
    for run in runs:  # the teachers first: a local student job waits for its teacher before the next is started
        if run.teacher and submitter.state(run).state in (FAILED, NOT_STARTED):
            with contextlib.suppress(SchedulerError, QueueFull):  # reported with each student by visit
                submitter.teacher_job(run)
    for run in runs:
        submitter.visit(run)
    submitter.finish()
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
    project writes are deleted: a folder with anything else in it is kept with that. A damaged run,
    and one changed in the last ``QUIET_S`` seconds (a run starting), are listed and kept."""
    live = scheduler.live_jobs()
    doomed = []
    for path in run_folders(experiments_dir):
        run = RunDir(path)
        state = run.state(live, scheduler.name)
        if state.state == CORRUPT:
            out(f"kept {path}: {CORRUPT}: {state.detail}")
        elif state.state in (FAILED, NOT_STARTED) and run.is_ours(experiments_dir) and not any(path.rglob(METRICS_FILE)):
            if run.recently_changed():
                out(f"kept {path}: changed in the last {QUIET_S} s, it may be a run that is starting")
            else:
                doomed.append(path)
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
                run.remove_own_files()
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
