"""What both scripts share at their edge: the one-line argument parser, exit statuses, the main guard
that turns the project's errors into one line and a status, quiet closed pipes.

The exit statuses (docs/run-folder.md lists them): 0 done, 1 diverged or a lost rank, 2
bad input, 74 a failed write, 75 stopped by a signal (rerun to resume), 141 a closed pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, NoReturn

from toolbox.errors import DivergedError, Interrupted, IOFailure, UsageError

IO_ERROR = IOFailure.exit_code  # sysexits' EX_IOERR: a write failed (full disk, permissions)
CLOSED_PIPE = 141  # what a shell reports for a process killed by SIGPIPE


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit status 2), not the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def wait_passively() -> None:
    """Let torch's CPU threads sleep, not spin, while they wait for each other: on a CPU that
    another busy process shares, spinning threads make training several times slower; waiting
    passively keeps the speed of the cores left (bench/RESULTS.md, "Threads on a shared CPU").
    OpenMP reads this once, when torch loads: call it before. A value already set wins, and a
    SLURM job given its own CPUs keeps OpenMP's default (a short spin, then sleep): on cores that
    nothing else uses, spinning is faster."""
    if "SLURM_CPUS_PER_TASK" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def quiet_on_closed_pipe(main: Callable[[], int]) -> int:
    """Run a script's ``main``; when the reader of its output has gone (``| head``), end quietly
    instead of with a BrokenPipeError traceback (Python's documentation, "Note on SIGPIPE")."""
    try:
        status = main()
        sys.stdout.flush()  # inside the try: a pending write can fail here too
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's last flush does not fail again
        return CLOSED_PIPE


def exit_process(status: int) -> NoReturn:
    """End the script with ``status``. A rank of a data-parallel run leaves through ``os._exit`` once
    its output is flushed: once DDP has used it, torch's process group keeps its worker threads past
    ``destroy_process_group``, and one that releases a finished collective while the interpreter shuts
    down aborts the process (``terminate called without an active exception``, exit -6), however
    cleanly the run ended. Every file of the run is closed (and its writes are atomic) by then."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
                stream.flush()
        os._exit(status)
    sys.exit(status)


def main_guard(run, *args) -> int:
    """Run an entry point, turning the project's errors into one line on stderr and an exit code
    (docs/run-folder.md lists them)."""
    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun every rank meets the same error: rank 0 says it
    try:
        run(*args)
    except (UsageError, DivergedError, Interrupted, IOFailure) as error:
        if speaks:
            print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # not a failed write of the run's: quiet_on_closed_pipe ends the script
        raise
    except RuntimeError as error:
        if not lost_rank(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"error: rank {os.environ.get('RANK', '0')} lost another rank of this run ({first_line[-200:]}); the run "
            "folder holds its last save: rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    except OSError as error:  # a full disk, a folder that became read-only, ...
        if speaks:
            print(
                f"error: {os_error_line(error)}; fix that (free space, permissions) and rerun the same "
                f"command: the run resumes from its last save",
                file=sys.stderr,
            )
        return IO_ERROR
    return 0


def lost_rank(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective failing because another rank of a data-parallel run died
    (gloo and NCCL raise RuntimeErrors): every survivor then says so in one line, not a traceback."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed

    text = str(error)
    return isinstance(error, torch.distributed.DistError) or any(
        clue in text for clue in ("Connection reset by peer", "Connection closed by peer", "NCCL", "gloo")
    )


def os_error_line(error: OSError) -> str:
    """``path: reason``, the part of a failed write's one-line message that names it."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"
