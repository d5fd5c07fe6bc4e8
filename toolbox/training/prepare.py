"""Setting a run up from its flags: the data set, the schedule, autocast, determinism, the
teacher's presence and the shapes of the models' outputs.

Each is a small decision that the trainer, the ``--evaluate`` entry point and the benchmarks make
the same way; kept apart from the loop so that the loop reads as the steps of a run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from toolbox.config import Config, milestones
from toolbox.data_loader import DataSource, load_dataset
from toolbox.errors import IOFailure, UsageError
from toolbox.rundir import teacher_command


def output_shapes(model: nn.Module, device: torch.device, image_size: int) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes of every output (stem, stages, pooled, logits) on the data set's images,
    from one eval-mode forward pass (BatchNorm statistics untouched)."""
    model.eval()
    with torch.no_grad():
        return tuple(tuple(out.shape[1:]) for out in model(torch.zeros(1, 3, image_size, image_size, device=device)))


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: cosine annealing over the run (the original's), or x``lr_decay``
    after each epoch in ``lr_milestones`` (RepDistiller's: the lr of epoch 151 is the first decayed)."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(config.lr_milestones), gamma=config.lr_decay)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)


def set_deterministic(on: bool) -> None:
    """Deterministic algorithms (an error where torch has none) and cuDNN without autotuning."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def data_set(config: Config, device: torch.device) -> DataSource:
    """``--dataset`` from ``--data_dir``; a failed read or write there (a read-only data folder, a
    full disk) is one line naming the file, not a run's write."""
    try:
        return load_dataset(config.dataset, config.data_dir, device, workers=config.workers)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        raise IOFailure(
            f"{where}{error.strerror or error}, while preparing --dataset {config.dataset} in --data_dir "
            f"{config.data_dir}; make that folder readable and writable (or pass another --data_dir), "
            "then rerun"
        ) from None


def make_autocast(config: Config, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on GPUs that support it (``--amp auto``), float32 elsewhere."""
    if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def check_teacher_exists(config: Config) -> None:
    """A missing teacher is an error that says how to train it."""
    if not Path(config.teacher_checkpoint).exists():
        raise UsageError(
            f"teacher checkpoint {config.teacher_checkpoint} not found; train the teacher first with: "
            f"{teacher_command(config)} (it is saved there by default), or pass --teacher_checkpoint"
        )


def all_finite(*modules: nn.Module) -> bool:
    """Every floating-point parameter and buffer (BatchNorm statistics too) is finite."""
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())  # one device sync, not one per tensor
