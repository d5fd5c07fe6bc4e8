"""Submitting a sweep: one job script per run (or per pack of runs), teachers first.

The ``Submitter`` walks the grid once, skips what is finished or live, packs the runs that wait for
the same teacher job, and writes each job's ``run.job`` and ``job.json`` files (undone if the
submission fails). The job script is ``run.job`` at the repository root, rendered for the scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from toolbox.errors import Interrupted
from toolbox.rundir import JOB_FILE, LAST_CHECKPOINT, PACKED_LOG, SCRIPT_FILE, RunDir
from toolbox.sweep.folders import (
    CONFLICTING,
    CORRUPT,
    FAILED,
    FINISHED,
    NOT_STARTED,
    PENDING,
    RUNNING,
    RunState,
    run_state,
)
from toolbox.sweep.grid import Run
from toolbox.sweep.local import LocalScheduler
from toolbox.sweep.scheduler import NotStarted, Resources, Scheduler, SchedulerError, render
from toolbox.utils import atomic_write, atomic_write_json

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "run.job"


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
    launcher = [
        *scheduler.launcher(settings.resources),
        settings.python,
        str(settings.workdir / "tucker_distillation.py"),
    ]
    starts = [
        shlex.join(["start", str(run.path / PACKED_LOG) if len(runs) > 1 else "", *launcher, *run.flags])
        for run in runs
    ]
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
    stopped: list[str] = field(default_factory=list)  # local runs that a stop signal stopped (75): they resume
    held_back: int = 0  # not submitted because of --max_queued
    not_started: int = 0  # local runs not started because a stop signal ended the sweep
    ran_here: bool = False  # the scheduler ran the jobs on this machine and waited for them (local)

    def report(self, max_queued: int, dry_run: bool = False) -> str:
        lines = [
            f"{'would submit' if dry_run else 'submitted'} {len(self.submitted)} (teachers: {self.teachers}), "
            f"skipped as finished {len(self.finished)}, skipped as queued or running {len(self.queued)}, "
            f"failed to submit {len(self.failed)}"
        ]
        if self.crashed:
            lines[0] += f", failed while running {len(self.crashed)}"
        if self.stopped or self.not_started:
            lines[0] += f", stopped {len(self.stopped)}, not started {self.not_started}"
        lines += [f"failed to submit {name}: {message}" for name, message in self.failed]
        lines += [f"failed while running {name}: {message}" for name, message in self.crashed]
        lines += [f"stopped {name}: runner.py run again resumes it" for name in self.stopped]
        if self.held_back:
            lines.append(f"--max_queued {max_queued} reached: {self.held_back} runs remain; run runner.py again later")
        if self.ran_here and not dry_run:
            ended = len(self.submitted) - len(self.crashed) - len(self.stopped)
            lines.append(
                f"the sweep: finished {ended}, failed {len(self.crashed)}, stopped {len(self.stopped)}, "
                f"not started {self.not_started + len(self.failed)}, skipped {len(self.finished) + len(self.queued)} "
                "(finished or running before)"
            )
        return "\n".join(lines)


class Submitter:
    """Walks the grid once: skips what is finished or live, submits the rest, teachers first."""

    def __init__(
        self,
        scheduler: Scheduler,
        settings: JobSettings,
        max_queued: int = 0,
        dry_run: bool = False,
        out: Callable[[str], None] = print,
        scripts: bool = False,
    ) -> None:
        """``scripts``: a dry run prints each job's script too, not only which runs it trains."""
        self.scheduler, self.settings, self.max_queued, self.dry_run, self.out = (
            scheduler,
            settings,
            max_queued,
            dry_run,
            out,
        )
        self.scripts = scripts
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
            message = (
                f"its folder holds a run with other flags ({state.detail}); give this grid its own --study"
                if state.state == CONFLICTING
                else state.detail
            )
            self.summary.failed.append((run.name, message))
            self.out(f"{'refused':<12} {run.name}: {message}")
        else:
            try:
                dependency = self.teacher_job(run) if run.teacher else None
            except QueueFull:
                self.summary.held_back += 1
                return
            except NotStarted:
                self.summary.not_started += 1
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
        except NotStarted:
            self.summary.not_started += len(runs)
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
            self.broken_teachers[teacher.name] = (
                f"teacher {teacher.name} finished but {run.teacher_checkpoint} is missing"
            )
            raise SchedulerError(self.broken_teachers[teacher.name])
        if state == FINISHED or (state == NOT_STARTED and has_weights):
            return None  # trained, or weights put in place by hand
        if state in (CONFLICTING, CORRUPT):
            self.broken_teachers[teacher.name] = f"its teacher {teacher.name} cannot be trained: {teacher_state.detail}"
            raise SchedulerError(self.broken_teachers[teacher.name])
        if state == RUNNING and job_id is None:  # trained by a process no job records: nothing to wait for
            self.broken_teachers[teacher.name] = (
                f"its teacher {teacher.name} is being trained by {teacher_state.detail}, "
                "outside any job to wait for; run runner.py again once it has finished"
            )
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
        if self.scheduler.stopped_by:
            raise NotStarted
        script = render_job(runs, self.scheduler, self.settings)
        after = f" after job {dependency}" if dependency else ""
        resumes = [" (resumes from last.pt)" if (run.path / LAST_CHECKPOINT).exists() else "" for run in runs]
        if self.dry_run:
            job_id = f"dry-run-{len(set(self.new_jobs.values())) + 1}"
            planned = "\n".join(f"{'would submit':<12} {run.name}{after}{note}" for run, note in zip(runs, resumes))
            self.out(planned + (f"\n{script}" if self.scripts else ""))
        else:
            script_path = runs[0].path / SCRIPT_FILE
            created = [
                folder
                for run in runs
                for folder in itertools.takewhile(lambda folder: not folder.exists(), [run.path, *run.path.parents])
            ]
            try:
                for run in runs:
                    run.path.mkdir(parents=True, exist_ok=True)
                atomic_write(script_path, lambda tmp: tmp.write_text(script))
                job_id = self.scheduler.submit(script_path, dependency)
                try:
                    for run in runs:
                        atomic_write_json(
                            run.path / JOB_FILE,
                            {
                                "run": run.name,
                                "job_id": job_id,
                                "scheduler": self.scheduler.name,
                                "dependency": dependency,
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "script": SCRIPT_FILE if run is runs[0] else str(script_path),
                                **({"pack": [member.name for member in runs]} if len(runs) > 1 else {}),
                            },
                        )
                except OSError:  # a job no job.json records would be submitted again by the next runner.py
                    self.scheduler.cancel([job_id])
                    raise
            except (SchedulerError, OSError):  # leave no folder that only a run.job says is a run
                remove_created(script_path, runs, sorted(set(created), key=lambda folder: -len(folder.parts)))
                raise
            self.out(
                "\n".join(
                    f"{'submitted':<12} {run.name}  job {job_id}{after}{note}" for run, note in zip(runs, resumes)
                )
            )
        self.queued += 1
        self.job_runs[job_id] = runs
        for run in runs:
            self.new_jobs[run.name] = job_id
            self.summary.submitted.append(run.name)
        return job_id

    def wait_local(self) -> None:
        """Where the scheduler runs the jobs itself, wait for them and count the failures: a job's
        runs that did not finish (all of them if each did, yet the job failed)."""
        self.summary.ran_here = isinstance(self.scheduler, LocalScheduler)
        for job_id, status in self.scheduler.wait_all().items():
            runs = self.job_runs[job_id]
            log = PACKED_LOG if len(runs) > 1 else LocalScheduler.log_name
            for run in [run for run in runs if not RunDir(run.path).finished] or runs:
                if status == Interrupted.exit_code:
                    self.summary.stopped.append(run.name)
                else:
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


def submit_grid(
    runs: list[Run],
    scheduler: Scheduler,
    settings: JobSettings,
    max_queued: int = 0,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
    scripts: bool = False,
) -> Summary:
    submitter = Submitter(scheduler, settings, max_queued, dry_run, out, scripts)
    for run in runs:  # the teachers first: a local student job waits for its teacher before the next is started
        if run.teacher and submitter.state(run).state in (FAILED, NOT_STARTED):
            with contextlib.suppress(SchedulerError, QueueFull, NotStarted):  # reported with each student by visit
                submitter.teacher_job(run)
    for run in runs:
        submitter.visit(run)
    submitter.finish()
    return submitter.summary
