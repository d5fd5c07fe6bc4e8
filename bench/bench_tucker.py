#!/usr/bin/env python
"""Our Tucker decomposition against tensorly's, side by side, on teacher-map-shaped batches.

    python bench/bench_tucker.py [--quick] [--json FILE] [--device cpu|cuda] [--repeats N]
                                 [--no-channels_last]

For each batch (B, 64, 8, 8) and channel rank r (ranks ``B,r,8,8``: batch and spatial modes kept
whole, as in the study's ``BATCH_SIZE,r,8,8``) it times, interleaved:

* decompose: ``toolbox.tucker.tucker`` (truncated HOSVD from the channel Gram matrix) against
  tensorly's ``tucker`` at its defaults (HOOI, SVD init, up to 100 iterations), as the original
  called it, and at ``n_iter_max=0`` (tensorly's HOSVD alone);
* project / recompose: ours (full-rank modes skipped) against tensorly's ``multi_mode_dot`` and
  ``tucker_to_tensor`` on tensorly's factors (what the original did with them);
* loss: the ``tucker`` and ``tucker_recomp`` distillers' loss, forward and backward into a student
  map, with each decomposition; and ours of ``featuremap`` (no decomposition), the baseline of
  the Tucker losses' overhead.

Both get the same maps: ReLU'd Gaussians (like post-activation maps), channels-last as the training
path's teacher maps are by default, or contiguous with ``--no-channels_last``. Tensorly's speed does
not depend on the layout; ours does, as a channels-last map's channel Gram matrix is one matrix
product without a copy. The relative reconstruction error ||x - x_hat|| / ||x|| of each
decomposition is reported: ours must match tensorly's within 1e-5. The last line is the headline:
the decomposition speed-up over tensorly's defaults.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
from torch import Tensor

from common import Column, LoadMonitor, add_common_flags, finish, interleaved, median, paired_ratio, setup
from toolbox.config import parse_config
from toolbox.distillation import build_distiller
from toolbox.tucker import BATCH_TOKEN, Factors, Ranks, format_ranks, parse_ranks, project, recompose, relative_error, tucker

CHANNELS, SIZE = 64, 8
BATCHES, RANKS = (128, 512), (32, 24, 16, 8)
QUICK_BATCHES, QUICK_RANKS = (16,), (32, 8)
# The case: one (512, 64, 8, 8) teacher batch at ranks (512, 32, 8, 8).
HEADLINE_CASE = (512, 32)
SPEEDUP_GOAL, ERROR_GOAL = 100.0, 1e-5

# The decompositions compared: keyword arguments of toolbox.tucker.tucker.
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {"backend": "fast"},
    "tensorly": {"backend": "tensorly"},
    "hosvd": {"backend": "tensorly", "n_iter_max": 0},
}
OPS = ("decompose", "project", "recompose", "loss featuremap", "loss tucker", "loss tucker_recomp")

COLUMNS = [
    Column("batch", "batch"),
    Column("rank", "rank"),
    Column("op", "op"),
    Column("ours_ms", "ours ms", "{:.2f}"),
    Column("tensorly_ms", "tensorly ms", "{:.1f}"),
    Column("tensorly_speedup", "speed-up", "{:.0f}x"),
    Column("hosvd_ms", "tensorly n_iter_max=0 ms", "{:.1f}"),
    Column("hosvd_speedup", "speed-up", "{:.0f}x"),
    Column("ours_error", "error ours", "{:.7f}"),
    Column("tensorly_error", "error tensorly", "{:.7f}"),
    Column("hosvd_error", "error n_iter_max=0", "{:.7f}"),
]


def tensorly_project(x: Tensor, factors: Factors) -> Tensor:
    """The original's core of ``x`` on tensorly's factors."""
    import tensorly as tl

    with tl.backend_context("pytorch"):
        return tl.tenalg.multi_mode_dot(x, factors, transpose=True)


def tensorly_recompose(core: Tensor, factors: Factors) -> Tensor:
    import tensorly as tl

    with tl.backend_context("pytorch"):
        return tl.tucker_to_tensor((core, factors))


def loss_step(method: str, ranks: Ranks, teacher: Tensor, student: Tensor, options: dict[str, Any]) -> Callable[[], None]:
    """One forward and backward pass of a distiller's loss into the student map. A Tucker loss
    decomposes with ``options`` (what ``TuckerDistiller.soft_loss`` does, with the backend chosen
    here); ``featuremap`` decomposes nothing and is the baseline of the Tucker losses' overhead."""
    config = parse_config(["--distillation", method, "--ranks", format_ranks(ranks)])
    distiller = build_distiller(config, teacher.shape[1:], student.shape[1:]).to(teacher.device)

    def run() -> None:
        if method == "featuremap":
            stage = config.feature_layer + 1  # the distiller reads output number feature_layer
            loss = distiller.soft_loss([teacher] * stage, [student] * stage)
        else:
            with torch.no_grad():
                core, factors = tucker(teacher, ranks, **options)
            loss = distiller.compare(teacher, student, core, factors)
        loss.backward()
        student.grad = None

    return run


def measure_case(batch: int, rank: int, layout: torch.memory_format, device: torch.device, rounds: int) -> list[dict[str, Any]]:
    """The table rows of one (batch, rank) case."""
    ranks = parse_ranks(f"{BATCH_TOKEN},{rank},{SIZE},{SIZE}")
    teacher, student = (torch.randn(batch, CHANNELS, SIZE, SIZE, device=device).relu_().contiguous(memory_format=layout) for _ in range(2))
    student.requires_grad_()
    decompositions = {name: tucker(teacher, ranks, **options) for name, options in VARIANTS.items()}
    errors = {name: relative_error(teacher, recompose(*decomposition)) for name, decomposition in decompositions.items()}

    candidates: dict[str, Callable[[], Any]] = {}
    for name, options in VARIANTS.items():
        candidates[f"decompose/{name}"] = lambda options=options: tucker(teacher, ranks, **options)
        for method in ("tucker", "tucker_recomp"):
            candidates[f"loss {method}/{name}"] = loss_step(method, ranks, teacher, student, options)
    candidates["loss featuremap/ours"] = loss_step("featuremap", ranks, teacher, student, {})
    ours, theirs = decompositions["ours"], decompositions["tensorly"]
    candidates["project/ours"] = lambda: project(teacher, ours[1])
    candidates["project/tensorly"] = lambda: tensorly_project(teacher, theirs[1])
    candidates["recompose/ours"] = lambda: recompose(*ours)
    candidates["recompose/tensorly"] = lambda: tensorly_recompose(*theirs)
    samples = interleaved(candidates, device, rounds)

    rows = []
    for op in OPS:
        row: dict[str, Any] = {"batch": batch, "rank": rank, "op": op}
        mine = samples[f"{op}/ours"]
        row["ours_ms"] = 1e3 * median(mine)
        for name in ("tensorly", "hosvd"):
            if f"{op}/{name}" in samples:
                row[f"{name}_ms"] = 1e3 * median(samples[f"{op}/{name}"])
                row[f"{name}_speedup"] = paired_ratio(samples[f"{op}/{name}"], mine)
        if op == "decompose":
            row.update({f"{name}_error": error for name, error in errors.items()})
        rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]]) -> str:
    """The decomposition speed-up at the issue's case (or the largest case run) and the worst one,
    and the largest error difference, each against its goal."""
    decompose = [row for row in rows if row["op"] == "decompose"]
    focus = next((r for r in decompose if (r["batch"], r["rank"]) == HEADLINE_CASE), max(decompose, key=lambda r: (r["batch"], r["rank"])))
    worst = min(decompose, key=lambda r: r["tensorly_speedup"])
    error_gap = max(abs(r["ours_error"] - r[f"{name}_error"]) for r in decompose for name in ("tensorly", "hosvd"))
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return (
        f"decomposition {focus['tensorly_speedup']:.0f}x faster than tensorly's tucker at its defaults "
        f"(B={focus['batch']}, rank {focus['rank']}: {focus['ours_ms']:.2f} ms vs {focus['tensorly_ms']:.0f} ms; "
        f"slowest case {worst['tensorly_speedup']:.0f}x; goal >= {SPEEDUP_GOAL:.0f}x: {met(worst['tensorly_speedup'] >= SPEEDUP_GOAL)}), "
        f"max |error difference| {error_gap:.1e} (goal <= {ERROR_GOAL:.0e}: {met(error_gap <= ERROR_GOAL)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True, help="layout of the maps")
    args = parser.parse_args()
    device = setup(args)
    batches, ranks = (QUICK_BATCHES, QUICK_RANKS) if args.quick else (BATCHES, RANKS)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    with LoadMonitor() as load:
        rows = [row for batch in batches for rank in ranks for row in measure_case(batch, rank, layout, device, args.repeats)]
    settings = {"channels": CHANNELS, "size": SIZE, "batches": batches, "ranks": ranks, "channels_last": args.channels_last, "repeats": args.repeats}
    title = (f"Tucker decomposition of {'channels-last' if args.channels_last else 'contiguous'} (B, {CHANNELS}, {SIZE}, {SIZE}) "
             f"batches at ranks (B, rank, {SIZE}, {SIZE}) on {device.type}, median of {args.repeats} rounds")
    finish(args, device, {title: (rows, COLUMNS)}, settings, load, headline(rows))


if __name__ == "__main__":
    main()
