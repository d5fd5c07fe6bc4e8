"""One row per configuration, its baselines, and the summary as exported (CSV and Markdown).

Kept apart from loading because the what-to-expect, curve and benchmark tables all compare a
configuration with its baseline (``baseline``), and the benchmark groups cells by the same
method settings (``_method_settings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from toolbox.analysis.runs import (
    BASELINES,
    NAME_COLUMNS,
    SHOWN_FLAGS,
    SUMMARY_NUMBERS,
    SUMMARY_STATS,
    Runs,
    _curve_stack,
    _isset,
    _table,
    flag_columns,
)
from toolbox.errors import UsageError
from toolbox.rundir import method_defaulted, method_specific
from toolbox.utils import atomic_write, markdown_cell, markdown_table


def summarize(runs: Runs) -> pd.DataFrame:
    """One row per configuration; within each data set, the best mean best-accuracy first.

    ``*_std`` are sample standard deviations over seeds (NaN for a single run);
    ``max_mean_test_acc`` is the original's statistic, the maximum over epochs of the mean test
    accuracy curve; ``diff_featuremap`` and ``diff_plain`` are differences in mean best accuracy
    to the baseline configuration (see ``baseline``), NaN where there is none.
    """
    finished = runs.finished
    flags = flag_columns(finished)
    rows = []
    for key, group in finished.groupby("key", sort=False):
        first = group.iloc[0]
        rows.append(
            {
                **{c: first[c] for c in (*NAME_COLUMNS, *flags)},
                "runs": len(group),
                "seeds": ",".join(str(s) for s in sorted(group["seed"])),
                "best_test_acc_mean": group["best_test_acc"].mean(),
                "best_test_acc_std": group["best_test_acc"].std(ddof=1),
                "final_test_acc_mean": group["final_test_acc"].mean(),
                "final_test_acc_std": group["final_test_acc"].std(ddof=1),
                "max_mean_test_acc": _curve_stack(group, "test_acc").mean().max(),
            }
        )
    summary = _table(rows, SUMMARY_NUMBERS, [*NAME_COLUMNS, *flags, *SUMMARY_STATS[: -len(BASELINES)]])
    for name, distillation in BASELINES.items():
        summary[f"diff_{name}"] = pd.Series(
            [
                row["best_test_acc_mean"] - base["best_test_acc_mean"]
                if (base := baseline(summary, row, distillation)) is not None
                else np.nan
                for _, row in summary.iterrows()
            ],
            index=summary.index,
            dtype=float,
        )
    if summary.empty:
        return summary
    return summary.sort_values(
        ["dataset", "best_test_acc_mean"], ascending=[True, False], kind="stable", ignore_index=True
    )


def baseline(summary: pd.DataFrame, row: pd.Series, distillation: str) -> Optional[pd.Series]:
    """The configuration of method ``distillation`` that ``row`` is compared against: same data
    set, student and schedule, and same teacher when both have one; the methods' settings (their
    own flags, and those they give defaults, like kd's cross-entropy weight 0.1) may differ. Where
    several qualify, the one that also agrees on the settings both use (loss, beta, feature layer);
    None when that leaves none or several."""
    flags = flag_columns(summary)
    settings = _method_settings()
    shared = [f for f in flags if f not in settings and f != "distillation"]
    candidates = summary[summary["distillation"] == distillation]
    candidates = candidates[[_agree(row, base, shared) for _, base in candidates.iterrows()]]
    if len(candidates) > 1:
        specific = [f for f in flags if f in settings]
        candidates = candidates[[_agree(row, base, specific) for _, base in candidates.iterrows()]]
    return candidates.iloc[0] if len(candidates) == 1 else None


def _agree(a: pd.Series, b: pd.Series, flags: Sequence[str]) -> bool:
    """Equal on every flag that both set."""
    return all(a[f] == b[f] for f in flags if _isset(a[f]) and _isset(b[f]))


def _method_settings() -> frozenset[str]:
    """Flags that are a method's settings (its own flags, and those it gives defaults, like
    ``ce_weight``): configurations differing in these are different rows, not different recipes."""
    return method_specific() | method_defaulted()


def _output_folder(folder: str | Path) -> Path:
    """A folder the notebook writes into, created with its parents (an analysis folder need not exist)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_output(path: Path, write: Callable[[Path], None]) -> None:
    """Write a table the analysis exports, atomically (a reader never sees half of it) and never
    through a symbolic link: a link planted at ``summary.md`` would have the user's file it points
    to overwritten."""
    if path.is_symlink():
        raise UsageError(
            f"{path} is a symbolic link, and the analysis never writes through one; it was left as it is: "
            "remove it, or choose another SUMMARY_DIR"
        )
    atomic_write(path, write)


def compact(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as shown and exported: name, the usual flags, the other flags in which
    configurations differ, and the statistics."""
    flags = flag_columns(summary)
    shown = [f for f in flags if f in SHOWN_FLAGS or summary[f].dropna().nunique() > 1]
    return summary[["method", *shown, *SUMMARY_STATS]]


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub Markdown table: numeric columns right-aligned, floats rounded, unset cells blank
    (pandas' own ``to_markdown`` needs the optional ``tabulate`` package)."""

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    rows = [[markdown_cell(v, digits) if _isset(v) else "" for v in row] for row in table.itertuples(index=False)]
    return markdown_table([str(c) for c in table.columns], rows, numeric)


def export_summary(summary: pd.DataFrame, folder: str | Path, stem: str = "summary") -> list[Path]:
    """Write the compact summary as ``<stem>.csv`` (full precision) and ``<stem>.md``; nothing for
    an empty summary, so that pointing at the wrong folder never overwrites a good table."""
    if summary.empty:
        return []
    table = compact(summary)
    folder = _output_folder(folder)
    csv_path, markdown_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    write_output(csv_path, lambda temporary: table.to_csv(temporary, index=False))
    write_output(markdown_path, lambda temporary: temporary.write_text(to_markdown(table)))
    return [csv_path, markdown_path]
