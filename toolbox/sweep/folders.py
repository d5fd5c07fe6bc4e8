"""A sweep's run folders on disk: a run's state, the folders the runner or the training wrote, and
the lock that keeps a second runner.py off an experiments folder.

Submitting, status, cancel and clean all read the folders through these, so that they agree on
what a run folder is (``toolbox.rundir`` decides its state).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from toolbox.errors import UsageError
from toolbox.rundir import (
    CONFIG_FILE,
    JOB_FILE,
    LAST_CHECKPOINT,
    LOCK_FILE,
    METRICS_FILE,
    SCRIPT_FILE,
    RunDir,
    RunState,
    open_nofollow,
)
from toolbox.scheduler import Scheduler
from toolbox.sweep.grid import Run


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
