"""Errors that the command-line entry points turn into a one-line message and an exit code."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Optional


class UsageError(Exception):
    """Bad input from the user (a flag, a file, a folder): printed as one line, exit status 2."""

    exit_code = 2


class DivergedError(Exception):
    """The loss became NaN or infinite: the run stops, its last good checkpoint is kept (exit 1)."""

    exit_code = 1


class IOFailure(Exception):
    """A read or write outside the run's own checkpoints failed (a read-only run or data folder): the
    message names the file and what to fix, exit status 74."""

    exit_code = 74


class Interrupted(BaseException):
    """SIGUSR1, SIGTERM (preemption, time limit) or SIGINT (Ctrl-C) arrived: exit 75 so the job can be requeued. Like
    KeyboardInterrupt, a ``BaseException``: the signal handler may raise it inside any code
    (toolbox/stop.py), whose ``except Exception`` must not take it for a failure of its own."""

    exit_code = 75


def file_kind(mode: int) -> Optional[str]:
    """What a file that is not a regular one is (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"


class NotRegular(UsageError):
    """A run's file that is a FIFO, a folder or a device: never read or written, left as it is."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"{path} is not a regular file ({kind}); it was left as it is: move it away, then rerun")
