"""SIGUSR1/SIGTERM (preemption, a time limit) and SIGINT (Ctrl-C) stop a run cleanly with exit status 75.

Python's default for these signals kills the process (status 138/143), which a SLURM job script
cannot tell from a crash. The training script installs ``StopFlag`` before its heavy imports, so a
signal during start-up is caught too (one during the interpreter's own start-up still kills it:
run.job counts that as 75, nothing having been written yet).

Two modes. In the training loop the handler only sets the flag, and the loop stops after the
current step, so that the state it saves is consistent. Around waits that change nothing (the
data-set lock, a download, reading checkpoints, an evaluation) ``interruptible`` makes the handler
raise ``Interrupted`` at once: Python resumes a blocking call (flock, a socket read, sleep) that a
signal interrupted unless the handler raises, so a flag alone would be noticed after the wait, if ever.
``Interrupted`` is a ``BaseException`` so that no ``except Exception`` in the code it crosses takes it
for an error of its own. Ctrl-C is one of them: the run saves where it is and says so in one line; a
second Ctrl-C stops it at once (last.pt keeps the last save; a temporary file a write was making is
removed when the run resumes).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Optional, Sequence

from toolbox.errors import Interrupted

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Set by SIGUSR1, SIGTERM or SIGINT; the training loop reads it between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self.waiting_for: Optional[str] = None  # inside ``interruptible``: what is being waited for

    def install(self, caught: Sequence[int] = ()) -> dict[int, Any]:
        """Catch the stop signals from now on, and take over ``caught``, those an earlier handler
        recorded; the handlers they replace."""
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        if self.signal is None and caught:
            self.signal = caught[0]
        return previous

    def _handle(self, signum: int, frame: Any) -> None:
        again = self.signal is not None and signum == signal.SIGINT  # a second Ctrl-C: stop now
        self.signal = signum
        if again:
            raise Interrupted(
                "stopped at once by a second SIGINT; the run folder keeps its last save: rerun the same "
                "command to resume from it"
            )
        if self.waiting_for is not None:
            self.raise_interrupted("while")

    def raise_interrupted(self, when: str) -> None:
        raise Interrupted(
            f"stopped by signal {self.name} {when} {self.waiting_for}; nothing was lost: rerun the same command"
        )

    @contextlib.contextmanager
    def interruptible(self, waiting_for: str) -> Iterator[None]:
        """A stop signal in the block (or one that came before it) raises ``Interrupted`` at once;
        ``waiting_for`` says in its message what was interrupted."""
        previous, self.waiting_for = self.waiting_for, waiting_for
        try:
            if self.signal is not None:
                self.raise_interrupted("before")
            yield
        finally:
            self.waiting_for = previous

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextlib.contextmanager
def interruptible(waiting_for: str) -> Iterator[None]:
    """``StopFlag.interruptible`` of the installed flag (or of one installed for the block)."""
    with stop_flag() as flag, flag.interruptible(waiting_for):
        yield


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
