"""Data parallelism over torchrun's processes: the one place that knows about ranks.

torchrun starts one process per GPU (``torchrun --nproc_per_node G tucker_distillation.py ...``)
and tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), as torchvision's references read it. ``World`` turns that into the few questions the
training loop asks: am I the writer, reduce this, gather this, stop everywhere? A process started
without torchrun is a world of one whose collectives return their input, so the loop has no
distributed branches and a single-process run is exactly what it was.

GPUs talk through NCCL, CPUs (and the tests) through gloo. The per-step control decisions (a stop
signal, divergence) go through a gloo group on the CPU in every case: agreeing on a flag then never
waits for the GPU's queue of work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from toolbox.errors import UsageError
from toolbox.utils import select_device


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); readable before torch loads
    anything, so the entry point can leave the run lock to rank 0."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class World:
    """The processes of one run; ``World()`` is a process on its own."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: Any = None  # the gloo group for CPU decisions (None: the default group is gloo already)

    @property
    def is_writer(self) -> bool:
        """Rank 0 owns the run folder: its lock, and every file in it."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def loss_weight(self, rows: int, batch_rows: int) -> float:
        """The factor on this rank's mean loss over its ``rows`` of a global batch of ``batch_rows``
        that makes DDP's mean of the ranks' gradients the gradient of the global batch's mean loss:
        ``size * rows / batch_rows``, exactly 1 where the ranks' parts are equal (and for one process)."""
        return self.size * rows / batch_rows

    def fewest_rows(self, samples: int, batch_size: int, max_batches: Optional[int]) -> int:
        """The fewest samples a rank gets in a step of an epoch (its part of the smallest batch, the
        last, which ``max_batches`` may leave out)."""
        last = samples % batch_size
        if max_batches is not None and max_batches * batch_size <= samples:
            last = 0
        return min(rows // self.size for rows in (batch_size, last) if rows)

    def check_batches(self, samples: int, batch_size: int, max_batches: Optional[int]) -> None:
        """Every rank needs rows in every step (DDP waits for all of them, BatchNorm needs them)."""
        if self.fewest_rows(samples, batch_size, max_batches) < 1:
            last = samples % batch_size
            raise UsageError(
                f"--batch_size {batch_size} is the global batch: with {self.size} ranks every batch "
                f"needs at least {self.size} samples (the epoch's last has {last or batch_size}); "
                "pass another --batch_size"
            )

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum over ranks (in place, and returned); a CPU tensor goes through the gloo group."""
        if self.distributed:
            dist.all_reduce(tensor, group=self.control if tensor.device.type == "cpu" else None)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank: every rank gets the same answer, so they all take
        the same branch (stop, save, refuse) at the same step."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` in rank order; their first dimensions may differ (an epoch's last
        batch), the others must not."""
        if not self.distributed:
            return [tensor]
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
        longest = int(max(sizes).item())
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return [part[: int(n.item())] for part, n in zip(parts, sizes)]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable one: flags, a digest) in rank order, through the
        CPU group."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value, group=self.control)
        return gathered

    def check_agreement(self, what: str, value: Any, describe: Callable[[Any, Any], str]) -> None:
        """Every rank must hold the same ``value`` (what defines the run, the state it resumes from):
        where one differs, every rank stops with a one-line ``UsageError`` (rank 0 says it) naming the
        first rank that differs and, through ``describe(theirs, rank 0's)``, how."""
        values = self.gather_objects(value)
        other = next((rank for rank, theirs in enumerate(values) if theirs != values[0]), None)
        if other is not None:
            raise UsageError(
                f"rank {other} of this run was started with other {what} than rank 0 "
                f"({describe(values[other], values[0])}); start every rank with the same command and files, then rerun"
            )

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics, which each rank keeps from its own
        batches unless they are synchronised) on every rank, as DDP's default does before each
        forward pass: evaluated and saved models are then the same on all ranks."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP, which averages the gradients of its trainable parameters over the
        ranks during the backward pass. Buffers are broadcast once, not at each step: CRD's memory
        bank is kept equal by its own all-gathers, BatchNorm statistics by ``broadcast_buffers``."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join(device_name: str) -> World:
    """This process's ``World``: from torchrun's environment, with its process group joined (NCCL
    for a GPU, then ``cuda:LOCAL_RANK``; gloo for the CPU); without torchrun, a world of one on
    ``--device``."""
    device = select_device(device_name)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index not in (None, local_rank):
            raise UsageError(
                f"--device {device_name}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda or auto"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=size, device_id=device if backend == "nccl" else None)
    control: Optional[Any] = dist.new_group(backend="gloo") if backend == "nccl" else None
    return World(rank, size, local_rank, device, control)
