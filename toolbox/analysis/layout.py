"""The benchmark table in a data set's published layout (ImageNet's pairs and numbers), every
published pair and row present before a run fills it, so the table says what is still to run.

Apart from ``benchmark`` because a layout is data (pairs, a file of numbers, their sources) that a
new data set adds to ``BENCHMARK_LAYOUTS`` without touching how cells are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from toolbox.analysis.benchmark import (
    BENCHMARK_PAIRS,
    BENCHMARK_ROWS,
    BENCHMARK_STATISTICS,
    CIFAR_SOURCES,
    PUBLISHED_CSV,
    benchmark_markdown,
    benchmark_table,
    pair_label,
    published_results,
    published_table,
    with_published,
)
from toolbox.analysis.runs import Runs
from toolbox.analysis.summary import summarize
from toolbox.config.choices import IMAGENET_PAIRS


@dataclass(frozen=True)
class BenchmarkLayout:
    """A data set's published table: its pairs (always columns, in this order, empty until run),
    the file of its published numbers, and the sources they come from (for the caption)."""

    pairs: tuple[tuple[str, str], ...]
    published: Path
    sources: str


IMAGENET_PUBLISHED_CSV = PUBLISHED_CSV.parent / "imagenet.csv"
"""The published ImageNet numbers (mdistiller's README; torchvision's weights; torchdistill's and ReviewKD's
READMEs)."""
BENCHMARK_LAYOUTS = {
    "cifar100": BenchmarkLayout(BENCHMARK_PAIRS, PUBLISHED_CSV, CIFAR_SOURCES),
    "imagenet": BenchmarkLayout(
        IMAGENET_PAIRS,
        IMAGENET_PUBLISHED_CSV,
        "kd, dkd and kd_dot (KD with mdistiller's DOT) from mdistiller's README, trained with "
        "mdistiller's solver (--recipe imagenet); teacher and student: torchvision's weights, "
        "trained by torchvision's own recipe; at, crd: torchdistill's README, its own recipe; dist: "
        "DIST's README, its own recipe; reviewkd: ReviewKD's README, its authors' recipe",
    ),
}
"""``dataset`` -> its ``BenchmarkLayout``: the data sets whose benchmark table has published numbers."""


def layout_table(
    runs: Runs | pd.DataFrame,
    statistic: str = "last",
    dataset: str = "imagenet",
    where: Optional[Mapping[str, Any]] = None,
) -> pd.DataFrame:
    """``benchmark_table`` in ``dataset``'s published layout, with the published number beside each
    of ours (``with_published``): every pair of the layout is a column and every published row a
    row, even before a run fills it, so the table says what is still to run; a pair or method of
    ours beyond the layout follows. Empty when ``dataset`` has no run of a pair."""
    layout = BENCHMARK_LAYOUTS[dataset]
    table = benchmark_table(runs, statistic, dataset, where)
    if table.empty:
        return table
    published = published_results(layout.published)
    reference = published_table(published)
    columns = [pair_label(*pair) for pair in layout.pairs]
    ours = list(table.index)
    rows = [*ours, *(r for r in reference.index if r not in ours)]

    def order(label: str) -> tuple:  # the published rows in BENCHMARK_ROWS' order, then ours, then the others
        base = label.split(" (")[0]
        if base in BENCHMARK_ROWS:
            return (0, BENCHMARK_ROWS.index(base), ours.index(label) if label in ours else -1)
        return (1, ours.index(label), "") if label in ours else (2, 0, label)

    table = table.reindex(
        index=sorted(rows, key=order),
        columns=[*columns, *(c for c in table.columns if c not in columns)],
        fill_value="",
    )
    return with_published(table.rename_axis(index="method"), published)


def layout_reports(
    runs: Runs | pd.DataFrame, dataset: str = "imagenet", where: Optional[Mapping[str, Any]] = None
) -> dict[str, str]:
    """Per statistic, keyed ``<dataset>_<statistic>`` (so ``export_benchmark`` writes
    ``benchmark_imagenet_last.md`` beside the CIFAR-100 tables), a caption and ``layout_table`` in
    Markdown; empty when ``dataset`` has no run of a pair. Raises ``UsageError`` as ``benchmark_table``."""
    summary = summarize(runs) if isinstance(runs, Runs) else runs
    layout = BENCHMARK_LAYOUTS[dataset]
    source = layout.published.relative_to(PUBLISHED_CSV.parents[2]).as_posix()
    reports = {}
    for statistic, (_, meaning) in BENCHMARK_STATISTICS.items():
        table = layout_table(summary, statistic, dataset, where)
        if table.empty:
            return {}
        caption = (
            f"{dataset}, top-1 {meaning}, %: mean ± sample standard deviation over seeds (a single seed: its "
            f"value alone); published numbers in parentheses ({source}): {layout.sources}."
        )
        reports[f"{dataset}_{statistic}"] = f"{caption}\n\n{benchmark_markdown(table)}"
    return reports
