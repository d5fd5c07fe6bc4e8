"""What to expect from a configuration: the t-interval of its mean over seeds, and the paired
t-test of its difference to the student alone, seed by seed.

Its own module because the statistics (Student-t intervals, ``scipy.stats.ttest_rel``) and their
report are a concern of their own, printed by ``./util.sh study`` as well as the notebook.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from toolbox.analysis.benchmark import BENCHMARK_STATISTICS, _mean_std
from toolbox.analysis.runs import PLAIN_ROLES, REFERENCE, Runs, _isset, _table
from toolbox.analysis.summary import _output_folder, baseline, summarize, write_output
from toolbox.errors import UsageError
from toolbox.utils import markdown_table

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedTest:
    """``method − reference`` over the seeds both have: the mean difference, its t-interval
    (``low``, ``high``) and the two-sided p-value of the paired t-test; NaN where fewer than two
    seeds pair up."""

    pairs: int
    difference: float
    low: float
    high: float
    p_value: float


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Student-t confidence interval of the mean, mean ± t((1 + confidence) / 2, n − 1) · s / √n:
    with a handful of seeds the normal quantile (1.96) would claim far too much (t(0.975, 2) is
    4.30). NaN for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    half = scipy.stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def paired_t_test(
    method: Mapping[int, float], reference: Mapping[int, float], confidence: float = CONFIDENCE
) -> PairedTest:
    """The paired t-test of ``method`` against ``reference``, both ``{seed: accuracy}``. Runs are
    paired by seed because a seed fixes the data order, the augmentation and the student's initial
    weights, whatever the method: pairing removes the share of the spread that the seed causes in
    both runs. The same test as ``scipy.stats.ttest_rel``; no p-value where the differences are
    all equal."""
    seeds = sorted(set(method) & set(reference))
    differences = np.array([method[seed] - reference[seed] for seed in seeds], dtype=float)
    if len(differences) < 2:
        return PairedTest(len(seeds), float(differences.mean()) if seeds else math.nan, math.nan, math.nan, math.nan)
    low, high = t_interval(differences, confidence)
    if np.ptp(differences) == 0:  # no spread: t is undefined, and scipy's answer is rounding noise
        return PairedTest(len(seeds), float(differences.mean()), low, high, math.nan)
    p_value = scipy.stats.ttest_rel([method[s] for s in seeds], [reference[s] for s in seeds]).pvalue
    return PairedTest(len(seeds), float(differences.mean()), low, high, float(p_value))


EXPECTATION_COLUMNS = (
    "method",
    "family",
    "dataset",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "pairs",
    "difference",
    "difference_low",
    "difference_high",
    "p_value",
)


def expectation_table(runs: Runs, statistic: str = "best") -> pd.DataFrame:
    """Per configuration, what to expect of ``statistic`` (``best`` or ``last`` epoch's test
    accuracy, %) from one run: ``n`` seeds, ``mean``, sample ``std``, the 95% t-interval of the mean
    (``ci_low``, ``ci_high``); for a distillation configuration, its ``paired_t_test`` against
    the student alone (``baseline``'s plain configuration), over ``pairs`` seeds. Rows: per data
    set, the teacher and the student alone first, then the best mean first."""
    if statistic not in BENCHMARK_STATISTICS:
        raise UsageError(f"statistic must be one of {', '.join(BENCHMARK_STATISTICS)}; got {statistic!r}")
    column = BENCHMARK_STATISTICS[statistic][0]
    summary = summarize(runs)
    by_seed = {key: dict(zip(group["seed"], group[column])) for key, group in runs.finished.groupby("key", sort=False)}
    rows = []
    for _, row in summary.iterrows():
        values = list(by_seed[row["key"]].values())
        reference = baseline(summary, row, "none") if row["distillation"] != "none" else None
        test = paired_t_test(by_seed[row["key"]], by_seed[reference["key"]]) if reference is not None else None
        rows.append(
            {
                "method": row["label"],
                "family": row["family"],
                "dataset": row["dataset"],
                "n": len(values),
                "mean": np.mean(values),
                "std": np.std(values, ddof=1) if len(values) > 1 else math.nan,
                **dict(zip(("ci_low", "ci_high"), t_interval(values))),
                **dict(zip(EXPECTATION_COLUMNS[8:], dataclasses.astuple(test) if test else (0, *[math.nan] * 4))),
            }
        )
    table = _table(rows, EXPECTATION_COLUMNS[3:], EXPECTATION_COLUMNS)
    order = [
        (dataset, _role_rank(family_name), -mean)
        for dataset, family_name, mean in zip(table["dataset"], table["family"], table["mean"])
    ]
    return table.iloc[sorted(range(len(table)), key=order.__getitem__)].reset_index(drop=True)


def _role_rank(family_name: str) -> int:
    """Teachers first, then the student alone, then the methods."""
    roles = family_name.split(" / ")
    return next((rank for rank, role in enumerate(PLAIN_ROLES) if role in roles), len(PLAIN_ROLES))


def _interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]" if _isset(low) else ""


def expectation_markdown(table: pd.DataFrame) -> str:
    """``expectation_table`` as GitHub Markdown: method | n | mean ± std | 95% CI |
    Δ vs student alone [95% CI] | p (paired t); the student alone's row says it is the reference, and
    a Δ over fewer seeds than ``n`` (a seed the student alone lacks) says how many were paired."""
    level = f"{CONFIDENCE:.0%}"
    rows = []
    for _, row in table.iterrows():
        if row["pairs"]:
            fewer = f"({row['pairs']} of {row['n']} seeds paired)" if row["pairs"] < row["n"] else ""
            delta = " ".join(
                filter(
                    None, (f"{row['difference']:+.2f}", _interval(row["difference_low"], row["difference_high"]), fewer)
                )
            )
            p_value = f"{row['p_value']:.3f}" if _isset(row["p_value"]) else ""
        else:
            delta, p_value = ("reference", "") if REFERENCE in row["family"].split(" / ") else ("", "")
        rows.append(
            [
                row["method"],
                str(row["n"]),
                _mean_std(row["mean"], row["std"], row["n"]),
                _interval(row["ci_low"], row["ci_high"]),
                delta,
                p_value,
            ]
        )
    header = ["method", "n", "mean ± std", f"{level} CI", f"Δ vs student alone [{level} CI]", "p (paired t)"]
    return markdown_table(header, rows, [False, True, True, True, True, True])


def expectation_report(runs: Runs, statistic: str = "best") -> str:
    """A caption saying what the numbers are, and ``expectation_markdown`` per data set."""
    table = expectation_table(runs, statistic)
    if table.empty:
        return f"No finished runs under {runs.folder}: nothing to expect yet."
    level = f"{CONFIDENCE:.0%}"
    meaning = BENCHMARK_STATISTICS[statistic][1]
    caption = (
        f"{meaning[0].upper()}{meaning[1:]}, %, over n seeds: mean ± sample standard deviation; "
        f"{level} CI: the Student-t interval of the mean; Δ vs student alone: the mean over seeds of (method − "
        f"student alone), each distilled run paired with the student-alone run of the same seed (same data order "
        f"and initial weights), with its {level} t-interval and the two-sided p-value of the paired t-test "
        f"(scipy.stats.ttest_rel)."
    )
    return "\n\n".join(
        [
            caption,
            *(
                f"**{dataset}**\n\n{expectation_markdown(group)}"
                for dataset, group in table.groupby("dataset", sort=False)
            ),
        ]
    )


def export_expectations(runs: Runs, folder: str | Path, statistic: str = "best") -> list[Path]:
    """Write ``expectation_report`` as ``what_to_expect.md`` in ``folder`` (created if missing);
    nothing when no run has finished, so that pointing at the wrong folder never overwrites a table."""
    if runs.finished.empty:
        return []
    path = _output_folder(folder) / "what_to_expect.md"
    report = expectation_report(runs, statistic) + "\n"
    write_output(path, lambda temporary: temporary.write_text(report))
    return [path]
