"""Batch schedulers behind one small interface, and the rendering of ``run.job``.

``runner.py`` decides what to submit; a ``Scheduler`` only knows how: ``submit`` a script (after
another job, optionally), list the user's ``live_jobs``, ``cancel`` jobs. SLURM and PBS are asked
through their commands (``sbatch``/``squeue``/``scancel``, ``qsub``/``qstat``/``qdel``); ``local``
runs the scripts on this machine for users without a cluster. Tests swap in a fake.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections import Counter
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


def _run(command: list[str]) -> str:
    """Run a scheduler command; its stdout, or ``SchedulerError`` with its own message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SchedulerError(f"{command[0]} not found: run this on the cluster's login node, "
                             f"or choose another --scheduler (slurm, pbs, local)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{command[0]} did not answer within 120 s") from None
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}")
        raise SchedulerError(" ".join(message.split()))
    return done.stdout


def _job_id(command: str, answer: str, pattern: str) -> str:
    """The job id in a submission command's answer; anything else (a wrapper's words, nothing) is
    the scheduler's error, not a job id to record and to make students wait for."""
    match = re.fullmatch(pattern, answer.strip())
    if not match:
        raise SchedulerError(f"{command} answered {' '.join(answer.split())!r}, not a job id; check the job "
                             f"in the queue, as it may have been submitted")
    return match[1]


def _fields(command: str, line: str, count: int) -> list[str]:
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
            raise UsageError(f"--scheduler {self.name} starts one process per run; --nodes {resources.nodes} "
                             f"--gpus_per_node {resources.ranks_per_node} needs --scheduler slurm, or torchrun in a job "
                             "script of your own (README, Many GPUs and nodes)")
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


class SlurmScheduler(Scheduler):
    name = "slurm"
    directive = "#SBATCH"
    _running_states = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
    _ended_states = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                               "OUT_OF_MEMORY", "REVOKED"})

    def __init__(self, user: str) -> None:
        self.user = user

    def header_values(self, resources: Resources, run_dir: Path) -> dict[str, str]:
        several = resources.ranks > 1
        return {
            "slurm_log": str(run_dir / "slurm-%j.out"),
            "time": resources.time,
            "partition": resources.partition,
            "account": resources.account,
            "gpus": str(resources.gpus or "") if not several else "",
            "nodes": str(resources.nodes) if several else "",
            "tasks_per_node": str(resources.ranks_per_node) if several else "",
            "gpus_per_node": str(resources.ranks_per_node) if several and resources.gpus else "",
            "cpus": str(resources.job_cpus or ""),  # per task: one task per process
            "mem": resources.node_memory,
            "signal_seconds": str(resources.signal_seconds or ""),
            "world_size": str(resources.ranks) if several else "",
            # srun ends its tasks at once on TERM, but passes USR1 on to every task: the training
            # stops alike on both, and the job script alone decides whether to requeue.
            "stop_signal": "USR1" if several else "TERM",
        }

    def launcher(self, resources: Resources) -> list[str]:
        """Several processes: srun starts one task per process on every node (SLURM's way for MPI
        and PyTorch alike), and each becomes a rank of PyTorch's env:// rendezvous, which run.job
        points at the job's first node. ``--wait``: a minute after one task has ended srun ends
        the others, which might wait for a dead rank in a GPU collective for long; ranks that stop
        or finish leave together (not ``--kill-on-bad-exit``: 75, a clean stop, counts as bad)."""
        if resources.ranks == 1:
            return []
        as_rank = 'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" LOCAL_WORLD_SIZE="$SLURM_NTASKS_PER_NODE"; exec "$@"'
        return ["srun", "--wait=60", "bash", "-c", as_rank, "rank"]

    def submit(self, script: Path, dependency: Optional[str] = None) -> str:
        # kill-on-invalid-dep: if the teacher fails, its students leave the queue instead of
        # waiting forever, and the next runner.py resubmits them with a new teacher job.
        after = [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"] if dependency else []
        return _job_id("sbatch", _run(["sbatch", "--parsable", *after, str(script)]), r"(\d+(?:_\d+)?)(?:;\S*)?")

    def live_jobs(self) -> dict[str, str]:
        # All states, not squeue's default few: a job between two states (being requeued, say)
        # must still count as live, or it would be submitted twice. Only an ended job is not.
        jobs = {}
        for line in _run(["squeue", "--noheader", "--states=all", "--user", self.user, "--format=%i %T"]).splitlines():
            job_id, state = _fields("squeue", line, 2)
            if state not in self._ended_states:
                jobs[job_id] = RUNNING if state in self._running_states else PENDING
        return jobs

    def cancel(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            _run(["scancel", *ids])

    def final_states(self, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        if not ids:
            return {}
        try:
            out = _run(["sacct", "--noheader", "--allocations", "--parsable2",
                        "--format=JobID,State,ExitCode", "--jobs", ",".join(ids)])
        except SchedulerError:
            return {}  # no accounting on this cluster
        states = {}
        for line in out.splitlines():
            if line.count("|") != 2:
                continue  # not a job's line (a warning): its reason is a courtesy, not worth failing for
            job_id, state, exit_code = line.split("|")
            status = exit_code.split(":")[0]
            states[job_id] = state.split()[0] + (f" exit {status}" if status not in ("", "0") else "")
        return states


class PbsScheduler(Scheduler):
    """PBS Pro / OpenPBS. Job ids are kept as their sequence number (``1234`` of
    ``1234.server``), which PBS accepts everywhere and which survives qstat's column widths."""

    name = "pbs"
    directive = "#PBS"
    _running_states = frozenset({"R", "E"})

    def __init__(self, user: str) -> None:
        self.user = user

    def header_values(self, resources: Resources, run_dir: Path) -> dict[str, str]:
        select = f"1:ncpus={resources.job_cpus or 1}"
        if resources.mem:
            select += f":mem={resources.node_memory}B"
        if resources.gpus:
            select += f":ngpus={resources.gpus}"
        return {
            "log_dir": f"{run_dir}/",  # a folder: PBS names the files <job name>.o<id> / .e<id>
            "partition": resources.partition,
            "account": resources.account,
            "pbs_select": select,
            "pbs_walltime": walltime_hours(resources.time) if resources.time else "",
        }

    def submit(self, script: Path, dependency: Optional[str] = None) -> str:
        after = ["-W", f"depend=afterok:{dependency}"] if dependency else []
        return _job_id("qsub", _run(["qsub", *after, str(script)]), r"(\d+(?:\[\d*\])?)(?:\.\S*)?")

    def live_jobs(self) -> dict[str, str]:
        jobs = {}
        for line in _run(["qstat", "-u", self.user]).splitlines():
            fields = line.split()
            match = re.match(r"(\d+)(\.|$)", fields[0]) if len(fields) >= 10 else None
            if match:
                jobs[match[1]] = RUNNING if fields[-2] in self._running_states else PENDING
        return jobs

    def cancel(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            _run(["qdel", *ids])


def shell_status(returncode: int) -> int:
    """A process's exit status as a shell reports it (128 + the signal that killed it, e.g. 137 for
    SIGKILL), as run.job reports a training's, not Python's negative signal number."""
    return 128 - returncode if returncode < 0 else returncode


def local_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them: that variable's own list where it is
    set, else nvidia-smi's indices; none without either."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [gpu.strip() for gpu in given.split(",") if gpu.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return listed.stdout.split() if listed.returncode == 0 else []


class LocalScheduler(Scheduler):
    """Runs the job scripts on this machine, ``parallel`` at a time, with ``bash``; each job's
    output goes to ``local.out`` beside its script. ``submit`` blocks while all slots are busy,
    and a job waits for its dependency (and is not run when that failed). Each job gets
    ``gpus_per_job`` of ``gpus`` (CUDA_VISIBLE_DEVICES), the least busy first, so that jobs side by
    side spread over the machine's GPUs as a cluster would place them."""

    name = "local"
    stop_outcome = "its running jobs were stopped, each run keeping its last.pt; run runner.py again to resume them"
    directive = ""
    log_name = "local.out"

    def __init__(self, parallel: int = 1, gpus: Iterable[str] = (), gpus_per_job: int = 1) -> None:
        self.parallel = parallel
        self.gpus = list(gpus)
        self.gpus_per_job = gpus_per_job
        self._jobs: dict[str, subprocess.Popen] = {}
        self._job_gpus: dict[str, list[str]] = {}

    def _next_gpus(self) -> list[str]:
        busy = Counter(gpu for job_id in self.live_jobs() for gpu in self._job_gpus[job_id])
        return sorted(self.gpus, key=lambda gpu: busy[gpu])[:self.gpus_per_job]  # sorted() is stable: in order on ties

    def submit(self, script: Path, dependency: Optional[str] = None) -> str:
        if dependency is not None:
            status = shell_status(self._jobs[dependency].wait())
            if self.stopped_by:  # the job it waited for was stopped with the sweep
                raise NotStarted
            if status != 0:
                raise SchedulerError(f"not run: job {dependency} it depends on exited with status {status}")
        while len(self.live_jobs()) >= self.parallel and not self.stopped_by:
            time.sleep(0.2)
        if self.stopped_by:
            raise NotStarted
        # Share the cores between the jobs (and run.job shares a job's among its runs): torch's
        # threads spin, and more threads than cores make every run several times slower
        # (bench/RESULTS.md, "Threads on a shared CPU").
        # The cores this process may use: inside a batch allocation those are the allocation's, not the node's.
        threads = str(max(1, len(os.sched_getaffinity(0)) // self.parallel))
        # A local job is no SLURM job, even when runner.py runs inside one: run.job must neither take
        # that job's CPUs for its own (every local job would use them all) nor requeue it after USR1.
        env = {name: value for name, value in os.environ.items() if name not in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK")}
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", threads)
        gpus = self._next_gpus()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        log_path = script.parent / self.log_name
        try:  # as every file the project appends to in a run folder: never through a link
            descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise SchedulerError(f"{log_path} is a symbolic link, and the project never writes through one; it was "
                                 "left as it is: remove the link, then rerun") from None
        with os.fdopen(descriptor, "ab") as log:
            process = subprocess.Popen(["bash", str(script)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env)
        job_id = f"local-{process.pid}"
        self._jobs[job_id] = process
        self._job_gpus[job_id] = gpus
        if self.stopped_by:  # it came while the job was being started, before it was known
            process.send_signal(self.stopped_by)
        return job_id

    def live_jobs(self) -> dict[str, str]:
        return {job_id: RUNNING for job_id, process in self._jobs.items() if process.poll() is None}

    @staticmethod
    def alive(job_id: Optional[str], script: Path) -> bool:
        """Whether the job ``local-<pid>`` that another runner.py started on this machine still runs
        ``script`` (a process id reused by another program does not count)."""
        pid = (job_id or "").removeprefix("local-")
        if not pid.isdigit():
            return False
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(os.fsencode(str(path)) in command for path in (script, script.resolve()))

    def runs(self, job_id: Optional[str], live: dict[str, str], script: Callable[[], Path]) -> bool:
        return job_id in live or self.alive(job_id, script())  # this runner.py's job, or another's

    def cancel(self, ids: Iterable[str]) -> None:
        """SIGTERM to each job: its run.job stops its trainings (75, last.pt intact). A job of another
        runner.py is known by its process id, checked (``alive``) just before."""
        for job_id in ids:
            if job_id in self._jobs:
                self._jobs[job_id].terminate()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(job_id.removeprefix("local-")), signal.SIGTERM)

    def wait_all(self) -> dict[str, int]:
        statuses = {job_id: shell_status(process.wait()) for job_id, process in self._jobs.items()}
        return {job_id: status for job_id, status in statuses.items() if status != 0}

    def on_stop(self, stop: signal.Signals) -> None:
        """Ctrl-C, a kill or a time limit on runner.py stops the sweep as it stops a cluster job:
        each running job gets the signal, which its run.job passes on to its trainings (they stop
        after their current step, status 75, last.pt intact), no further job starts, and runner.py
        waits for them to end. Without this the jobs would train on, orphaned, with nothing to
        count their outcome."""
        for process in self._jobs.values():
            if process.poll() is None:
                process.send_signal(stop)
