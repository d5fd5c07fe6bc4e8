"""Tucker decomposition of 4-way feature-map batches (B, C, H, W).

The fast path is a truncated HOSVD: each truncated mode's factor holds the leading eigenvectors of
that mode's Gram matrix (C x C for the channel mode), which costs one small matrix product and one
small eigendecomposition instead of the repeated SVDs of tensorly's HOOI. Modes kept at full rank
are skipped: their factor is ``None`` (the identity), so no work is done and nothing is rotated.

``backend="tensorly"`` calls ``tensorly.decomposition.tucker`` with its defaults, as the original
study did (HOOI, SVD initialisation, up to 100 iterations). It is the reference for the tests and
the benchmarks. The one difference: tensorly returns a full orthogonal rotation for a mode kept at
full rank (the batch and spatial modes in ``BATCH_SIZE,32,8,8``), which mixes samples along the
core's first axis. Reconstructions are the same either way (a full-rank rotation is undone by
``recompose``), so the ``tucker_recomp`` losses agree; the ``tucker`` core loss, which normalises
each row of the core, does not.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from toolbox.errors import UsageError

BATCH_TOKEN = "BATCH_SIZE"
MODE_NAMES = ("batch", "channel", "height", "width")
BACKENDS = ("fast", "tensorly")

Ranks = tuple[Optional[int], ...]  # None: the batch mode, kept at the size of each batch
Factors = list[Optional[Tensor]]  # None: a mode kept at full rank (identity, no work)


def parse_ranks(text: str, flag: str = "--ranks") -> Ranks:
    """Parse ``BATCH_SIZE,32,8,8``: the token keeps the batch mode whole, whatever a batch's size."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(MODE_NAMES):
        raise UsageError(
            f"{flag} needs 4 comma-separated ranks for (batch, channel, height, width), "
            f"e.g. {BATCH_TOKEN},32,8,8; got {text!r}"
        )
    ranks: list[Optional[int]] = []
    for mode, part in zip(MODE_NAMES, parts):
        if mode == "batch" and part == BATCH_TOKEN:
            ranks.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            valid = f"{BATCH_TOKEN} or a positive integer" if mode == "batch" else "a positive integer"
            raise UsageError(f"{flag}: the {mode} rank must be {valid}; got {part!r} in {text!r}") from None
        if value < 1:
            raise UsageError(f"{flag}: the {mode} rank must be at least 1; got {value} in {text!r}")
        ranks.append(value)
    return tuple(ranks)


def format_ranks(ranks: Ranks) -> str:
    """The inverse of :func:`parse_ranks`."""
    return ",".join(BATCH_TOKEN if r is None else str(r) for r in ranks)


def check_ranks(ranks: Ranks, feature_shape: Sequence[int], flag: str = "--ranks") -> None:
    """Fail early, naming the flag, when a rank exceeds its mode of the (C, H, W) feature map."""
    for mode, rank, size in zip(MODE_NAMES[1:], ranks[1:], feature_shape):
        if rank is not None and rank > size:
            raise UsageError(
                f"{flag}: the {mode} rank {rank} exceeds the feature map's {mode} size {size} "
                f"(map shape {'x'.join(map(str, feature_shape))}); use a rank from 1 to {size}"
            )


def resolve_ranks(ranks: Ranks, shape: Sequence[int]) -> tuple[int, ...]:
    """Concrete ranks for one batch. A numeric batch rank is capped at the batch's size, since the
    last batch of an epoch may be smaller than the others."""
    check_ranks(ranks, shape[1:])
    batch_rank = shape[0] if ranks[0] is None else min(ranks[0], shape[0])
    return (batch_rank, *ranks[1:])  # type: ignore[return-value]


def mode_dot(x: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """Multiply ``x`` along ``mode`` by ``matrix`` of shape (new_size, x.shape[mode])."""
    return torch.tensordot(x, matrix, dims=([mode], [1])).movedim(-1, mode)


def project(x: Tensor, factors: Factors) -> Tensor:
    """The core of ``x`` on given factors: x x_n U_n^T for every mode (the original's compute_core)."""
    for mode, factor in enumerate(factors):
        if factor is not None:
            x = mode_dot(x, factor.T, mode)
    return x


def recompose(core: Tensor, factors: Factors) -> Tensor:
    """The full tensor from a core and its factors (tensorly's ``tucker_to_tensor``)."""
    for mode, factor in enumerate(factors):
        if factor is not None:
            core = mode_dot(core, factor, mode)
    return core


def _leading_eigenvectors(x: Tensor, mode: int, rank: int) -> Tensor:
    """Leading left singular vectors of the mode-n unfolding, from its Gram matrix."""
    others = [d for d in range(x.ndim) if d != mode]
    gram = torch.tensordot(x, x, dims=(others, others))
    _, eigenvectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return eigenvectors[:, -rank:].flip(-1)


def _fast_tucker(x: Tensor, ranks: tuple[int, ...], n_iter: int) -> tuple[Tensor, Factors]:
    truncated = [mode for mode, rank in enumerate(ranks) if rank < x.shape[mode]]
    factors: Factors = [None] * x.ndim
    for mode in truncated:  # HOSVD
        factors[mode] = _leading_eigenvectors(x, mode, ranks[mode])
    if len(truncated) > 1:  # HOOI sweeps only change anything when several modes are truncated
        for _ in range(n_iter):
            for mode in truncated:
                others = [f if m != mode else None for m, f in enumerate(factors)]
                factors[mode] = _leading_eigenvectors(project(x, others), mode, ranks[mode])
    return project(x, factors), factors


def _tensorly_tucker(x: Tensor, ranks: tuple[int, ...], **options) -> tuple[Tensor, Factors]:
    import tensorly as tl
    from tensorly.decomposition import tucker as tensorly_tucker

    with tl.backend_context("pytorch"):
        core, factors = tensorly_tucker(x, rank=list(ranks), **options)
    return core, list(factors)


def tucker(
    x: Tensor, ranks: Ranks, backend: str = "fast", n_iter: int = 0, **tensorly_options
) -> tuple[Tensor, Factors]:
    """Tucker decomposition of a (B, C, H, W) batch, computed in float32 or float64 (never in a
    reduced autocast precision, whose rounding would swamp the small eigenvalues).

    ``n_iter`` HOOI refinement sweeps apply to the fast path; ``tensorly_options`` (for example
    ``n_iter_max=0``) go to tensorly's ``tucker``, whose defaults are used otherwise.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    concrete = resolve_ranks(ranks, x.shape)
    with torch.autocast(x.device.type, enabled=False):
        if backend == "fast":
            return _fast_tucker(x, concrete, n_iter)
        if backend == "tensorly":
            return _tensorly_tucker(x, concrete, **tensorly_options)
    raise UsageError(f"--tucker_backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def relative_error(x: Tensor, approximation: Tensor) -> float:
    """||x - approximation|| / ||x||, the figure of merit shared by tests, benchmarks, notebooks."""
    return float(torch.linalg.vector_norm(x - approximation) / torch.linalg.vector_norm(x))
