"""Resume: what last.pt holds and how a run continues from it, the one home of a run's saved state.

last.pt is written atomically after every epoch, every ``--checkpoint_every`` steps and where a stop
signal arrives; it holds the models, the optimiser and schedule of the phase the run is in, the
history, the random state and, within an epoch, the ``Position`` there (the batches done and the
epoch's partial sums). A rerun of the same command reads it (``read_last``), checks that it was
trained with the same flags and teacher, and continues (``restore``): a resumed epoch starts at the
saved batch with the saved sums and ends as an uninterrupted one would. A last.pt that cannot be
used (unreadable, damaged, of another program, of other shapes) is a one-line error that leaves it
in place. Here too: what a rerun finds instead (a finished run, a run of other flags) and the stop
signal a run leaves by.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from toolbox.config import Config
from toolbox.errors import Interrupted, UsageError
from toolbox.methods.phases import PHASE_RECORD
from toolbox.models import NotACheckpoint, read_checkpoint, read_error
from toolbox.rundir import RunDir, differences
from toolbox.stop import StopFlag
from toolbox.training.speed import use_optimizer_kernels

if TYPE_CHECKING:
    from toolbox.training.trainer import Trainer

HISTORY_KEYS = ("train_hard_loss", "train_soft_loss", "train_acc", "test_loss", "test_acc")
KEEP_LAST = "it was left as it is: move it away to restart this run from epoch 0, or restore it"
STATE_DICTS = ("student", "distiller", "optimizer", "scheduler")


@dataclass(frozen=True)
class Position:
    """An epoch's batches done, and the sums over them of cross-entropy x batch size, soft loss x
    batch size and correct predictions, with the number of samples."""

    batch: int = 0
    hard_sum: float = 0.0
    soft_sum: float = 0.0
    correct: float = 0.0
    count: int = 0

    def means(self) -> dict[str, float]:
        """The epoch's training metrics so far, as the history records them."""
        count = max(self.count, 1)
        return {
            "train_hard_loss": self.hard_sum / count,
            "train_soft_loss": self.soft_sum / count,
            "train_acc": 100.0 * self.correct / count,
        }


# -- last.pt, written


def snapshot(trainer: Trainer, position: Optional[Position] = None) -> dict[str, Any]:
    """What last.pt holds: at an epoch's end, or within an epoch at ``position``."""
    state = {
        "config": dataclasses.asdict(trainer.config),  # what a resume checks, even if config.json is lost
        "student": trainer.student.state_dict(),
        "distiller": trainer.distiller.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "history": trainer.history,
        "phase_history": trainer.phase_history,
        "elapsed": trainer.elapsed,
        "teacher_sha256": trainer.teacher_sha256,
        "torch_rng": torch.get_rng_state(),
        "position": None if position is None else dataclasses.asdict(position),
    }
    if trainer.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
    return state


# -- last.pt, read and checked


def position_problem(entry: Any) -> Optional[str]:
    """What makes a last.pt's ``position`` entry unusable, or None (None itself: an epoch's end)."""
    if entry is None:
        return None
    names = {item.name for item in dataclasses.fields(Position)}
    if not isinstance(entry, dict) or set(entry) != names:
        return f"its 'position' entry is not a dict of {', '.join(sorted(names))}"
    counts_ok = all(
        isinstance(entry[key], int) and not isinstance(entry[key], bool) and entry[key] >= 0
        for key in ("batch", "count")
    )
    sums_ok = all(
        isinstance(entry[key], float) and math.isfinite(entry[key]) for key in ("hard_sum", "soft_sum", "correct")
    )
    return None if counts_ok and sums_ok else "its 'position' entry holds other than counts and finite sums"


def last_pt_problem(state: Any) -> Optional[str]:
    """What makes a loaded last.pt unusable for resuming (its structure and types), or None; whether
    its state dicts fit the run's models is checked where they are loaded (``restore``)."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    for key in STATE_DICTS:
        if not isinstance(state.get(key), dict):
            return f"its {key!r} entry is not a state dict"
    if not isinstance(state.get("torch_rng"), torch.Tensor) or state["torch_rng"].dtype != torch.uint8:
        return "its 'torch_rng' entry is not a random-number-generator state"
    if "config" in state and not isinstance(state["config"], dict):
        return "its 'config' entry is not a dict of flags"
    if not isinstance(state.get("elapsed"), (int, float)) or isinstance(state["elapsed"], bool):
        return "its 'elapsed' entry is not a number"
    if not isinstance(state.get("teacher_sha256"), (str, type(None))):
        return "its 'teacher_sha256' entry is not a digest"
    history = state.get("history")
    if not isinstance(history, dict) or set(history) != set(HISTORY_KEYS):
        return f"its 'history' entry is not a dict of {', '.join(HISTORY_KEYS)}"
    for key, values in history.items():
        if not isinstance(values, list) or not all(isinstance(v, float) and math.isfinite(v) for v in values):
            return f"its history's {key!r} is not a list of finite numbers"
    if len({len(values) for values in history.values()}) != 1:
        return "its history's lists have different lengths"
    phases = state.get("phase_history", [])  # absent before preliminary phases existed: none done
    if not isinstance(phases, list) or not all(
        isinstance(record, dict)
        and set(record) == set(PHASE_RECORD)
        and all(isinstance(v, float) and math.isfinite(v) for v in record.values())
        for record in phases
    ):
        return f"its 'phase_history' entry is not a list of records of {', '.join(PHASE_RECORD)}"
    return position_problem(state.get("position"))


def read_last(run: RunDir, device: torch.device) -> Optional[dict[str, Any]]:
    """The run's resumable state, or None when it has none; unreadable or damaged is a one-line
    error that leaves it in place."""
    if not run.last.exists():
        return None
    try:
        state = read_checkpoint(run.last, device)
    except NotACheckpoint as error:
        raise UsageError(f"{run.last} {error}; {KEEP_LAST}") from None
    except Exception as error:  # a damaged pickle fails in many ways (KeyError, UnpicklingError, EOFError, ...)
        raise UsageError(f"{run.last} is unreadable ({read_error(error)[:200]}); {KEEP_LAST}") from None
    problem = last_pt_problem(state)
    if problem is not None:
        raise UsageError(f"{run.last} is not a last.pt of this project: {problem}; {KEEP_LAST}")
    return state


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Continue ``trainer`` from ``read_last``'s state; state dicts that do not fit this run's models
    (missing keys, other shapes, e.g. CRD's memory bank of another data set) are a one-line error."""
    last = trainer.run.last
    trainer.phase_history = list(state.get("phase_history", []))
    if trainer.phases:  # the optimiser of the phase the run is in is the one saved
        trainer.enter_phase()
    if set(state["scheduler"]) != set(trainer.scheduler.state_dict()):
        raise UsageError(f"{last} does not fit this run: its 'scheduler' entry is not this run's schedule; {KEEP_LAST}")
    for key in ("student", "distiller", "optimizer"):
        try:
            getattr(trainer, key).load_state_dict(state[key])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            detail = " ".join(str(error).split())[:200]
            raise UsageError(f"{last} does not fit this run: its {key!r} entry ({detail}); {KEEP_LAST}") from None
    use_optimizer_kernels(trainer.optimizer, trainer.device)
    momenta = ((parameter, entry.get("momentum_buffer")) for parameter, entry in trainer.optimizer.state.items())
    if any(buffer is not None and buffer.shape != parameter.shape for parameter, buffer in momenta):
        raise UsageError(
            f"{last} does not fit this run: its 'optimizer' entry holds momentum of other shapes than "
            f"the parameters; {KEEP_LAST}"
        )
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.history = state["history"]
    trainer.elapsed = state["elapsed"]
    trainer.position = Position(**state["position"]) if state.get("position") else None
    if trainer.position and trainer.position.batch > trainer.steps_per_epoch:  # its epoch would be skipped
        raise UsageError(
            f"{last} does not fit this run: it holds batch {trainer.position.batch} of an epoch of "
            f"{trainer.steps_per_epoch} steps; {KEEP_LAST}"
        )
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), trainer.device)


# -- what a rerun finds, and the stop a run leaves by


def check_same_run(saved: dict[str, Any], config: Config, path: Path, named: bool) -> None:
    """A folder holds one experiment: returning or resuming it for other flags would report or mix
    two experiments as one. ``named``: the folder was given with --experiment_name."""
    changed = differences(saved, config)
    if changed:
        advice = (
            "leave out --experiment_name (runs are named after their flags) or choose another one for a separate run"
            if named
            else "move that folder away to train these flags there"
        )
        raise UsageError(
            f"{path} holds a run with other flags ({'; '.join(changed)}); rerun with its flags to use it, or {advice}"
        )


def check_stop(
    stop: StopFlag,
    run: RunDir,
    current: str,
    done: str,
    batch: Optional[int] = None,
    stopping: Optional[bool] = None,
) -> None:
    """Leave through ``Interrupted`` (exit 75, the job requeues) once a stop signal has arrived
    (``stopping``: the ranks' agreed answer, here or on another rank); ``current``: the epoch being
    trained (``epoch 3``, ``init epoch 2``), ``done``: the last one saved; ``batch``: the current
    epoch's position was saved after that many batches."""
    if stop.signal is not None if stopping is None else stopping:
        kept = f"{run.last} holds {done}" if run.last.exists() else "no epoch has been saved yet"
        if batch is not None:
            kept = f"{run.last} holds {current} up to batch {batch}"
        raise Interrupted(
            f"stopped by signal {stop.name or 'on another rank'} during {current}; {kept}: rerun the same command "
            "to resume"
        )


def finished_metrics(run: RunDir, config: Config, named: bool) -> dict[str, Any]:
    """A finished run's metrics, once its config.json shows it was trained with these flags."""
    saved = run.saved_config()
    if saved is None:
        raise UsageError(
            f"{run.path} has finished but has no config.json, so the flags it was trained with cannot be "
            "checked; restore its config.json, or choose another --experiment_name"
        )
    check_same_run(saved, config, run.path, named)
    metrics = run.read_json(run.metrics)
    best = metrics.get("best_test_acc")
    if not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best):
        raise UsageError(
            f"{run.metrics} has no numeric 'best_test_acc'; it was left as it is: restore it, or move it "
            "away and rerun: it is written again from last.pt"
        )
    print(f"{run.path} has finished already (best test accuracy {best:.2f}%); nothing to do")
    return metrics
