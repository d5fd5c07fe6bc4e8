"""``tucker_distillation.py`` with every BatchNorm of the registered models and of the registered
methods' own modules (FT's translator, AB's connectors) replaced by an identity.

Training-mode BatchNorm normalises each rank's part of a batch with that part's statistics, so a
run on two ranks computes other numbers than one process with the same global batch (SyncBatchNorm,
which would not, runs on GPUs only). Without it every sample's loss depends on that sample alone,
and the two runs must agree to float32 rounding: the tests compare them through this entry point.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Callable

from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolbox import methods, models  # noqa: E402
from toolbox.distillation import Distiller  # noqa: E402
from toolbox.training import Trainer  # noqa: E402


def strip_batchnorm(module: nn.Module) -> nn.Module:
    """``module``, changed in place: an identity wherever it had a BatchNorm."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    return module


def without_batchnorm(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """``build`` whose models have an identity wherever they had a BatchNorm."""
    return lambda num_classes: strip_batchnorm(build(num_classes))


def method_without_batchnorm(method: type[Distiller]) -> type[Distiller]:
    """``method`` (a subclass: its flags, defaults and checks are the method's) whose modules have
    an identity wherever they had a BatchNorm."""

    def __init__(self: Distiller, *args: Any, **kwargs: Any) -> None:
        method.__init__(self, *args, **kwargs)
        strip_batchnorm(self)

    return type(method.__name__, (method,), {"__init__": __init__})


def remove_batchnorm(replace: Callable[[dict, str, Any], None] = dict.__setitem__) -> None:
    """Every registered model and method without BatchNorm from now on; ``replace(registry, name,
    entry)`` makes each change (a ``pytest.MonkeyPatch``'s ``setitem`` undoes them afterwards)."""
    for name, build in list(models.MODELS.items()):
        replace(models.MODELS, name, without_batchnorm(build))
    for name, method in list(methods.DISTILLERS.items()):
        replace(methods.DISTILLERS, name, method_without_batchnorm(method))


def slow_steps(seconds: float) -> None:
    """Every training step waits ``seconds`` first, so that a signal a test sends on reading one
    step's log line lands before the epoch's last step, however busy the machine."""
    step = Trainer.step

    def slow(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return step(self, *args, **kwargs)

    Trainer.step = slow


if __name__ == "__main__":  # only in the training process it starts: an import changes nothing
    remove_batchnorm()
    slow_steps(float(os.environ.get("ENTRY_STEP_SECONDS", "0")))
    script = str(REPO / "tucker_distillation.py")
    sys.argv[0] = script
    runpy.run_path(script, run_name="__main__")
