"""What a rerun of a run's command finds in its folder: a finished run (its metrics), a run of
other flags (an error), or a stop signal to leave by, saying where last.pt stands for resuming.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from toolbox.config import Config
from toolbox.errors import Interrupted, UsageError
from toolbox.rundir import RunDir, differences
from toolbox.stop import StopFlag


def check_same_run(saved: dict[str, Any], config: Config, path: Path, named: bool) -> None:
    """A folder holds one experiment: returning or resuming it for other flags would report or mix
    two experiments as one. ``named``: the folder was given with --experiment_name."""
    changed = differences(saved, config)
    if changed:
        advice = ("leave out --experiment_name (runs are named after their flags) or choose another one for a separate run"
                  if named else "move that folder away to train these flags there")
        raise UsageError(f"{path} holds a run with other flags ({'; '.join(changed)}); rerun with its flags to use it, "
                         f"or {advice}")



def check_stop(stop: StopFlag, run: RunDir, epoch: int, batch: Optional[int] = None, stopping: Optional[bool] = None) -> None:
    """Leave through ``Interrupted`` (exit 75, the job requeues) once a stop signal has arrived
    (``stopping``: the ranks' agreed answer, here or on another rank); ``batch``: the epoch's
    position was saved after that many batches."""
    if stop.signal is not None if stopping is None else stopping:
        kept = f"{run.last} holds epoch {epoch}" if run.last.exists() else "no epoch has been saved yet"
        if batch is not None:
            kept = f"{run.last} holds epoch {epoch + 1} up to batch {batch}"
        raise Interrupted(f"stopped by signal {stop.name or 'on another rank'} during epoch {epoch + 1}; {kept}: rerun "
                          "the same command to resume")



def finished_metrics(run: RunDir, config: Config, named: bool) -> dict[str, Any]:
    """A finished run's metrics, once its config.json shows it was trained with these flags."""
    saved = run.saved_config()
    if saved is None:
        raise UsageError(f"{run.path} has finished but has no config.json, so the flags it was trained with cannot be "
                         "checked; restore its config.json, or choose another --experiment_name")
    check_same_run(saved, config, run.path, named)
    metrics = run.read_json(run.metrics)
    best = metrics.get("best_test_acc")
    if not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best):
        raise UsageError(f"{run.metrics} has no numeric 'best_test_acc'; it was left as it is: restore it, or move it "
                         "away and rerun: it is written again from last.pt")
    print(f"{run.path} has finished already (best test accuracy {best:.2f}%); nothing to do")
    return metrics
