"""PBS Pro: jobs submitted with ``qsub``, listed with ``qstat``, cancelled with ``qdel``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

from toolbox.sweep.scheduler import (
    PENDING,
    RUNNING,
    Resources,
    Scheduler,
    parse_job_id,
    run_command,
    walltime_hours,
)


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
        return parse_job_id("qsub", run_command(["qsub", *after, str(script)]), r"(\d+(?:\[\d*\])?)(?:\.\S*)?")

    def live_jobs(self) -> dict[str, str]:
        jobs = {}
        for line in run_command(["qstat", "-u", self.user]).splitlines():
            fields = line.split()
            match = re.match(r"(\d+)(\.|$)", fields[0]) if len(fields) >= 10 else None
            if match:
                jobs[match[1]] = RUNNING if fields[-2] in self._running_states else PENDING
        return jobs

    def cancel(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            run_command(["qdel", *ids])
