#!/usr/bin/env python
"""Our Tucker decomposition and losses against the original study's tensorly calls, side by side,
on teacher-map-shaped batches, after checking that both compute the same thing.

    python bench/bench_tucker.py [--quick] [--json FILE] [--device cpu|cuda] [--repeats N]
                                 [--no-channels_last]

For each batch (B, 64, 8, 8) and channel rank r (ranks ``B,r,8,8``: batch and spatial modes kept
whole, as in the study's ``BATCH_SIZE,r,8,8``) it times, interleaved:

* decompose: ``toolbox.tucker.tucker`` at its defaults (the original's decomposition in closed
  form, full-rank rotations included) against tensorly's ``tucker`` at its defaults (HOOI, SVD
  init, up to 100 iterations), as the original called it; and both with the SVD initialisation
  alone (``n_iter=0`` against tensorly's ``n_iter_max=0``, i.e. ``--hooi_iters 0``);
* project / recompose: ours against tensorly's ``multi_mode_dot`` and ``tucker_to_tensor``, each
  on its own decomposition (what the original did with it);
* loss: the ``tucker`` and ``tucker_recomp`` distillers' loss at their default flags, decomposition
  included, forward and backward into a student map, against the original's code for the same loss
  (tensorly at its defaults, float32, as the original ran); and ``featuremap`` (no decomposition),
  the baseline of the Tucker losses' overhead.

Before anything is timed, each pair is checked to compute the same loss: the value and the
gradient with respect to the student's map of ours and of the original's float32 call, against
the original's formula in float64, within 1e-3 and at a gradient cosine of at least 0.99 (the
decompositions: the same core loss). A failed check stops the benchmark. Both get the same maps:
ReLU'd Gaussians (like post-activation maps), channels-last as the training path's maps are by
default, or contiguous with ``--no-channels_last``. The relative reconstruction errors
||x - x_hat|| / ||x|| are reported too. The last line is the headline: the ``tucker`` loss's speed-up
over the original's call at B=512, rank 32.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from common import Column, LoadMonitor, add_common_flags, finish, interleaved, median, paired_ratio, setup
from torch import Tensor

from toolbox.config import parse_config
from toolbox.config.choices import BATCH_TOKEN, HOOI_MAX_SWEEPS
from toolbox.distillation import Step, distiller_for
from toolbox.tucker import Factors, project, recompose, relative_error, tucker

CHANNELS, SIZE = 64, 8
BATCHES, RANKS = (128, 512), (32, 24, 16, 8)
QUICK_BATCHES, QUICK_RANKS = (16,), (32, 8)
HEADLINE_CASE = (512, 32)  # the study's batch and default rank
SPEEDUP_GOAL, ERROR_GOAL = 10.0, 1e-5
LOSS_TOLERANCE, GRADIENT_COSINE = 1e-3, 0.99  # the same loss: float32 against the float64 formula
TUCKER_METHODS = ("tucker", "tucker_recomp")
OPS = ("decompose", "project", "recompose", "loss featuremap", "loss tucker", "loss tucker_recomp")

COLUMNS = [
    Column("batch", "batch"),
    Column("rank", "rank"),
    Column("op", "op"),
    Column("ours_ms", "ours ms", "{:.2f}"),
    Column("tensorly_ms", "original ms", "{:.1f}"),
    Column("tensorly_speedup", "speed-up", "{:.1f}x"),
    Column("ours_hosvd_ms", "ours n_iter=0 ms", "{:.2f}"),
    Column("hosvd_ms", "tensorly n_iter_max=0 ms", "{:.1f}"),
    Column("hosvd_speedup", "speed-up", "{:.1f}x"),
    Column("loss_difference", "loss rel. diff.", "{:.1e}"),
    Column("gradient_cosine", "grad cosine", "{:.6f}"),
    Column("ours_error", "error ours", "{:.7f}"),
    Column("tensorly_error", "error tensorly", "{:.7f}"),
    Column("hosvd_error", "error n_iter_max=0", "{:.7f}"),
]


def FT(x: Tensor) -> Tensor:
    """The original's flattening with row-wise L2 normalisation."""
    return F.normalize(x.reshape(x.size(0), -1))


def tensorly_decompose(x: Tensor, ranks: list[int], n_iter_max: int = HOOI_MAX_SWEEPS) -> tuple[Tensor, Factors]:
    import tensorly as tl
    from tensorly.decomposition import tucker as tensorly_tucker

    with tl.backend_context("pytorch"):
        core, factors = tensorly_tucker(x, rank=ranks, n_iter_max=n_iter_max)
    return core, list(factors)


def tensorly_project(x: Tensor, factors: Factors) -> Tensor:
    """The original's compute_core."""
    import tensorly as tl

    with tl.backend_context("pytorch"):
        return tl.tenalg.multi_mode_dot(x, [f.T for f in factors], modes=[0, 1, 2, 3])


def tensorly_recompose(core: Tensor, factors: Factors) -> Tensor:
    import tensorly as tl

    with tl.backend_context("pytorch"):
        return tl.tucker_to_tensor((core, factors))


def original_loss(
    method: str, teacher: Tensor, student: Tensor, ranks: list[int], n_iter_max: int = HOOI_MAX_SWEEPS
) -> Tensor:
    """The original's soft loss (without BETA): ``tucker``, or ``tucker_recomp`` at its default
    target (the teacher's map reconstructed), in the maps' precision."""
    core, factors = tensorly_decompose(teacher, ranks, n_iter_max)
    if method == "tucker":
        return F.l1_loss(FT(core), FT(tensorly_project(student, factors)))
    return F.l1_loss(FT(tensorly_recompose(core, factors)), FT(student))


def loss_and_gradient(loss: Callable[[Tensor], Tensor], student: Tensor) -> tuple[float, Tensor]:
    student = student.detach().clone().requires_grad_()
    value = loss(student)
    value.backward()
    return value.item(), student.grad.double().flatten()


def check_same_loss(
    name: str, candidate: Callable[[Tensor], Tensor], reference: Callable[[Tensor], Tensor], student: Tensor
) -> tuple[float, float]:
    """The relative loss difference and gradient cosine of ``candidate`` (float32 maps) against
    ``reference`` (float64); a mismatch beyond the tolerances stops the benchmark."""
    value, gradient = loss_and_gradient(candidate, student)
    expected, expected_gradient = loss_and_gradient(reference, student.double())
    difference = abs(value - expected) / abs(expected)
    cosine = F.cosine_similarity(gradient, expected_gradient, dim=0).item()
    if difference > LOSS_TOLERANCE or cosine < GRADIENT_COSINE:
        raise SystemExit(
            f"{name} does not compute the original's loss: relative difference {difference:.1e} "
            f"(at most {LOSS_TOLERANCE:.0e}), gradient cosine {cosine:.6f} (at least {GRADIENT_COSINE})"
        )
    return difference, cosine


def loss_step(loss: Callable[[Tensor], Tensor], student: Tensor) -> Callable[[], None]:
    """One forward and backward pass of ``loss`` into the student map."""

    def run() -> None:
        loss(student).backward()
        student.grad = None

    return run


def measure_case(
    batch: int, rank: int, layout: torch.memory_format, device: torch.device, rounds: int
) -> list[dict[str, Any]]:
    """The table rows of one (batch, rank) case, after checking that each pair computes the same loss."""
    ranks_text = f"{BATCH_TOKEN},{rank},{SIZE},{SIZE}"
    ranks = [batch, rank, SIZE, SIZE]
    teacher, student = (
        torch.randn(batch, CHANNELS, SIZE, SIZE, device=device).relu_().contiguous(memory_format=layout)
        for _ in range(2)
    )
    student.requires_grad_()
    outputs = lambda stage: [stage if layer == 3 else torch.empty(0) for layer in range(6)]  # noqa: E731
    distillers = {
        method: distiller_for(
            parse_config(["--distillation", method, "--ranks", ranks_text]), outputs(teacher), outputs(student)
        ).to(device)
        for method in ("featuremap", *TUCKER_METHODS)
    }
    step = Step(torch.zeros(batch, dtype=torch.long), torch.arange(batch), epoch=1)  # not read by these methods
    ours_loss = {
        method: (lambda s, d=distiller: d.soft_loss(outputs(teacher), outputs(s), step))
        for method, distiller in distillers.items()
    }
    theirs_loss = {method: (lambda s, m=method: original_loss(m, teacher, s, ranks)) for method in TUCKER_METHODS}

    # The same loss, or no timing: ours and the original's float32 call, against the formula in float64.
    checks: dict[str, tuple[float, float]] = {}
    for method in TUCKER_METHODS:
        reference = lambda s, m=method: original_loss(m, teacher.double(), s, ranks)  # noqa: E731
        checks[method] = check_same_loss(f"ours ({method})", ours_loss[method], reference, student)
        check_same_loss(f"the original's float32 call ({method})", theirs_loss[method], reference, student)
    core, factors = tucker(teacher, tuple(ranks), n_iter=0)
    hosvd = check_same_loss(
        "ours (n_iter=0)",
        lambda s: F.l1_loss(FT(core), FT(project(s, factors))),
        lambda s: original_loss("tucker", teacher.double(), s, ranks, n_iter_max=0),
        student,
    )
    checks["decompose"] = (
        max(hosvd[0], checks["tucker"][0]),
        min(hosvd[1], checks["tucker"][1]),
    )  # both pairs' core loss

    ours, theirs = tucker(teacher, tuple(ranks)), tensorly_decompose(teacher, ranks)
    errors = {
        "ours": relative_error(teacher, recompose(*ours)),
        "tensorly": relative_error(teacher, recompose(*theirs)),
        "hosvd": relative_error(teacher, recompose(*tensorly_decompose(teacher, ranks, 0))),
    }
    candidates: dict[str, Callable[[], Any]] = {
        "decompose/ours": lambda: tucker(teacher, tuple(ranks)),
        "decompose/tensorly": lambda: tensorly_decompose(teacher, ranks),
        "decompose/ours_hosvd": lambda: tucker(teacher, tuple(ranks), n_iter=0),
        "decompose/hosvd": lambda: tensorly_decompose(teacher, ranks, 0),
        "project/ours": lambda: project(teacher, ours[1]),
        "project/tensorly": lambda: tensorly_project(teacher, theirs[1]),
        "recompose/ours": lambda: recompose(*ours),
        "recompose/tensorly": lambda: tensorly_recompose(*theirs),
        "loss featuremap/ours": loss_step(ours_loss["featuremap"], student),
    }
    for method in TUCKER_METHODS:
        candidates[f"loss {method}/ours"] = loss_step(ours_loss[method], student)
        candidates[f"loss {method}/tensorly"] = loss_step(theirs_loss[method], student)
    samples = interleaved(candidates, device, rounds)

    rows = []
    for op in OPS:
        row: dict[str, Any] = {"batch": batch, "rank": rank, "op": op, "ours_ms": 1e3 * median(samples[f"{op}/ours"])}
        for name, mine in (("tensorly", "ours"), ("hosvd", "ours_hosvd")):
            if f"{op}/{name}" in samples:
                row[f"{name}_ms"] = 1e3 * median(samples[f"{op}/{name}"])
                row[f"{name}_speedup"] = paired_ratio(samples[f"{op}/{name}"], samples[f"{op}/{mine}"])
        check: Optional[tuple[float, float]] = checks.get(op.removeprefix("loss "))
        if check:
            row["loss_difference"], row["gradient_cosine"] = check
        if op == "decompose":
            row["ours_hosvd_ms"] = 1e3 * median(samples["decompose/ours_hosvd"])
            row.update({f"{name}_error": error for name, error in errors.items()})
        rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]]) -> str:
    """The default ``tucker`` loss's speed-up over the original's call at the study's case (or the
    largest case run) and the worst one at that batch, with the largest loss difference, and the
    decomposition's speed-up, each against its goal."""
    losses = [row for row in rows if row["op"] == "loss tucker"]
    focus = next(
        (r for r in losses if (r["batch"], r["rank"]) == HEADLINE_CASE),
        max(losses, key=lambda r: (r["batch"], r["rank"])),
    )
    worst = min((r for r in losses if r["batch"] == focus["batch"]), key=lambda r: r["tensorly_speedup"])
    decompose = next(
        r for r in rows if r["op"] == "decompose" and (r["batch"], r["rank"]) == (focus["batch"], focus["rank"])
    )
    difference = max(r["loss_difference"] for r in rows if "loss_difference" in r)
    error_gap = max(abs(r["ours_error"] - r["tensorly_error"]) for r in rows if r["op"] == "decompose")
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return (
        f"tucker loss and backward {focus['tensorly_speedup']:.1f}x faster than the original's call "
        f"(B={focus['batch']}, rank {focus['rank']}: {focus['ours_ms']:.1f} ms vs {focus['tensorly_ms']:.0f} ms; "
        f"slowest rank at B={focus['batch']} {worst['tensorly_speedup']:.1f}x; goal >= {SPEEDUP_GOAL:.0f}x: "
        f"{met(worst['tensorly_speedup'] >= SPEEDUP_GOAL)}), same loss (max rel. difference {difference:.1e}); "
        f"decomposition {decompose['tensorly_speedup']:.1f}x faster than tensorly's tucker, "
        f"max |error difference| {error_gap:.1e} (goal <= {ERROR_GOAL:.0e}: {met(error_gap <= ERROR_GOAL)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_flags(parser)
    parser.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=True, help="layout of the maps"
    )
    args = parser.parse_args()
    device = setup(args)
    batches, ranks = (QUICK_BATCHES, QUICK_RANKS) if args.quick else (BATCHES, RANKS)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    with LoadMonitor() as load:
        rows = [
            row
            for batch in batches
            for rank in ranks
            for row in measure_case(batch, rank, layout, device, args.repeats)
        ]
    settings = {
        "channels": CHANNELS,
        "size": SIZE,
        "batches": batches,
        "ranks": ranks,
        "channels_last": args.channels_last,
        "repeats": args.repeats,
    }
    title = (
        f"Tucker decomposition and losses of {'channels-last' if args.channels_last else 'contiguous'} "
        f"(B, {CHANNELS}, {SIZE}, {SIZE}) "
        f"batches at ranks (B, rank, {SIZE}, {SIZE}) on {device.type}, median of {args.repeats} rounds; "
        f"'original' is tensorly's tucker at its defaults, float32, as the original study called it"
    )
    finish(args, device, {title: (rows, COLUMNS)}, settings, load, headline(rows))


if __name__ == "__main__":
    main()
