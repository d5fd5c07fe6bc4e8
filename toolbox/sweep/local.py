"""The local scheduler: the job scripts run on this machine, a few at a time, for users without a cluster."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional

from toolbox.sweep.scheduler import RUNNING, NotStarted, Scheduler, SchedulerError


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
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=60
        )
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
        return sorted(self.gpus, key=lambda gpu: busy[gpu])[: self.gpus_per_job]  # sorted() is stable: in order on ties

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
            raise SchedulerError(
                f"{log_path} is a symbolic link, and the project never writes through one; it was "
                "left as it is: remove the link, then rerun"
            ) from None
        with os.fdopen(descriptor, "ab") as log:
            process = subprocess.Popen(
                ["bash", str(script)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
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
