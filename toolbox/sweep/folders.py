"""A sweep's run folders on disk: a run's state, the folders the runner or the training wrote, which
of them clean may delete, and the lock that keeps a second runner.py off an experiments folder.

Submitting, status, cancel and clean all read the folders through these, so that they agree on
what a run folder holds; the folder itself (its files, lock and safe reads) is ``toolbox.rundir``.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

from toolbox.config import Config
from toolbox.errors import UsageError
from toolbox.rundir import (
    CONFIG_FILE,
    EVENT_FILE,
    JOB_FILE,
    LAST_CHECKPOINT,
    LAUNCH_FILES,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    PLOTS,
    SCRIPT_FILE,
    RunDir,
    differences,
    open_nofollow,
)
from toolbox.sweep.grid import Run
from toolbox.sweep.local import LocalScheduler
from toolbox.sweep.scheduler import Scheduler

FINISHED, RUNNING, PENDING, FAILED, NOT_STARTED = "finished", "running", "pending", "failed", "not started"
CONFLICTING, CORRUPT = "conflicting", "corrupt"
QUIET_S = 60
"""A folder with a file changed more recently than this may belong to a run that is starting."""


@dataclass
class RunState:
    """What a run folder holds now, as the runner, ``util.sh status`` and ``clean`` see it."""

    state: str
    job_id: Optional[str] = None
    detail: str = ""


def run_state(run: Run, live: dict[str, str], scheduler: Scheduler) -> RunState:
    """What the run's folder holds, checked against the flags the grid gives it."""
    return folder_state(RunDir(run.path), live, scheduler.name, run.config)


def folder_state(run: RunDir, live: Mapping[str, str], scheduler: str, expected: Optional[Config] = None) -> RunState:
    """finished, running (the lock is held, or its job runs), pending (its job waits),
    conflicting (it holds other flags than ``expected``), corrupt (a damaged config.json,
    job.json or metrics.json, a linked .lock), failed (started or submitted, but nothing alive)
    or not started."""
    job_id = None
    try:
        job = run.read_job()
        job_id = job["job_id"] if job and job["scheduler"] == scheduler else None
        saved = run.saved_config()
        if run.finished:
            metrics = run.read_json(run.metrics)
            best = metrics.get("best_test_acc")
            if not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best):
                return RunState(CORRUPT, job_id, f"{run.metrics} has no best_test_acc (a finite number)")
        holder = run.holder()
    except UsageError as error:
        return RunState(CORRUPT, job_id, str(error))
    changed = differences(saved, expected) if saved is not None and expected is not None else []
    if changed:
        return RunState(CONFLICTING, job_id, "; ".join(changed))
    if run.finished:
        return RunState(FINISHED, job_id, f"{metrics['best_test_acc']:.2f}")
    if holder:
        return RunState(RUNNING, job_id, holder)
    if job_id in live:  # the scheduler's RUNNING or PENDING
        return RunState(live[job_id].lower(), job_id)
    if scheduler == LocalScheduler.name and LocalScheduler.alive(
        job_id, job_script(run, job)
    ):  # another runner.py's job
        return RunState(RUNNING, job_id, "starting")
    started = job or saved is not None or run.last.exists()
    return RunState(FAILED if started else NOT_STARTED, job_id)


def job_script(run: RunDir, job: Optional[dict]) -> Path:
    """The script of the job that ``job`` (this run's job.json) records: a packed run's is in the
    folder of the pack's first run."""
    return run.path / job["script"] if job and isinstance(job.get("script"), str) else run.script


def recently_changed(run: RunDir) -> bool:
    """Whether the folder or a file in it changed in the last ``QUIET_S`` seconds: a run that is
    starting (before it holds its lock) looks like this."""
    since = time.time() - QUIET_S
    return any(path.lstat().st_mtime > since for path in (run.path, *run.path.iterdir()))


def is_ours(run: RunDir, experiments_dir: Path) -> bool:
    """Provably a run folder of this project: strictly inside ``experiments_dir``, and its
    config.json or job.json names this very folder as the run it belongs to, or it holds nothing
    but a lock file as training writes it (a start-up that failed)."""
    try:
        name = run.path.resolve().relative_to(experiments_dir.resolve()).as_posix()
    except ValueError:
        return False
    if name == ".":
        return False
    try:
        saved, job = run.saved_config(), run.read_job() or {}
    except UsageError:
        return False
    return (saved is not None and saved["experiment_name"] == name) or job.get("run") == name or only_lock(run)


def only_lock(run: RunDir) -> bool:
    """The folder holds a ``.lock`` file (no link) with what ``locked`` writes, and nothing else."""
    if (
        [entry.name for entry in run.path.iterdir()] != [LOCK_FILE]
        or not run.lock_file.is_file()
        or run.lock_file.is_symlink()
    ):
        return False
    return re.fullmatch(r"(process \d+ on \S+\n)?", run.lock_file.read_text(errors="replace")) is not None


def own_files(run: RunDir) -> list[Path]:
    """The files this project writes in a run folder (never metrics.json: a finished run is
    never cleaned), so that clean deletes nothing else."""
    saved = run.saved_config() or {}
    names = {CONFIG_FILE, LAST_CHECKPOINT, LOCK_FILE, LOG_FILE, *PLOTS}
    if isinstance(saved.get("student"), str):
        names.add(f"{saved['student']}.pth")
    temporaries = re.compile(r"\..+\.\d+\.tmp")
    own = [
        path
        for path in run.path.iterdir()
        if path.is_file()
        and not path.is_symlink()
        and (
            path.name in names
            or LAUNCH_FILES.fullmatch(path.name)
            or temporaries.fullmatch(path.name)
            or EVENT_FILE.fullmatch(path.name)
        )
    ]
    if run.steps.is_dir() and not run.steps.is_symlink():
        own += [
            path
            for path in run.steps.iterdir()
            if path.is_file() and not path.is_symlink() and EVENT_FILE.fullmatch(path.name)
        ]
    return sorted(own)


def remove_own_files(run: RunDir) -> None:
    """Delete ``own_files``, and the steps/ folder when that leaves it empty (clean)."""
    for file in own_files(run):
        file.unlink()
    if run.steps.is_dir() and not run.steps.is_symlink() and not any(run.steps.iterdir()):
        run.steps.rmdir()


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
