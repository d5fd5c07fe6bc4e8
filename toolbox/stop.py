"""SIGUSR1/SIGTERM (preemption, a time limit) stop a run cleanly with exit status 75.

Python's default for these signals kills the process (status 138/143), which a SLURM job script
cannot tell from a crash. The training script installs ``StopFlag`` before its heavy imports, so a
signal during start-up is caught too; the training loop stops after the current step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Optional

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopFlag:
    """Set by SIGUSR1/SIGTERM; the training loop reads it between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def install(self) -> dict[int, Any]:
        """Catch the stop signals from now on; the handlers they replace."""
        return {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextlib.contextmanager
def stop_flag() -> Iterator[StopFlag]:
    """The installed flag (one the entry point installed early keeps the signals it caught), or a
    new one for the block, with the previous handlers restored after it."""
    current = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if isinstance(current, StopFlag):
        yield current
        return
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return
    previous = flag.install()
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
