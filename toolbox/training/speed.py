"""What makes a training step faster without changing what it computes: ``torch.compile`` with one
static graph per model (``--compile``), and the optimiser's multi-tensor kernels.

A graph compiled for one batch shape is recompiled for any other: the epoch's last, smaller batch
and every test batch would each cost a compilation, and dynamo would then swap the static graph for
one with a dynamic batch size, slower on every later step. So each model is compiled for its full
training batch only (``dynamic=False``) and runs eagerly, with the same parameters, on any other
batch: the last one of each epoch (one step in hundreds), and the test set, which ``Trainer.test``
passes to the module itself. One compilation per model per run, none per epoch. On the CPU
(bench/RESULTS.md, "torch.compile on the CPU") a second static graph for the last batch took 19 s to
compile and a dynamic batch size 40 s, with every step then 8% slower, against 0.14 s a
step lost per epoch by running that batch eagerly.

The distillers' soft losses stay eager: the Tucker losses' float64 eigendecompositions end their
HOOI sweeps on norms read back from the device, and CRD replaces its memory banks every step.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""``--compile_mode``s under which inductor replays its graphs as CUDA graphs on a GPU."""


class FullBatchCompiled(nn.Module):
    """``module`` compiled for batches of ``rows`` rows; a batch of any other size runs ``module``
    eagerly. Its parameters are ``module``'s (``state_dict`` keys carry ``compiled._orig_mod.``)."""

    def __init__(self, module: nn.Module, rows: int, mode: Optional[str]) -> None:
        super().__init__()
        self.rows = rows
        self.compiled = torch.compile(module, mode=mode, dynamic=False)

    def forward(self, images: Tensor, **options: Any) -> list[Tensor]:
        if len(images) == self.rows:
            return self.compiled(images, **options)
        return self.compiled._orig_mod(images, **options)


def begin_step() -> None:
    """Tell CUDA-graph replay that a new training step begins, so that the teacher's forward-only
    graph and the student's training graph of one step share a generation (a no-op without CUDA graphs)."""
    torch.compiler.cudagraph_mark_step_begin()


def optimizer_kernels(device: torch.device) -> dict[str, bool]:
    """SGD's kernels for ``device``: on CUDA the fused one (one launch for every parameter instead
    of a few per parameter: the steps at batch 64 are launch-bound), elsewhere the multi-tensor
    ``foreach`` one. Both give torch's default update within float rounding (tests/test_compile.py);
    both keys are set, so that a state dict saved on another device does not bring its own along."""
    fused = device.type == "cuda"
    return {"fused": fused, "foreach": not fused}


def use_optimizer_kernels(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """``optimizer_kernels`` in every parameter group; ``load_state_dict`` restores the saved
    groups' choice, which a run resumed on another device must not keep."""
    if isinstance(optimizer, torch.optim.SGD):  # DOT has one loop of its own
        for group in optimizer.param_groups:
            group.update(optimizer_kernels(device))
