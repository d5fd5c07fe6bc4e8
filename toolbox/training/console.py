"""A run's console: the lines it prints (progress within an epoch, each epoch, the closing line), kept in
its train.log."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Optional

from toolbox.errors import DivergedError, Interrupted, UsageError
from toolbox.rundir import RunDir, open_nofollow

STAMP = "%Y-%m-%d %H:%M:%S"
"""When each train.log line was written (local time), before the line as it was printed."""


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
        with os.fdopen(
            open_nofollow(self.run.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8"
        ) as log:
            log.write(f"{time.strftime(STAMP)}  {line}\n")

    def __call__(self, line: str) -> None:
        if self.writer:
            print(line, flush=True)
        self.record(line)

    def __enter__(self) -> ConsoleLog:
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], traceback: Any) -> None:
        if error is not None and self.run.log.exists():
            shown = (
                str(error)
                if isinstance(error, (UsageError, DivergedError, Interrupted))
                else f"{kind.__name__}: {error}"
            )
            with contextlib.suppress(OSError):  # the error may be that this disk is full
                self.record(f"error: {shown}")


def final_line(metrics: dict[str, Any]) -> str:
    return (
        f"best test accuracy {metrics['best_test_acc']:.2f}% (epoch {metrics['best_epoch']}), "
        f"{metrics['wall_time_s']:.0f}s of training"
    )


def format_duration(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds)."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def progress_line(
    epoch: int, epochs: int, batch: int, steps: int, images_per_s: float, means: dict[str, float], eta_s: float
) -> str:
    """One plain line for logs, within an epoch (tqdm draws a bar on a terminal only)."""
    return (
        f"epoch {epoch}/{epochs}  step {batch}/{steps}  {images_per_s:.0f} images/s  "
        f"cross-entropy {means['train_hard_loss']:.4f}  distillation {means['train_soft_loss']:.4g}  "
        f"train {means['train_acc']:.2f}%  ETA {format_duration(eta_s)}"
    )


def epoch_line(name: str, record: dict[str, float], best: Optional[float], seconds: float) -> str:
    """The line that ends an epoch (``name``: ``epoch 3/8``, ``init epoch 2/30``); the test accuracy
    where the epoch was tested (``best`` so far)."""
    tested = f"  test {record['test_acc']:.2f}% (best {best:.2f}%)" if best is not None else ""
    return (
        f"{name}  cross-entropy {record['train_hard_loss']:.4f}  distillation {record['train_soft_loss']:.4g}  "
        f"train {record['train_acc']:.2f}%{tested}  {seconds:.1f}s"
    )
