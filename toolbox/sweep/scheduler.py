"""Batch schedulers behind one small interface, and the rendering of ``run.job``.

``runner.py`` decides what to submit; a ``Scheduler`` only knows how: ``submit`` a script (after
another job, optionally), list the user's ``live_jobs``, ``cancel`` jobs. One module per scheduler,
as submitit keeps them: ``slurm`` (``sbatch``/``squeue``/``scancel``), ``pbs``
(``qsub``/``qstat``/``qdel``), ``local`` (the scripts run on this machine, for users without a
cluster). Tests swap in a fake.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Optional

from toolbox.errors import UsageError

RUNNING = "RUNNING"


PENDING = "PENDING"
"""The two states ``live_jobs`` reports: a job is on a node, or waiting (queued, held, requeued)."""


DIRECTIVE_PREFIXES = ("#SBATCH", "#PBS")


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


_RAW_VALUES = frozenset({"env_setup", "command"})
"""Placeholders filled verbatim: the set-up line is shell code by design, the command is already quoted."""


class SchedulerError(Exception):
    """The scheduler refused a request or could not be asked; the message is its own words."""


class NotStarted(Exception):
    """A job not submitted (or, by ``LocalScheduler``, not started), nor to be in this sweep: a stop signal ended it."""


@dataclass(frozen=True)
class Resources:
    """What each job asks for; an empty (or zero) value leaves the directive out."""

    partition: str = ""
    account: str = ""
    time: str = ""  # [D-]HH:MM:SS
    gpus: int = 1
    cpus: int = 4
    mem: str = "16G"  # <number><K|M|G|T>
    signal_seconds: int = 300  # SLURM: USR1 this long before the time limit
    nodes: int = 1
    ranks_per_node: int = 1  # training processes per node, one GPU each (none when gpus is 0)
    runs_per_job: int = 1  # runs trained side by side on the job's GPU

    @property
    def ranks(self) -> int:
        """The run's processes: more than one trains it data-parallel (toolbox/distributed.py)."""
        return self.nodes * self.ranks_per_node

    @property
    def job_cpus(self) -> int:
        """CPUs per task: ``cpus`` for each of the runs sharing the job."""
        return self.cpus * self.runs_per_job

    @property
    def node_memory(self) -> str:
        """``mem`` for each process on a node."""
        return scaled_memory(self.mem, self.ranks_per_node * self.runs_per_job)


def scaled_memory(memory: str, factor: int) -> str:
    """``16G`` times ``factor``, in the same unit: a node's memory for ``factor`` processes."""
    return f"{int(memory[:-1]) * factor}{memory[-1]}" if memory else ""


def walltime_hours(time_limit: str) -> str:
    """``[D-]HH:MM:SS`` as PBS wants it (hours may exceed 24): ``2-01:00:00`` -> ``49:00:00``."""
    days, _, clock = time_limit.rpartition("-")
    hours, minutes, seconds = clock.split(":")
    return f"{int(days or 0) * 24 + int(hours):02d}:{minutes}:{seconds}"


def render(template: str, directive: str, values: dict[str, str]) -> str:
    """Fill ``run.job``: keep only the header lines of this scheduler (``directive``, e.g.
    ``#SBATCH``; ``""`` keeps none), leave out a line whose value is empty, and shell-quote every
    value except the raw ones. A value with a line break is refused: it would inject lines."""
    lines = []
    for line in template.splitlines():
        prefix = line.split(" ", 1)[0]
        if prefix in DIRECTIVE_PREFIXES and prefix != directive:
            continue
        names = _PLACEHOLDER.findall(line)
        if any(values[name] == "" for name in names):
            continue
        for name in names:
            if any(char in values[name] for char in "\n\r\0"):
                raise UsageError(f"{name} must be one line; got {values[name]!r}")
        lines.append(_PLACEHOLDER.sub(lambda m: _quoted(m[1], values[m[1]]), line))
    return "\n".join(lines) + "\n"


def _quoted(name: str, value: str) -> str:
    return value if name in _RAW_VALUES else shlex.quote(value)


def run_command(command: list[str]) -> str:
    """Run a scheduler command; its stdout, or ``SchedulerError`` with its own message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SchedulerError(
            f"{command[0]} not found: run this on the cluster's login node, "
            f"or choose another --scheduler (slurm, pbs, local)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{command[0]} did not answer within 120 s") from None
    if done.returncode != 0:
        message = done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}"
        raise SchedulerError(" ".join(message.split()))
    return done.stdout


def parse_job_id(command: str, answer: str, pattern: str) -> str:
    """The job id in a submission command's answer; anything else (a wrapper's words, nothing) is
    the scheduler's error, not a job id to record and to make students wait for."""
    match = re.fullmatch(pattern, answer.strip())
    if not match:
        raise SchedulerError(
            f"{command} answered {' '.join(answer.split())!r}, not a job id; check the job "
            f"in the queue, as it may have been submitted"
        )
    return match[1]


def split_fields(command: str, line: str, count: int) -> list[str]:
    """One line of a listing command, split into its ``count`` fields, or SchedulerError naming it:
    a line misread would let a queued job's run be submitted twice."""
    fields = line.split()
    if len(fields) != count:
        raise SchedulerError(f"{command} printed a line runner.py cannot read: {line.strip()!r}")
    return fields


class Scheduler(ABC):
    """How jobs are submitted, listed and cancelled; ``directive`` picks run.job's header lines."""

    name: ClassVar[str]
    directive: ClassVar[str]
    stopped_by: Optional[signal.Signals] = None
    """The stop signal (Ctrl-C, SIGTERM, SIGUSR1) that ended the sweep: no job is submitted after it."""
    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    stop_outcome: ClassVar[str] = "the jobs submitted before it stay queued; run runner.py again to submit the rest"

    def header_values(self, resources: Resources, run_dir: Path) -> dict[str, str]:
        """Values of this scheduler's header placeholders in run.job."""
        return {}

    def launcher(self, resources: Resources) -> list[str]:
        """What starts the training's processes, before its command: nothing for one process. A
        scheduler that cannot start several refuses them."""
        if resources.ranks > 1:
            raise UsageError(
                f"--scheduler {self.name} starts one process per run; --nodes {resources.nodes} "
                f"--gpus_per_node {resources.ranks_per_node} needs --scheduler slurm, or torchrun in a job "
                "script of your own (docs/many-gpus.md)"
            )
        return []

    @abstractmethod
    def submit(self, script: Path, dependency: Optional[str] = None) -> str:
        """Queue ``script``, to start only once job ``dependency`` has succeeded; the job id."""

    @abstractmethod
    def live_jobs(self) -> dict[str, str]:
        """The user's queued and running jobs: job id -> ``RUNNING`` or ``PENDING``."""

    @abstractmethod
    def cancel(self, ids: Iterable[str]) -> None:
        """Cancel these jobs."""

    def runs(self, job_id: Optional[str], live: dict[str, str], script: Callable[[], Path]) -> bool:
        """Whether job ``job_id`` (its script given on demand) is queued or running, so ``cancel`` can stop it."""
        return job_id in live

    def final_states(self, ids: Iterable[str]) -> dict[str, str]:
        """How ended jobs ended (e.g. ``TIMEOUT``, ``FAILED exit 1``), where the scheduler keeps
        accounts; empty where it does not."""
        return {}

    def wait_all(self) -> dict[str, int]:
        """Wait for the jobs this object started, where it runs them itself; the non-zero exit
        statuses by job id. Batch schedulers return at once: their jobs outlive runner.py."""
        return {}

    @contextlib.contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """For the block, a stop signal to runner.py ends the sweep between two submissions, never
        inside one (a job submitted with no job.json to record it would be submitted twice):
        ``stopped_by`` is set and ``on_stop`` called; the sweep submits no further job."""

        def stop(signum: int, frame: object) -> None:
            self.stopped_by = signal.Signals(signum)
            self.on_stop(self.stopped_by)

        previous = {sig: signal.signal(sig, stop) for sig in self.STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_stop(self, stop: signal.Signals) -> None:
        """What a stop signal does to the jobs submitted: batch jobs outlive runner.py, they run on."""
