"""SLURM: jobs submitted with ``sbatch``, listed with ``squeue``, cancelled with ``scancel``, their ends read
with ``sacct``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from toolbox.sweep.scheduler import (
    PENDING,
    RUNNING,
    Resources,
    Scheduler,
    SchedulerError,
    parse_job_id,
    run_command,
    split_fields,
)


class SlurmScheduler(Scheduler):
    name = "slurm"
    directive = "#SBATCH"
    _running_states = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
    _ended_states = frozenset(
        {
            "COMPLETED",
            "CANCELLED",
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "BOOT_FAIL",
            "DEADLINE",
            "OUT_OF_MEMORY",
            "REVOKED",
        }
    )

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
        as_rank = (
            'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" LOCAL_WORLD_SIZE="$SLURM_NTASKS_PER_NODE"; '
            'exec "$@"'
        )
        return ["srun", "--wait=60", "bash", "-c", as_rank, "rank"]

    def submit(self, script: Path, dependency: Optional[str] = None) -> str:
        # kill-on-invalid-dep: if the teacher fails, its students leave the queue instead of
        # waiting forever, and the next runner.py resubmits them with a new teacher job.
        after = [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"] if dependency else []
        return parse_job_id(
            "sbatch", run_command(["sbatch", "--parsable", *after, str(script)]), r"(\d+(?:_\d+)?)(?:;\S*)?"
        )

    def live_jobs(self) -> dict[str, str]:
        # All states, not squeue's default few: a job between two states (being requeued, say)
        # must still count as live, or it would be submitted twice. Only an ended job is not.
        jobs = {}
        for line in run_command(
            ["squeue", "--noheader", "--states=all", "--user", self.user, "--format=%i %T"]
        ).splitlines():
            job_id, state = split_fields("squeue", line, 2)
            if state not in self._ended_states:
                jobs[job_id] = RUNNING if state in self._running_states else PENDING
        return jobs

    def cancel(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            run_command(["scancel", *ids])

    def final_states(self, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        if not ids:
            return {}
        try:
            out = run_command(
                [
                    "sacct",
                    "--noheader",
                    "--allocations",
                    "--parsable2",
                    "--format=JobID,State,ExitCode",
                    "--jobs",
                    ",".join(ids),
                ]
            )
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
