"""Errors that the command-line entry points turn into a one-line message and an exit code."""


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
    """SIGUSR1/SIGTERM arrived (preemption, time limit): exit 75 so the job can be requeued. Like
    KeyboardInterrupt, a ``BaseException``: the signal handler may raise it inside any code
    (toolbox/stop.py), whose ``except Exception`` must not take it for a failure of its own."""

    exit_code = 75
