"""last.pt, the state a run resumes from: what it must hold, and reading it.

A last.pt that cannot be used (unreadable, damaged, of another program) is a one-line error that
leaves it in place; whether its state dicts fit the run's models is checked where they are loaded
(``toolbox.training.Trainer.restore``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from toolbox.errors import UsageError
from toolbox.methods.phases import PHASE_RECORD
from toolbox.models import NotACheckpoint, read_checkpoint, read_error
from toolbox.progress import position_problem
from toolbox.rundir import RunDir

HISTORY_KEYS = ("train_hard_loss", "train_soft_loss", "train_acc", "test_loss", "test_acc")
KEEP_LAST = "it was left as it is: move it away to restart this run from epoch 0, or restore it"


STATE_DICTS = ("student", "distiller", "optimizer", "scheduler")


def last_pt_problem(state: Any) -> Optional[str]:
    """What makes a loaded last.pt unusable for resuming (its structure and types), or None; whether
    its state dicts fit the run's models is checked where they are loaded (``Trainer.restore``)."""
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
            isinstance(record, dict) and set(record) == set(PHASE_RECORD)
            and all(isinstance(v, float) and math.isfinite(v) for v in record.values()) for record in phases):
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
