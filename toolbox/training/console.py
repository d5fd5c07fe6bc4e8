"""A run's console: the lines it prints, kept in its train.log, and its closing line."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

from toolbox.errors import DivergedError, Interrupted, UsageError
from toolbox.rundir import RunDir, open_nofollow


class ConsoleLog:
    """Prints a run's lines and appends them to its ``train.log``, so that a run trained directly
    keeps what it printed, as a scheduler's job log would (progress bars stay on the terminal).
    As a context manager it also records the error that stops a run that has a log (the entry point
    prints it): a failed start-up leaves no train.log behind. A finished run's folder is left as it
    is: nothing is appended once metrics.json exists."""

    def __init__(self, run: RunDir, writer: bool = True) -> None:
        """``writer``: this process speaks for the run (under torchrun rank 0; the others keep quiet)."""
        self.run = run
        self.writer = writer

    def record(self, line: str) -> None:
        if self.run.finished or not self.writer:
            return
        with os.fdopen(open_nofollow(self.run.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def __call__(self, line: str) -> None:
        if self.writer:
            print(line, flush=True)
        self.record(line)

    def __enter__(self) -> ConsoleLog:
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], traceback: Any) -> None:
        if error is not None and self.run.log.exists():
            shown = str(error) if isinstance(error, (UsageError, DivergedError, Interrupted)) else f"{kind.__name__}: {error}"
            with contextlib.suppress(OSError):  # the error may be that this disk is full
                self.record(f"error: {shown}")


def final_line(metrics: dict[str, Any]) -> str:
    return (f"best test accuracy {metrics['best_test_acc']:.2f}% (epoch {metrics['best_epoch']}), "
            f"{metrics['wall_time_s']:.0f}s of training")
