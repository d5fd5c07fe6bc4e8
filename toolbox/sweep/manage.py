"""A submitted sweep afterwards: its status table, cancelling its jobs, cleaning its unfinished runs.

These are ``runner.py --status``, ``--cancel`` and ``--clean`` (and ``util.sh``'s): they read the
run folders and the scheduler's queue, and submit nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from toolbox.errors import UsageError
from toolbox.rundir import METRICS_FILE, RunDir
from toolbox.sweep.folders import (
    CONFLICTING,
    CORRUPT,
    FAILED,
    FINISHED,
    NOT_STARTED,
    PENDING,
    QUIET_S,
    RUNNING,
    folder_state,
    is_ours,
    job_script,
    recently_changed,
    remove_own_files,
    run_folders,
    run_state,
)
from toolbox.sweep.grid import Run, teachers
from toolbox.sweep.scheduler import Scheduler, SchedulerError


def status_table(runs: list[Run], scheduler: Scheduler) -> str:
    """The grid as a table, teachers first, with the best accuracy of finished runs."""
    try:
        live, note = scheduler.live_jobs(), ""
    except SchedulerError as error:
        live, note = {}, f"\n(the queue could not be listed: {error}; queued runs show as failed)"
    rows = [(run, run_state(run, live, scheduler)) for run in teachers(runs) + runs]
    ended = scheduler.final_states(state.job_id for _, state in rows if state.state == FAILED and state.job_id)
    lines = [f"{'state':<24} {'job':<12} {'best acc':>8}  run"]
    counts: dict[str, int] = {}
    for run, state in rows:
        counts[state.state] = counts.get(state.state, 0) + 1
        accuracy = state.detail if state.state == FINISHED else ""
        shown = (
            f"{state.state} ({ended[state.job_id]})" if state.job_id in ended and state.state == FAILED else state.state
        )
        why = (
            f"  ({state.detail})"
            if state.state in (CONFLICTING, CORRUPT) or (state.state == RUNNING and not state.job_id)
            else ""
        )
        lines.append(f"{shown:<24} {state.job_id or '':<12} {accuracy:>8}  {run.name}{why}")
    shown_states = (FINISHED, RUNNING, PENDING, FAILED, NOT_STARTED, CONFLICTING, CORRUPT)
    lines.append(
        ", ".join(
            f"{state} {counts.get(state, 0)}"
            for state in shown_states
            if counts.get(state) or state in shown_states[:5]
        )
    )
    return "\n".join(lines) + note


def cancel_jobs(experiments_dir: Path, scheduler: Scheduler, out: Callable[[str], None] = print) -> list[str]:
    """Cancel the live jobs that runner.py recorded under ``experiments_dir``; their ids."""
    live = scheduler.live_jobs()
    ids = []
    for path in run_folders(experiments_dir):
        run = RunDir(path)
        state = folder_state(run, live, scheduler.name)
        if state.state in (RUNNING, PENDING) and scheduler.runs(
            state.job_id, live, lambda: job_script(run, run.read_job())
        ):
            ids.append(state.job_id)
            out(f"cancel {state.job_id} ({state.state})  {path.relative_to(experiments_dir)}")
    ids = list(dict.fromkeys(ids))  # a pack's job once
    scheduler.cancel(ids)
    out(f"cancelled {len(ids)} jobs")
    return ids


def clean(
    experiments_dir: Path, scheduler: Scheduler, confirm: Callable[[str], bool], out: Callable[[str], None] = print
) -> list[Path]:
    """Delete unfinished runs that nothing is training, once ``confirm`` agrees. Only folders that
    are provably this project's runs (``RunDir.is_ours``) qualify, never one holding a metrics.json
    (its own or below it), never one whose lock a live process holds, never one whose job went to
    another scheduler (its queue is not asked, so the job may still wait there); and only the files the
    project writes are deleted: a folder with anything else in it is kept with that. A damaged run,
    and one changed in the last ``QUIET_S`` seconds (a run starting), are listed and kept."""
    live = scheduler.live_jobs()
    doomed = []
    for path in run_folders(experiments_dir):
        run = RunDir(path)
        state = folder_state(run, live, scheduler.name)
        job = run.read_job() if state.state != CORRUPT else None
        if state.state == CORRUPT:
            out(f"kept {path}: {CORRUPT}: {state.detail}")
        elif job is not None and job["scheduler"] != scheduler.name:
            out(
                f"kept {path}: its job {job['job_id']} went to {job['scheduler']}, whose queue --scheduler "
                f"{scheduler.name} cannot see; clean with --scheduler {job['scheduler']}"
            )
        elif (
            state.state in (FAILED, NOT_STARTED) and is_ours(run, experiments_dir) and not any(path.rglob(METRICS_FILE))
        ):
            if recently_changed(run):
                out(f"kept {path}: changed in the last {QUIET_S} s, it may be a run that is starting")
            else:
                doomed.append(path)
                out(f"unfinished, no live job or process: {path}")
    if not doomed:
        out("nothing to clean")
        return []
    if not confirm(f"delete these {len(doomed)} run folders? [y/N] "):
        out("nothing deleted")
        return []
    deleted = []
    for path in doomed:
        run = RunDir(path)
        try:
            with run.locked(wait_s=0):  # a training that started meanwhile keeps its folder
                remove_own_files(run)
        except UsageError as error:
            out(f"kept {path}: {error}")
            continue
        kept = sorted(p.name for p in path.iterdir())
        if kept:
            out(f"kept {path}: it also holds {', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}")
            continue
        path.rmdir()
        deleted.append(path)
        for parent in path.parents:  # and the folders that only held it, up to the experiments folder
            if parent == experiments_dir or not parent.is_relative_to(experiments_dir) or any(parent.iterdir()):
                break
            parent.rmdir()
    out(f"deleted {len(deleted)} run folders")
    return deleted
