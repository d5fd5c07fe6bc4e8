"""``tucker_distillation.py`` with every BatchNorm of the registered models replaced by an identity.

Training-mode BatchNorm normalises each rank's part of a batch with that part's statistics, so a
run on two ranks computes other numbers than one process with the same global batch (SyncBatchNorm,
which would not, runs on GPUs only). Without it every sample's loss depends on that sample alone,
and the two runs must agree to float32 rounding: the tests compare them through this entry point.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Callable

from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolbox import models  # noqa: E402


def without_batchnorm(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """``build`` whose models have an identity wherever they had a BatchNorm."""
    def built(num_classes: int) -> nn.Module:
        model = build(num_classes)
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(module, name, nn.Identity())
        return model
    return built


if __name__ == "__main__":  # only in the training process it starts: an import changes nothing
    for name in list(models.MODELS):
        models.MODELS[name] = without_batchnorm(models.MODELS[name])
    script = str(REPO / "tucker_distillation.py")
    sys.argv[0] = script
    runpy.run_path(script, run_name="__main__")
