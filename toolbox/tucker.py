"""Tucker decomposition of 4-way feature-map batches (B, C, H, W).

``backend="fast"`` computes what tensorly's ``tucker`` converges to, in closed form. Each truncated
mode's factor holds the leading eigenvectors of that mode's Gram matrix (tensorly's SVD
initialisation); with several truncated modes, tensorly's HOOI sweeps follow, with its stopping rule.
Each mode kept at full rank (the batch and spatial modes in ``BATCH_SIZE,32,8,8``) gets, as from
tensorly, all eigenvectors of its Gram matrix in the map already projected on the truncated factors:
a full orthogonal rotation, which mixes the samples along the core's first axis. The ``tucker`` core
loss normalises each row of the core, so it depends on those rotations (``core="original"``, the
study's loss); it does not depend on the factors' column signs or order, in which eigenvectors and
singular vectors may differ. ``core="per_sample"`` leaves full-rank modes unrotated (factor
``None``): each sample's own core, a different loss, and less work. Reconstructions are the same
either way (``recompose`` undoes a full-rank rotation).

Precision: every Gram matrix and eigendecomposition is computed in float64. In float32 the Gram of
the batch mode squares its unfolding's condition number (eigenvalues spanning ~1e5 on real maps)
and loses the eigenvectors of the small eigenvalues, whose rows of the core the row normalisation
then amplifies; the loss's gradient drifted to a cosine of 0.7 against the original's. Projections
run in the map's own precision.

``backend="tensorly"`` calls ``tensorly.decomposition.tucker``; at ``n_iter=HOOI_MAX_SWEEPS`` that is
its defaults, as the original study called it. It is the reference of the tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from toolbox.config.choices import BACKENDS, HOOI_MAX_SWEEPS, MODE_NAMES, TUCKER_CORES, RankSpec
from toolbox.errors import UsageError

HOOI_TOLERANCE = 1e-4  # tensorly's default tol (written 10e-5); its n_iter_max is choices.HOOI_MAX_SWEEPS

Ranks = tuple[Optional[int], ...]  # None: the batch mode, kept at the size of each batch
Factors = list[Optional[Tensor]]  # None: a mode kept at full rank and left unrotated (identity, no work)


def absolute_ranks(ranks: RankSpec, feature_shape: Sequence[int], flag: str = "--ranks") -> Ranks:
    """The ranks for a (C, H, W) map: fractions become whole ranks (at least 1), and a rank larger
    than its mode is an error that names the map's shape."""
    concrete = (
        ranks[0],
        *(max(1, round(r * size)) if isinstance(r, float) else r for r, size in zip(ranks[1:], feature_shape)),
    )
    check_ranks(concrete, feature_shape, flag)
    return concrete


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


def check_core(core: str, backend: str) -> None:
    """Refuse a combination the back ends cannot compute: tensorly always rotates full-rank modes."""
    if core not in TUCKER_CORES:
        raise UsageError(f"--tucker_core must be one of {', '.join(TUCKER_CORES)}; got {core!r}")
    if core == "per_sample" and backend == "tensorly":
        raise UsageError(
            "--tucker_core per_sample needs --tucker_backend fast: tensorly's tucker rotates every mode, "
            "including those kept at full rank, so it computes --tucker_core original only"
        )


def _memory_order(x: Tensor) -> list[int]:
    """x's dimensions from the outermost in memory to the innermost (``x.permute`` of it is contiguous)."""
    return sorted(range(x.ndim), key=lambda dim: (x.stride(dim), x.shape[dim]), reverse=True)


def mode_dot(x: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """Multiply ``x`` along ``mode`` by ``matrix`` of shape (new_size, x.shape[mode]).

    Computed in x's memory order, so that neither operand is copied and the result keeps x's
    layout (a channels-last map stays channels-last): one matrix product when ``mode`` is the
    outermost or innermost dimension in memory, a batched one otherwise."""
    order = _memory_order(x)
    position = order.index(mode)
    dense = x.permute(order)
    outer, inner = math.prod(dense.shape[:position]), math.prod(dense.shape[position + 1 :])
    if inner == 1:
        product = dense.reshape(outer, x.shape[mode]) @ matrix.T
    elif outer == 1:
        product = matrix @ dense.reshape(x.shape[mode], inner)
    else:
        product = matrix @ dense.reshape(outer, x.shape[mode], inner)
    result = product.reshape(*dense.shape[:position], matrix.shape[0], *dense.shape[position + 1 :])
    return result.permute([order.index(dim) for dim in range(x.ndim)])


def project(x: Tensor, factors: Factors) -> Tensor:
    """The core of ``x`` on given factors: x x_n U_n^T for every mode (the original's compute_core).
    Truncating factors go first, so that full-rank rotations act on the smaller tensor."""
    modes = [mode for mode, factor in enumerate(factors) if factor is not None]
    for mode in sorted(modes, key=lambda m: factors[m].shape[1] / factors[m].shape[0]):  # type: ignore[union-attr]
        x = mode_dot(x, factors[mode].T, mode)  # type: ignore[union-attr]
    return x


def recompose(core: Tensor, factors: Factors) -> Tensor:
    """The full tensor from a core and its factors (tensorly's ``tucker_to_tensor``); full-rank
    rotations go first, on the smaller tensor."""
    modes = [mode for mode, factor in enumerate(factors) if factor is not None]
    for mode in sorted(modes, key=lambda m: factors[m].shape[1] / factors[m].shape[0], reverse=True):  # type: ignore[union-attr]
        core = mode_dot(core, factors[mode], mode)  # type: ignore[union-attr]
    return core


def _gram(x: Tensor, mode: int) -> Tensor:
    """X_(n) X_(n)^T in float64. The unfolding's columns are taken in memory order (a view, not a
    copy, for the modes that are outermost or innermost in memory): their order does not matter."""
    x = x.double()
    others = [dim for dim in _memory_order(x) if dim != mode]
    unfolding = x.permute(mode, *others).reshape(x.shape[mode], -1)
    return unfolding @ unfolding.T


def _leading_eigenvectors(x: Tensor, mode: int, count: int) -> Tensor:
    """The ``count`` leading eigenvectors of the mode's Gram matrix, largest first (float64): the
    leading left singular vectors of the unfolding, which tensorly computes by SVD."""
    _, eigenvectors = torch.linalg.eigh(_gram(x, mode))  # ascending eigenvalues
    return eigenvectors[:, -count:].flip(-1)


def _hooi(x: Tensor, ranks: tuple[int, ...], truncated: list[int], factors: Factors, max_sweeps: int) -> Factors:
    """tensorly's HOOI over the truncated modes, updating ``factors`` in place: each sweep updates
    them in order, each from the map projected on the others' current factors; it stops after
    ``max_sweeps`` sweeps, or from the third sweep on once the relative reconstruction error changed
    by less than ``HOOI_TOLERANCE``. Returns the factors as they stood before the last sweep, from
    which tensorly's last sweep computed the full-rank modes' factors."""
    norm = float(torch.linalg.vector_norm(x.double()))
    errors: list[float] = []
    previous = factors.copy()
    for sweep in range(max_sweeps):
        previous = factors.copy()
        for mode in truncated:
            others = [factor if m != mode else None for m, factor in enumerate(factors)]
            factors[mode] = _leading_eigenvectors(project(x, others), mode, ranks[mode]).to(x.dtype)
        core_norm = float(torch.linalg.vector_norm(project(x, factors).double()))
        errors.append(math.sqrt(abs(norm**2 - core_norm**2)) / norm)
        if sweep > 1 and abs(errors[-2] - errors[-1]) < HOOI_TOLERANCE:
            break
    return previous


def _fast_tucker(x: Tensor, ranks: tuple[int, ...], n_iter: int, core: str) -> tuple[Tensor, Factors]:
    truncated = [mode for mode, rank in enumerate(ranks) if rank < x.shape[mode]]
    factors: Factors = [None] * x.ndim
    for mode in truncated:  # tensorly's SVD initialisation (HOSVD)
        factors[mode] = _leading_eigenvectors(x, mode, ranks[mode]).to(x.dtype)
    previous = factors.copy()
    if len(truncated) > 1:  # with one truncated mode, a sweep gives back the same factor
        previous = _hooi(x, ranks, truncated, factors, n_iter)
    if core == "original":
        full_rank = [mode for mode in range(x.ndim) if mode not in truncated]
        projected, used = x, [None] * x.ndim
        for mode in full_rank:
            # tensorly's last sweep reached this mode with the earlier modes' factors already
            # updated and the later ones not; with no sweep at all, its factor is the raw map's
            basis = [factors[m] if m < mode else previous[m] for m in range(x.ndim)] if n_iter else [None] * x.ndim
            if any(a is not b for a, b in zip(basis, used)):
                projected, used = project(x, basis), basis
            factors[mode] = _leading_eigenvectors(projected, mode, x.shape[mode]).to(x.dtype)
    return project(x, factors), factors


def _tensorly_tucker(x: Tensor, ranks: tuple[int, ...], n_iter: int) -> tuple[Tensor, Factors]:
    import tensorly as tl
    from tensorly.decomposition import tucker as tensorly_tucker

    with tl.backend_context("pytorch"):
        core, factors = tensorly_tucker(x, rank=list(ranks), n_iter_max=n_iter)
    return core, list(factors)


def tucker(
    x: Tensor, ranks: Ranks, backend: str = "fast", n_iter: int = HOOI_MAX_SWEEPS, core: str = "original"
) -> tuple[Tensor, Factors]:
    """Tucker decomposition of a (B, C, H, W) batch, computed in float32 or float64 (never in a
    reduced autocast precision, whose rounding would swamp the small eigenvalues).

    ``n_iter`` is the most HOOI sweeps (tensorly's ``n_iter_max``, on either back end; 0: the SVD
    initialisation alone); ``core`` is one of ``TUCKER_CORES`` (see the module's docstring).
    """
    if backend not in BACKENDS:
        raise UsageError(f"--tucker_backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    check_core(core, backend)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    concrete = resolve_ranks(ranks, x.shape)
    with torch.autocast(x.device.type, enabled=False):
        if backend == "fast":
            return _fast_tucker(x, concrete, n_iter, core)
        return _tensorly_tucker(x, concrete, n_iter)


def relative_error(x: Tensor, approximation: Tensor) -> float:
    """||x - approximation|| / ||x||, the figure of merit shared by tests, benchmarks, notebooks."""
    return float(torch.linalg.vector_norm(x - approximation) / torch.linalg.vector_norm(x))
