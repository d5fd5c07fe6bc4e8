"""Learning curves over seeds and accuracy against Tucker rank, as tables and as matplotlib plots,
each figure also saved as a PNG file beside the tables (``save_figure``).

The only part of the analysis that draws, so matplotlib is imported here alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from toolbox.analysis.runs import (
    BASELINES,
    CURVES,
    TUCKER_METHODS,
    Runs,
    _curve_stack,
    _keeps_other_modes_whole,
    _other_modes_tag,
    feature_map_shape,
)
from toolbox.analysis.summary import _output_folder, baseline, write_output
from toolbox.config.choices import parse_ranks
from toolbox.errors import UsageError
from toolbox.tucker import absolute_ranks


def curves(runs: Runs, curve: str) -> pd.DataFrame:
    """Per configuration (``label``) and epoch (from 1): mean and sample standard deviation of
    ``curve`` over its runs, and how many runs reached that epoch."""
    if curve not in CURVES:
        raise UsageError(f"curve must be one of {', '.join(CURVES)}; got {curve!r}")
    frames = []
    for label, group in runs.finished.groupby("label", sort=False):
        stack = _curve_stack(group, curve)
        frames.append(
            pd.DataFrame(
                {
                    "label": label,
                    "epoch": stack.columns + 1,
                    "mean": stack.mean().values,
                    "std": stack.std(ddof=1).values,
                    "runs": stack.count().values,
                }
            )
        )
    columns = ["label", "epoch", "mean", "std", "runs"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _no_data(ax: Axes, message: str) -> Axes:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return ax


def plot_curves(runs: Runs, curve: str, ax: Optional[Axes] = None, labels: Optional[Sequence[str]] = None) -> Axes:
    """Mean ``curve`` per configuration with a band of one standard deviation; ``labels`` picks
    the configurations to draw (all by default)."""
    ax = ax or plt.subplots(figsize=(8, 5))[1]
    table = curves(runs, curve)
    if labels is not None:
        table = table[table["label"].isin(labels)]
    if table.empty:
        return _no_data(ax, "no finished runs")
    for label, line in table.groupby("label", sort=False):
        band = line["std"].fillna(0)  # a single run has no spread to draw
        ax.plot(line["epoch"], line["mean"], label=f"{label} (n={line['runs'].max()})")
        ax.fill_between(line["epoch"], line["mean"] - band, line["mean"] + band, alpha=0.2)
    ax.set(xlabel="epoch", ylabel=CURVES[curve], title=f"{CURVES[curve]}, mean ± 1 std over seeds")
    ax.legend(fontsize="small")
    return ax


def plot_distillation_losses(runs: Runs, columns: int = 4) -> Figure:
    """The training distillation loss of each method on axes of its own, a line per configuration:
    their scales differ by orders of magnitude (kd's KL divergence against the normalised distances
    of featuremap and tucker), so that one axis would flatten all but the largest to 0."""
    table = curves(runs, "train_soft_loss")
    methods = runs.finished.drop_duplicates("label").set_index("label")["distillation"]
    table = table[table["label"].map(methods) != "none"]
    groups = list(table.groupby(table["label"].map(methods), sort=False))
    if not groups:
        figure, ax = plt.subplots(figsize=(8, 3))
        _no_data(ax, "no finished run with a distillation loss")
        return figure
    width = min(columns, len(groups))
    figure, axes = plt.subplots(
        math.ceil(len(groups) / width),
        width,
        figsize=(4.5 * width, 3.2 * math.ceil(len(groups) / width)),
        squeeze=False,
    )
    for ax, (method, lines) in zip(axes.flat, groups):
        for label, line in lines.groupby("label", sort=False):
            band = line["std"].fillna(0)
            ax.plot(line["epoch"], line["mean"], label=f"{label} (n={line['runs'].max()})")
            ax.fill_between(line["epoch"], line["mean"] - band, line["mean"] + band, alpha=0.2)
        ax.set(title=method, xlabel="epoch", ylabel="distillation loss")
        ax.legend(fontsize="x-small")
    for ax in axes.flat[len(groups) :]:
        ax.set_axis_off()
    figure.suptitle("training distillation loss per method, mean ± 1 std over seeds (each on its own scale)")
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, folder: str | Path, name: str) -> Path:
    """``figure`` as the PNG file ``name`` in ``folder``, written as the tables are (atomically, never
    through a symbolic link): a notebook's figures stay readable outside the executed notebook."""
    path = _output_folder(folder) / name
    write_output(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight"))
    return path


def rank_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The Tucker configurations with their channel rank and the line each belongs to when
    accuracy is drawn against rank: its variant (tucker, recomp_teacher, ...), the other modes'
    ranks where they are truncated, and its details."""
    rows = []
    for _, row in summary[summary["distillation"].isin(TUCKER_METHODS)].iterrows():
        ranks = absolute_ranks(parse_ranks(row["ranks"]), feature_map_shape(row))
        others = "" if _keeps_other_modes_whole(ranks, row) else f" {_other_modes_tag(ranks)}"
        rows.append(
            {
                "method": row["method"],
                "line": row["family"] + others + (f" ({row['details']})" if row["details"] else ""),
                "channel_rank": ranks[1],
                "channel_fraction": ranks[1] / feature_map_shape(row)[0],
                **{c: row[c] for c in ("best_test_acc_mean", "best_test_acc_std", "runs")},
            }
        )
    columns = ["method", "line", "channel_rank", "channel_fraction", "best_test_acc_mean", "best_test_acc_std", "runs"]
    return pd.DataFrame(rows, columns=columns).sort_values(["line", "channel_rank"], kind="stable", ignore_index=True)


def plot_accuracy_vs_rank(summary: pd.DataFrame, ax: Optional[Axes] = None) -> Axes:
    """Mean best test accuracy (± 1 std) against the channel rank, a line per Tucker variant,
    with the featuremap (dashed) and plain (dotted) baselines of these configurations."""
    ax = ax or plt.subplots(figsize=(8, 5))[1]
    table = rank_table(summary)
    if table.empty:
        return _no_data(ax, "no finished tucker or tucker_recomp runs")
    for line, points in table.groupby("line", sort=False):
        ax.errorbar(
            points["channel_rank"],
            points["best_test_acc_mean"],
            yerr=points["best_test_acc_std"].fillna(0),
            marker="o",
            capsize=3,
            label=line,
        )
    tucker = summary[summary["distillation"].isin(TUCKER_METHODS)]
    for style, distillation in zip(("--", ":"), BASELINES.values()):
        references = {
            base["key"]: base
            for _, row in tucker.iterrows()
            if (base := baseline(summary, row, distillation)) is not None
        }
        for reference in references.values():
            ax.axhline(reference["best_test_acc_mean"], linestyle=style, color="grey", linewidth=1)
            ax.annotate(
                reference["label"],
                (0, reference["best_test_acc_mean"]),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(4, 2),
                fontsize="small",
                color="grey",
            )
    ax.set(
        xlabel="channel rank",
        ylabel="best test accuracy (%)",
        title="Accuracy against channel rank, mean ± 1 std over seeds",
    )
    ax.legend(fontsize="small")
    return ax
