"""Seeded epochs for data sets read from files by DataLoader workers.

An epoch's order and every sample's augmentation come from one generator seeded by (seed, epoch),
as for the on-device CIFAR batches: a resumed run, even one resumed in the middle of an epoch, sees
the same batches as an uninterrupted one, whatever the number of workers. The sampler draws the
permutation and one augmentation seed per sample; the worker that decodes a sample seeds torch's
generator with it before the random transforms run.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler


def share(start: int, end: int, rank: int, ranks: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of the rows [start, end) among ``ranks``: as even as possible,
    the first ``(end - start) % ranks`` ranks one row more. The parts, in rank order, are the rows
    in order, so the ranks' parts of a global batch together are one process's batch."""
    size, extra = divmod(end - start, ranks)
    first = start + rank * size + min(rank, extra)
    return first, first + size + (rank < extra)


def epoch_generator(seed: int, epoch: int, device: torch.device | str) -> torch.Generator:
    """A generator for one epoch's order and augmentation, independent of all other randomness."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (sample index, augmentation seed) in the epoch's seeded order; the last batch
    may be smaller. ``set_epoch(epoch, start_batch)`` before iterating: a run resumed after k
    batches passes ``start_batch=k`` and gets the epoch's remaining batches, the k skipped ones
    never reaching a worker. ``batch_size`` is global: rank ``rank`` of ``ranks`` gets its
    ``share`` of each batch, with the seeds one process would draw for those samples."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, ranks: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.ranks = rank, ranks
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(0, -(-self.size // self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = epoch_generator(self.seed, self.epoch, "cpu")
        order = torch.randperm(self.size, generator=generator)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        for start in range(self.start_batch * self.batch_size, self.size, self.batch_size):
            first, end = share(start, min(start + self.batch_size, self.size), self.rank, self.ranks)
            yield list(zip(order[first:end].tolist(), seeds[first:end].tolist()))


class SeededSamples(Dataset):
    """``dataset`` read by (index, seed): the random transforms run under torch's CPU generator
    seeded with ``seed``, and its state is restored afterwards, so reading in the main process
    changes no other randomness. Only the CPU generator: ``torch.manual_seed`` also queues the seed
    for CUDA with a stack trace where CUDA is not initialised (a worker), a millisecond per image.
    Items are (image, label, index), the index for the methods that keep per-sample memory (CRD)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any, int]:
        index, seed = key
        generator = torch.random.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            image, label = self.dataset[index]
        finally:
            generator.set_state(state)
        return image, label, index
