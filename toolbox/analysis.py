"""The study's tables and curves, aggregated from the run folders under an experiments folder.

Only each run's ``config.json`` and ``metrics.json`` are read (see ``toolbox.rundir``): a copy of
``experiments/`` without checkpoints is enough, and a run counts once its ``metrics.json`` exists,
so a job still training never shows up as a result.

Runs are grouped into configurations by the flags that change the experiment. Runtime flags and
the seed never split a configuration, and neither do flags a method ignores (the ranks saved with
a featuremap run, the reconstruction target of a plain tucker run): see ``toolbox.run_identity.defining_flags``.
Configurations are named as in the original study's table (``featuremap``, ``tucker_x0.5``,
``recomp_both_x0.25``: channel rank over the channels of the distilled map); a label adds the
other flags in which the configurations of a folder differ (``tucker_x0.5 (beta=50)``). Plain
training is named by its role here: ``teacher`` when a run of the folder distilled from it,
``student alone`` when it is the no-teacher baseline of a distillation run (or nothing distils from it).

``expectation_table`` is the "what to expect" view: per configuration, the mean over seeds with its
t-interval, and the paired t-test of its difference to the student alone, seed by seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.axes import Axes

from toolbox.choices import CROSS_ARCH_PAIRS, IMAGE_SIZES, SAME_ARCH_PAIRS, parse_ranks
from toolbox.choices import IMAGENET_PAIRS
from toolbox.config import RECIPES, RUNTIME_FIELDS, Config, recipe_defaults
from toolbox.errors import UsageError
from toolbox.models import stage_shapes
from toolbox.naming import format_value, ranks_tag
from toolbox.rundir import (
    ABSENT,
    CONFIG_FILE,
    SWITCHED_FLAGS,
    TEACHER_FLAGS,
    RunDir,
    defining_flags,
    method_defaulted,
    method_specific,
)
from toolbox.tucker import Ranks, absolute_ranks
from toolbox.utils import markdown_cell, markdown_table

TUCKER_METHODS = ("tucker", "tucker_recomp")

METHOD_SPECIFIC = method_specific()
NOT_FLAGS = RUNTIME_FIELDS | {"seed", "experiment_name"}
SHOWN_FLAGS = ("distillation", "dataset", "teacher", "student", "ranks", "recomp_target", "epochs")
"""Always in the compact summary; other flags appear only where configurations differ in them."""
NAMED_FLAGS = frozenset({"distillation", "ranks", "recomp_target", "noise_std"})
"""Flags that a configuration's name already spells out."""

CURVES = {
    "test_acc": "test accuracy (%)",
    "train_acc": "train accuracy (%)",
    "test_loss": "test cross-entropy",
    "train_hard_loss": "train cross-entropy",
    "train_soft_loss": "train distillation loss",
}
BASELINES = {"featuremap": "featuremap", "plain": "none"}
"""``diff_<name>`` summary column -> distillation method of the configuration compared against."""

NAME_COLUMNS = ("method", "family", "label", "details", "key")
RUN_STATS = ("seed", "best_test_acc", "final_test_acc", "best_epoch", "wall_time_s")
SUMMARY_NUMBERS = ("runs", "best_test_acc_mean", "best_test_acc_std", "final_test_acc_mean", "final_test_acc_std",
                   "max_mean_test_acc")
SUMMARY_STATS = ("runs", "seeds", *SUMMARY_NUMBERS[1:], *(f"diff_{name}" for name in BASELINES))
PENDING_COLUMNS = ("run", "status", "distillation", "dataset", "teacher", "student", "seed", "epochs")
NOT_FLAG_COLUMNS = frozenset({"run", *NAME_COLUMNS, *RUN_STATS, *SUMMARY_STATS, *CURVES})


def feature_map_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of the teacher's distilled map, e.g. (64, 8, 8) for layer3 of the CIFAR ResNets
    (config.json also records it as ``feature_shapes``)."""
    return stage_shapes(config["teacher"], image_size=IMAGE_SIZES[config["dataset"]])[config["feature_layer"]]


def _keeps_other_modes_whole(ranks: Ranks, config: Mapping[str, Any]) -> bool:
    """The original's Tucker runs truncated the channel mode only."""
    _, height, width = feature_map_shape(config)
    return ranks[0] is None and tuple(ranks[2:]) == (height, width)


def _other_modes_tag(ranks: Ranks) -> str:
    """``B-r-4-4``: the ranks with the channel rank left open, naming a line of a rank plot."""
    return "-".join("B" if rank is None else "r" if mode == 1 else str(rank) for mode, rank in enumerate(ranks))


def family(config: Mapping[str, Any]) -> str:
    """A configuration's name without its setting: ``tucker``, ``recomp_both``, ``noise``,
    ``plain`` (training without a teacher; ``load_runs`` renames it by its role), or the
    distillation method."""
    distillation = config["distillation"]
    if distillation == "tucker_recomp":
        return f"recomp_{config['recomp_target']}"
    return "plain" if distillation == "none" else distillation


ADDITIONS = (("kd_weight", "+kd"), ("logit_standardization", "+ls"))
"""Flags of the loss's additions that ``method_name`` appends, as the published tables name them."""


def method_name(config: Mapping[str, Any]) -> str:
    """The original's name for a configuration: ``featuremap``, ``tucker_x0.5`` (channel rank over
    channels), ``recomp_both_x0.25``, ``noise_std1``, ``kd``, ``plain``. Tucker ranks that truncate
    more than the channel mode are appended (``tucker_x0.5_B-32-4-4``); so are the loss's additions
    and DOT: ``crd+kd`` (--kd_weight), ``kd+ls`` (--logit_standardization), ``kd_dot`` (--optimizer dot)."""
    name = family(config)
    if config["distillation"] == "noise":
        name = f"{name}_std{config['noise_std']:g}"
    if config["distillation"] in TUCKER_METHODS:
        ranks = absolute_ranks(parse_ranks(config["ranks"]), feature_map_shape(config))
        fraction = ranks[1] / feature_map_shape(config)[0]
        suffix = "" if _keeps_other_modes_whole(ranks, config) else f"_{ranks_tag(config['ranks'])}"
        name = f"{name}_x{fraction:g}{suffix}"
    name += "".join(suffix for flag, suffix in ADDITIONS if config.get(flag))
    return f"{name}_dot" if config.get("optimizer") == "dot" else name


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flags that make a run's configuration (``toolbox.run_identity.defining_flags``, the same rule
    that names and checks runs), in ``Config`` order, those its method ignores set to None. An
    unknown method keeps all its flags, so that its runs are split too finely rather than mixed."""
    relevant = set(defining_flags(config["distillation"], config))
    order = {field.name: index for index, field in enumerate(dataclasses.fields(Config))}
    flags = sorted((k for k in config if k not in NOT_FLAGS), key=lambda k: (order.get(k, len(order)), k))
    optional = METHOD_SPECIFIC | set(TEACHER_FLAGS) | set(SWITCHED_FLAGS)
    return {k: config[k] if k not in optional or k in relevant else None for k in flags}


def flag_columns(table: pd.DataFrame) -> list[str]:
    """The configuration flags among the columns of a run or summary table."""
    return [c for c in table.columns if c not in NOT_FLAG_COLUMNS]


def _table(records: list[dict[str, Any]], numeric: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Flags stay Python objects (an ignored flag stays None, an integer stays an integer);
    the statistics become numbers."""
    table = pd.DataFrame(records, dtype=object) if records else pd.DataFrame(columns=list(columns), dtype=object)
    for column in numeric:
        table[column] = pd.to_numeric(table[column])
    return table


def _isset(value: Any) -> bool:
    """False for a flag the method ignores (None, or NaN once pandas has been through it)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _with_labels(finished: pd.DataFrame) -> pd.DataFrame:
    """``details``: the flags, beyond those in the name, in which the configurations of the same
    family (all tucker runs, all recomp_both runs, all plain runs, ...) differ; ``label``: name and
    details, which tells every configuration apart and draws each family's rank curve as one line."""
    flags = [c for c in flag_columns(finished) if c not in NAMED_FLAGS]
    varying = {
        name: [c for c in flags if members[c].dropna().nunique() > 1]
        for name, members in finished.groupby("family", sort=False)
    }
    finished["details"] = [
        ", ".join(f"{c}={row[c]}" for c in varying[row["family"]] if _isset(row[c])) for _, row in finished.iterrows()
    ]
    finished["label"] = [
        f"{method} ({details})" if details else method for method, details in zip(finished["method"], finished["details"])
    ]
    return finished


@dataclass
class Runs:
    """The runs under one experiments folder: ``finished`` has a row per run (name, flags, seed,
    accuracies, and each curve of ``metrics.json`` as a list); ``pending`` lists the runs without
    results, unfinished or unreadable, with a ``status``."""

    folder: Path
    finished: pd.DataFrame
    pending: pd.DataFrame


def _run_record(name: str, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    flags = identity(config)
    return {
        "run": name,
        "method": method_name(config),
        "family": family(config),
        "key": json.dumps(flags, sort_keys=True),
        **flags,
        "seed": config["seed"],
        "best_test_acc": metrics["best_test_acc"],
        "final_test_acc": metrics["test_acc"][-1],
        "best_epoch": metrics["best_epoch"],
        "wall_time_s": metrics["wall_time_s"],
        **{curve: list(metrics[curve]) for curve in CURVES},
    }


PLAIN_ROLES = ("teacher", "student alone")
REFERENCE = "student alone"
"""The role of the plain configuration every distillation configuration is compared against."""


def _plain_roles(finished: pd.DataFrame, teacher_folders: set[str]) -> pd.Series:
    """The role of each plain run's configuration, so that a table never shows a teacher and the
    no-teacher baseline under one name (both are ``--distillation none``, both live under
    ``<dataset>/teacher/``): ``teacher`` when a run of the folder distilled from one of its runs
    (``teacher_folders``: the folders of the checkpoints that runs name), ``student alone`` when a
    distillation run of the same data set has its architecture as student, or when nothing
    distils from it; ``teacher / student alone`` when both."""
    plain = finished[finished["distillation"] == "none"]
    students = set(zip(*(finished.loc[finished["distillation"] != "none", c] for c in ("dataset", "student"))))
    roles = {}
    for key, group in plain.groupby("key", sort=False):
        teacher = any(folder == run or folder.endswith(f"/{run}") for run in group["run"] for folder in teacher_folders)
        student = (group["dataset"].iloc[0], group["student"].iloc[0]) in students or not teacher
        roles[key] = " / ".join(role for role, found in zip(PLAIN_ROLES, (teacher, student)) if found)
    return plain["key"].map(roles)


def load_runs(experiments_dir: str | Path) -> Runs:
    """Every run folder (a folder with ``config.json``) under ``experiments_dir``; a run whose
    files cannot be read is listed as pending with the reason, not dropped."""
    folder = Path(experiments_dir)
    if not folder.is_dir():
        raise UsageError(f"experiments folder {folder} does not exist (set EXPERIMENTS_DIR to a folder of runs)")
    finished, pending, teacher_folders = [], [], set()
    for config_path in sorted(folder.rglob(CONFIG_FILE)):
        run = RunDir(config_path.parent)
        name = run.path.relative_to(folder).as_posix()
        try:
            config = run.read_json(run.config)["config"]
            if config.get("teacher_checkpoint"):
                teacher_folders.add(Path(config["teacher_checkpoint"]).parent.as_posix())
            metrics = run.read_json(run.metrics)
            if metrics is None:
                pending.append({"run": name, "status": "unfinished", **{k: config.get(k) for k in PENDING_COLUMNS[2:]}})
            else:
                finished.append(_run_record(name, config, metrics))
        except (UsageError, KeyError, TypeError, IndexError, ValueError) as error:
            pending.append({"run": name, "status": f"unreadable ({type(error).__name__}: {error})"})
    empty_columns = ["run", *NAME_COLUMNS, *SHOWN_FLAGS, "feature_layer", *RUN_STATS, *CURVES]
    finished_table = _table(finished, RUN_STATS, empty_columns)
    roles = _plain_roles(finished_table, teacher_folders)
    finished_table.loc[roles.index, "method"] = finished_table.loc[roles.index, "family"] = roles
    finished_table = _with_labels(finished_table)
    return Runs(folder, finished_table, pd.DataFrame(pending, columns=list(PENDING_COLUMNS)))


def describe(runs: Runs) -> str:
    """One line saying what the folder holds, and plainly when there is nothing to summarise."""
    without = f"{len(runs.pending)} without results"
    if runs.finished.empty:
        return f"No finished runs under {runs.folder} ({without}): nothing to summarise yet."
    configurations = runs.finished["key"].nunique()
    return f"{len(runs.finished)} finished runs in {configurations} configurations under {runs.folder}; {without}."


def _curve_stack(group: pd.DataFrame, curve: str) -> pd.DataFrame:
    """Runs as rows, epochs as columns; a run shorter than the others leaves NaN, which the
    statistics skip."""
    return pd.DataFrame(group[curve].tolist())


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
        rows.append({
            **{c: first[c] for c in (*NAME_COLUMNS, *flags)},
            "runs": len(group),
            "seeds": ",".join(str(s) for s in sorted(group["seed"])),
            "best_test_acc_mean": group["best_test_acc"].mean(),
            "best_test_acc_std": group["best_test_acc"].std(ddof=1),
            "final_test_acc_mean": group["final_test_acc"].mean(),
            "final_test_acc_std": group["final_test_acc"].std(ddof=1),
            "max_mean_test_acc": _curve_stack(group, "test_acc").mean().max(),
        })
    summary = _table(rows, SUMMARY_NUMBERS, [*NAME_COLUMNS, *flags, *SUMMARY_STATS[:-len(BASELINES)]])
    for name, distillation in BASELINES.items():
        summary[f"diff_{name}"] = pd.Series([
            row["best_test_acc_mean"] - base["best_test_acc_mean"] if (base := baseline(summary, row, distillation)) is not None else np.nan
            for _, row in summary.iterrows()
        ], index=summary.index, dtype=float)
    if summary.empty:
        return summary
    return summary.sort_values(["dataset", "best_test_acc_mean"], ascending=[True, False], kind="stable", ignore_index=True)


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


# ---------------------------------------------------------------- what to expect: intervals and paired tests

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


def paired_t_test(method: Mapping[int, float], reference: Mapping[int, float], confidence: float = CONFIDENCE) -> PairedTest:
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


EXPECTATION_COLUMNS = ("method", "family", "dataset", "n", "mean", "std", "ci_low", "ci_high", "pairs", "difference",
                       "difference_low", "difference_high", "p_value")


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
        rows.append({
            "method": row["label"], "family": row["family"], "dataset": row["dataset"], "n": len(values), "mean": np.mean(values),
            "std": np.std(values, ddof=1) if len(values) > 1 else math.nan, **dict(zip(("ci_low", "ci_high"), t_interval(values))),
            **dict(zip(EXPECTATION_COLUMNS[8:], dataclasses.astuple(test) if test else (0, *[math.nan] * 4))),
        })
    table = _table(rows, EXPECTATION_COLUMNS[3:], EXPECTATION_COLUMNS)
    order = [(dataset, _role_rank(family_name), -mean) for dataset, family_name, mean in zip(table["dataset"], table["family"], table["mean"])]
    return table.iloc[sorted(range(len(table)), key=order.__getitem__)].reset_index(drop=True)


def _role_rank(family_name: str) -> int:
    """Teachers first, then the student alone, then the methods."""
    roles = family_name.split(" / ")
    return next((rank for rank, role in enumerate(PLAIN_ROLES) if role in roles), len(PLAIN_ROLES))


def _interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]" if _isset(low) else ""


def expectation_markdown(table: pd.DataFrame) -> str:
    """``expectation_table`` as GitHub Markdown: method | n | mean ± std | 95% CI |
    Δ vs student alone [95% CI] | p (paired t); the student alone's row says it is the reference."""
    level = f"{CONFIDENCE:.0%}"
    rows = []
    for _, row in table.iterrows():
        if row["pairs"]:
            delta, p_value = f"{row['difference']:+.2f} {_interval(row['difference_low'], row['difference_high'])}".strip(), (
                f"{row['p_value']:.3f}" if _isset(row["p_value"]) else "")
        else:
            delta, p_value = ("reference", "") if REFERENCE in row["family"].split(" / ") else ("", "")
        rows.append([row["method"], str(row["n"]), _mean_std(row["mean"], row["std"], row["n"]),
                     _interval(row["ci_low"], row["ci_high"]), delta, p_value])
    header = ["method", "n", "mean ± std", f"{level} CI", f"Δ vs student alone [{level} CI]", "p (paired t)"]
    return markdown_table(header, rows, [False, True, True, True, True, True])


def expectation_report(runs: Runs, statistic: str = "best") -> str:
    """A caption saying what the numbers are, and ``expectation_markdown`` per data set."""
    table = expectation_table(runs, statistic)
    if table.empty:
        return f"No finished runs under {runs.folder}: nothing to expect yet."
    level = f"{CONFIDENCE:.0%}"
    caption = (f"{BENCHMARK_STATISTICS[statistic][1].capitalize()}, %, over n seeds: mean ± sample standard deviation; "
               f"{level} CI: the Student-t interval of the mean; Δ vs student alone: the mean over seeds of (method − "
               f"student alone), each distilled run paired with the student-alone run of the same seed (same data order "
               f"and initial weights), with its {level} t-interval and the two-sided p-value of the paired t-test "
               f"(scipy.stats.ttest_rel).")
    return "\n\n".join([caption, *(f"**{dataset}**\n\n{expectation_markdown(group)}" for dataset, group in table.groupby("dataset", sort=False))])


def export_expectations(runs: Runs, folder: str | Path, statistic: str = "best") -> list[Path]:
    """Write ``expectation_report`` as ``what_to_expect.md`` in ``folder`` (created if missing);
    nothing when no run has finished, so that pointing at the wrong folder never overwrites a table."""
    if runs.finished.empty:
        return []
    path = _output_folder(folder) / "what_to_expect.md"
    path.write_text(expectation_report(runs, statistic) + "\n")
    return [path]


def _output_folder(folder: str | Path) -> Path:
    """A folder the notebook writes into, created with its parents (an analysis folder need not exist)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    table.to_csv(csv_path, index=False)
    markdown_path.write_text(to_markdown(table))
    return [csv_path, markdown_path]


def curves(runs: Runs, curve: str) -> pd.DataFrame:
    """Per configuration (``label``) and epoch (from 1): mean and sample standard deviation of
    ``curve`` over its runs, and how many runs reached that epoch."""
    if curve not in CURVES:
        raise UsageError(f"curve must be one of {', '.join(CURVES)}; got {curve!r}")
    frames = []
    for label, group in runs.finished.groupby("label", sort=False):
        stack = _curve_stack(group, curve)
        frames.append(pd.DataFrame({
            "label": label, "epoch": stack.columns + 1, "mean": stack.mean().values,
            "std": stack.std(ddof=1).values, "runs": stack.count().values,
        }))
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


def rank_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The Tucker configurations with their channel rank and the line each belongs to when
    accuracy is drawn against rank: its variant (tucker, recomp_teacher, ...), the other modes'
    ranks where they are truncated, and its details."""
    rows = []
    for _, row in summary[summary["distillation"].isin(TUCKER_METHODS)].iterrows():
        ranks = absolute_ranks(parse_ranks(row["ranks"]), feature_map_shape(row))
        others = "" if _keeps_other_modes_whole(ranks, row) else f" {_other_modes_tag(ranks)}"
        rows.append({
            "method": row["method"],
            "line": row["family"] + others + (f" ({row['details']})" if row["details"] else ""),
            "channel_rank": ranks[1],
            "channel_fraction": ranks[1] / feature_map_shape(row)[0],
            **{c: row[c] for c in ("best_test_acc_mean", "best_test_acc_std", "runs")},
        })
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
        ax.errorbar(points["channel_rank"], points["best_test_acc_mean"], yerr=points["best_test_acc_std"].fillna(0),
                    marker="o", capsize=3, label=line)
    tucker = summary[summary["distillation"].isin(TUCKER_METHODS)]
    for style, distillation in zip(("--", ":"), BASELINES.values()):
        references = {base["key"]: base for _, row in tucker.iterrows() if (base := baseline(summary, row, distillation)) is not None}
        for reference in references.values():
            ax.axhline(reference["best_test_acc_mean"], linestyle=style, color="grey", linewidth=1)
            ax.annotate(reference["label"], (0, reference["best_test_acc_mean"]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(4, 2), fontsize="small", color="grey")
    ax.set(xlabel="channel rank", ylabel="best test accuracy (%)", title="Accuracy against channel rank, mean ± 1 std over seeds")
    ax.legend(fontsize="small")
    return ax


# ---------------------------------------------------------------- the benchmark table (CRD layout)

PUBLISHED_CSV = Path(__file__).resolve().parent / "published" / "crd_cifar100.csv"
"""The published CIFAR-100 numbers of the benchmark (RepDistiller's README; DKD from mdistiller's)."""
PUBLISHED_DATASET = "cifar100"
CIFAR_SOURCES = ("RepDistiller's README; DKD and kd_dot from mdistiller's README, crd+kd from the CRD paper, kd+ls and "
                 "dkd+ls from Sun et al.'s README, dist from DIST's README")
BENCHMARK_PAIRS = SAME_ARCH_PAIRS
"""The published table's teacher->student pairs (same architectural type), in its column order."""
BENCHMARK_ROWS = ("teacher", "student", "kd", "fitnet", "at", "sp", "pkt", "rkd", "vid", "ab", "ft", "fsp", "crd", "crd+kd",
                  "dkd", "cc", "nst", "kdsvd", "ofd", "reviewkd", "dist", "kd+ls", "dkd+ls", "kd_dot", "featuremap")
"""Rows in this order, then the Tucker variants (``TUCKER_FAMILIES``), then any other method by name."""
TUCKER_FAMILIES = ("tucker", "recomp_teacher", "recomp_student", "recomp_both")
BENCHMARK_STATISTICS = {
    "last": ("final_test_acc", "test accuracy of the last epoch (the statistic RepDistiller reports)"),
    "best": ("best_test_acc", "test accuracy of the best epoch (the statistic mdistiller reports)"),
}
"""``statistic`` -> (the run statistic of ``summarize``, what it is). RepDistiller's numbers are of the
last epoch (https://github.com/HobbitLong/RepDistiller/issues/16, and the comment at the end of its
train_student.py), mdistiller's of the best epoch (https://github.com/megvii-research/mdistiller/issues/30)."""
PAIR_FLAGS = ("distillation", "dataset", "teacher", "student")
MISSING = "–"


def pair_label(teacher: str, student: str) -> str:
    """A column of the benchmark table: ``wrn_40_2→wrn_16_2``."""
    return f"{teacher}→{student}"


def _method_settings() -> frozenset[str]:
    """Flags that are a method's settings (its own flags, and those it gives defaults, like
    ``ce_weight``): configurations differing in these are different rows, not different recipes."""
    return method_specific() | method_defaulted()


def _training_flags(summary: pd.DataFrame) -> list[str]:
    """The flags of the recipe: those that define a configuration beyond its method, pair and
    data set (epochs, lr, batch size, schedule, ``recipe``, ...)."""
    settings = _method_settings()
    return [f for f in flag_columns(summary) if f not in PAIR_FLAGS and f not in settings]


def _recipe(row: pd.Series, training: Sequence[str]) -> str:
    """``crd`` or ``crd, epochs=2, max_batches=3``: the configuration's recipe and the training
    flags that differ from the recipe's defaults for its architecture (so the CRD recipe's lower
    learning rate for a MobileNetV2 student is part of the recipe, not a change to it)."""
    recipe, distillation = (row[flag] if flag in row.index and _isset(row[flag]) else default
                            for flag, default in (("recipe", "original"), ("distillation", "none")))
    defaults = {item.name: item.default for item in dataclasses.fields(Config)}
    if recipe in RECIPES:
        defaults.update(recipe_defaults(recipe, row["student"], distillation))
    changes = [f"{f}={format_value(row[f] if _isset(row[f]) else None)}"
               for f in training if f != "recipe" and (row[f] if _isset(row[f]) else None) != defaults.get(f, ABSENT)]
    return ", ".join([recipe, *changes])


def _select(summary: pd.DataFrame, dataset: str, where: Optional[Mapping[str, Any]]) -> pd.DataFrame:
    """The configurations of ``dataset`` whose flags have the values in ``where``; refuses when
    they were trained with more than one recipe."""
    selected = summary[summary["dataset"] == dataset] if "dataset" in summary.columns else summary.iloc[:0]
    for flag, value in (where or {}).items():
        if flag not in flag_columns(summary):
            raise UsageError(f"where: {flag!r} is not a flag of these runs; flags: {', '.join(flag_columns(summary))}")
        selected = selected[[row[flag] == value for _, row in selected.iterrows()]]
    training = _training_flags(summary)
    recipes = pd.Series([_recipe(row, training) for _, row in selected.iterrows()], index=selected.index, dtype=object)
    if recipes.nunique() > 1:
        counts = sorted(recipes.value_counts().items(), key=lambda item: (-item[1], item[0]))  # the most used first
        found = "; ".join(f"{recipe} ({count} configuration{'s' * (count > 1)})" for recipe, count in counts)
        flag = next((f for f in training if selected[f].map(repr).nunique() > 1), "recipe")
        value = selected.loc[recipes == counts[0][0], flag].iloc[0]
        raise UsageError(f"the {dataset} runs were trained with {len(counts)} recipes, which one benchmark table must not "
                         f"mix: {found}; keep one with where={{{flag!r}: {value!r}}} (BENCHMARK_FLAGS in the notebook)")
    return selected


def _pairs(selected: pd.DataFrame) -> list[tuple[str, str]]:
    """The teacher->student pairs of the distillation configurations, and the published pairs
    whose teacher has a plain run (teachers are trained first): published pairs first in their
    order, the others by name."""
    plain = selected["distillation"] == "none"
    found = set(zip(selected.loc[~plain, "teacher"], selected.loc[~plain, "student"]))
    found |= {pair for pair in BENCHMARK_PAIRS if pair[0] in set(selected.loc[plain, "student"])}
    return [pair for pair in BENCHMARK_PAIRS if pair in found] + sorted(found - set(BENCHMARK_PAIRS))


def _fraction(name: str, prefix: str) -> float:
    """The channel fraction in ``tucker_x0.5_B-32-4-4``."""
    try:
        return float(name[len(prefix):].removeprefix("_x").split("_")[0])
    except ValueError:
        return math.inf


def _row_order(label: str, base: str, family_name: str) -> tuple:
    """Published rows first, in their order; then the Tucker variants by family and channel
    fraction; then any other method by name."""
    if base in BENCHMARK_ROWS:
        return (0, BENCHMARK_ROWS.index(base), 0.0, label)
    if family_name in TUCKER_FAMILIES:
        return (1, TUCKER_FAMILIES.index(family_name), _fraction(base, family_name), label)
    return (2, 0, 0.0, label)


def _cells(selected: pd.DataFrame) -> tuple[dict[tuple[str, str], pd.Series], list[str], list[str]]:
    """The configuration of each (row label, column label), with the rows and columns in order.

    A configuration is a row of ``summarize``, which groups runs by every defining flag, so a cell
    holds runs of one configuration only. Where one method has several configurations for the same
    pair (differing in the method's settings: ``beta``, ``kd_temperature``, ...), each becomes its
    own row, labelled with the settings in which they differ (``kd (beta=0.5)``)."""
    pairs = _pairs(selected)
    entries = []  # (row base name, family, pair, configuration)
    for _, config in selected.iterrows():
        if config["distillation"] == "none":
            for teacher, student in pairs:
                for role, architecture in (("teacher", teacher), ("student", student)):
                    if config["student"] == architecture:
                        entries.append((role, "plain", (teacher, student), config))
        elif (config["teacher"], config["student"]) in pairs:
            entries.append((config["method"], config["family"], (config["teacher"], config["student"]), config))
    flags = [f for f in flag_columns(selected) if f not in PAIR_FLAGS]
    settings = _method_settings()
    details: dict[str, list[str]] = {}
    for (base, pair), group in _group(entries, lambda entry: (entry[0], entry[2])).items():
        varying = [f for f in flags if len({repr(c[f] if _isset(c[f]) else None) for *_, c in group}) > 1]
        if [f for f in varying if f not in settings]:  # _select's recipe check leaves none; never average them
            raise UsageError(f"cell {base}, {pair_label(*pair)} would mix runs of different flags "
                             f"({', '.join(f for f in varying if f not in settings)}); restrict it with where=...")
        details[base] = [f for f in flags if f in varying or f in details.get(base, [])]
    cells, order = {}, {}
    for base, family_name, pair, config in entries:
        shown = ", ".join(f"{f}={format_value(config[f])}" for f in details.get(base, []) if _isset(config[f]))
        label = f"{base} ({shown})" if shown else base
        if (label, pair_label(*pair)) in cells:  # unreachable: configurations differ in some flag; never average them
            raise UsageError(f"cell {label}, {pair_label(*pair)} would hold two configurations; restrict it with where=...")
        cells[(label, pair_label(*pair))] = config
        order[label] = _row_order(label, base, family_name)
    for role in ("teacher", "student"):  # the reference rows are always there, empty until trained
        if pairs and not any(label == role or label.startswith(f"{role} (") for label in order):
            order[role] = _row_order(role, role, "plain")
    return cells, sorted(order, key=order.__getitem__), [pair_label(*pair) for pair in pairs]


def _group(items: Sequence[Any], key: Any) -> dict[Any, list[Any]]:
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _mean_std(mean: float, std: float, runs: int, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if runs > 1 else f"{mean:.{digits}f}"


def benchmark_table(runs: Runs | pd.DataFrame, statistic: str = "last", dataset: str = PUBLISHED_DATASET,
                    where: Optional[Mapping[str, Any]] = None) -> pd.DataFrame:
    """The table the field compares (the CRD layout): a row per method, a column per
    teacher→student pair, each cell ``"mean ± std"`` of ``statistic`` over the seeds of one
    configuration (sample standard deviation; a configuration with a single run shows its value
    alone, without ``±``); a blank cell where there is no run.

    ``statistic`` is ``last`` (test accuracy of the last epoch, as RepDistiller reports) or ``best``
    (the best epoch's, as mdistiller reports). ``runs`` is what ``load_runs`` returns, or its
    ``summarize``. Only configurations of ``dataset`` count, and of those only the ones whose flags
    equal ``where`` (``{"recipe": "crd", "epochs": 240}``).

    Rows: ``teacher`` (plain training of the pair's teacher architecture) and ``student`` (of its
    student), always present, then kd, fitnet, at, sp, pkt, rkd, vid, crd, dkd, featuremap, the
    Tucker variants by family and channel rank (``tucker_x0.5``, ``recomp_both_x0.25``, named as in
    the summary), then any other method by name. Columns: the published pairs in the published
    order, then the others by name; a published pair appears once a run of the pair, or a plain
    run of its teacher, does.

    A cell is one configuration of ``summarize`` (every defining flag equal), never an average over
    runs trained differently: configurations of one method and pair that differ in the method's
    settings are separate rows (``kd (beta=0.5)``, ``kd (beta=0.9)``), and a table of runs trained
    with more than one recipe (``recipe``, epochs, learning rate, ... beyond the recipe's own
    per-architecture values) is refused with a ``UsageError``: pick one with ``where``.
    """
    if statistic not in BENCHMARK_STATISTICS:
        raise UsageError(f"statistic must be one of {', '.join(BENCHMARK_STATISTICS)}; got {statistic!r}")
    summary = summarize(runs) if isinstance(runs, Runs) else runs
    selected = _select(summary, dataset, where)
    if selected.empty:  # no run of this data set (its summary may lack the method columns)
        return pd.DataFrame(dtype=object, index=pd.Index([], name="method"))
    cells, rows, columns = _cells(selected)
    column = BENCHMARK_STATISTICS[statistic][0]
    table = pd.DataFrame("", index=pd.Index(rows, name="method"), columns=columns, dtype=object)
    for (row, pair), config in cells.items():
        table.loc[row, pair] = _mean_std(config[f"{column}_mean"], config[f"{column}_std"], config["runs"])
    return table


def published_results(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published CIFAR-100 numbers, one row per (teacher, student, method): ``top1`` (%, NaN
    where none is published: DKD for resnet110→resnet20) and ``source`` (the README's repository).
    ``method`` is ``teacher``/``student`` for plain training of the pair's architectures, else our
    ``--distillation`` key."""
    return pd.read_csv(path, comment="#", dtype={"teacher": str, "student": str, "method": str, "top1": float, "source": str})


def published_table(published: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """``published_results`` in the benchmark layout: methods as rows, pairs as columns, numbers."""
    published = published_results() if published is None else published
    wide = published.assign(pair=[pair_label(t, s) for t, s in zip(published["teacher"], published["student"])])
    wide = wide.pivot(index="method", columns="pair", values="top1")
    rows = [r for r in BENCHMARK_ROWS if r in wide.index] + sorted(set(wide.index) - set(BENCHMARK_ROWS))
    columns = [c for c in (pair_label(*p) for p in (*BENCHMARK_PAIRS, *CROSS_ARCH_PAIRS)) if c in wide.columns]
    columns += sorted(set(wide.columns) - set(columns))
    return wide.reindex(index=rows, columns=columns).rename_axis(index="method", columns=None)


def with_published(table: pd.DataFrame, published: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """``table``'s cells as ``"ours (published)"`` where a number is published for that row and
    pair: ``75.20 ± 0.10 (75.61)``; ``– (75.61)`` where we have no run, ``… (–)`` where the
    published table leaves the cell empty (DKD resnet110→resnet20); our cell alone elsewhere (our
    own methods, other pairs). Rows and columns are ``table``'s."""
    reference = published_table(published)
    result = table.copy()
    for row in table.index:
        for column in table.columns:
            if row in reference.index and column in reference.columns:
                value = reference.loc[row, column]
                theirs = MISSING if pd.isna(value) else f"{value:.2f}"
                result.loc[row, column] = f"{table.loc[row, column] or MISSING} ({theirs})"
    return result


def benchmark_markdown(table: pd.DataFrame) -> str:
    """A benchmark table in GitHub Markdown, the pairs' columns right-aligned."""
    rows = [[str(label), *(str(v) for v in values)] for label, values in zip(table.index, table.itertuples(index=False))]
    return markdown_table([table.index.name or "method", *map(str, table.columns)], rows, [False] + [True] * len(table.columns))


def benchmark_reports(runs: Runs | pd.DataFrame, dataset: str = PUBLISHED_DATASET,
                      where: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    """Per statistic (``last``, ``best``), a caption and the benchmark table in Markdown, with the
    published numbers beside ours when ``dataset`` is cifar100 (they are CIFAR-100's; for another
    data set ours stand alone and the caption says so); empty when there is no pair to show.
    Raises ``UsageError`` as ``benchmark_table`` does."""
    summary = summarize(runs) if isinstance(runs, Runs) else runs
    reports = {}
    for statistic, (_, meaning) in BENCHMARK_STATISTICS.items():
        table = benchmark_table(summary, statistic, dataset, where)
        if table.empty:
            return {}
        caption = f"{dataset}, {meaning}, %: mean ± sample standard deviation over seeds (a single seed: its value alone)"
        if dataset == PUBLISHED_DATASET:
            table = with_published(table)
            caption += f"; published numbers in parentheses: {CIFAR_SOURCES} (toolbox/published/crd_cifar100.csv)."
        else:
            caption += f"; the published numbers are CIFAR-100's, so none is shown beside these {dataset} runs."
        reports[statistic] = f"{caption}\n\n{benchmark_markdown(table)}"
    return reports


def export_benchmark(reports: Mapping[str, str], folder: str | Path) -> list[Path]:
    """Write each of ``benchmark_reports`` as ``benchmark_<statistic>.md``; nothing for none."""
    paths = []
    for statistic, report in reports.items():
        path = _output_folder(folder) / f"benchmark_{statistic}.md"
        path.write_text(report)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- the benchmark table of any data set's layout

@dataclass(frozen=True)
class BenchmarkLayout:
    """A data set's published table: its pairs (always columns, in this order, empty until run),
    the file of its published numbers, and the sources they come from (for the caption)."""

    pairs: tuple[tuple[str, str], ...]
    published: Path
    sources: str


IMAGENET_PUBLISHED_CSV = PUBLISHED_CSV.parent / "imagenet.csv"
"""The published ImageNet numbers (mdistiller's README; torchvision's weights; torchdistill's and ReviewKD's READMEs)."""
BENCHMARK_LAYOUTS = {
    "cifar100": BenchmarkLayout(BENCHMARK_PAIRS, PUBLISHED_CSV, CIFAR_SOURCES),
    "imagenet": BenchmarkLayout(IMAGENET_PAIRS, IMAGENET_PUBLISHED_CSV,
                                "kd, dkd and kd_dot (KD with mdistiller's DOT) from mdistiller's README, trained with "
                                "mdistiller's solver (--recipe imagenet); teacher and student: torchvision's weights, "
                                "trained by torchvision's own recipe; at, crd: torchdistill's README, its own recipe; dist: "
                                "DIST's README, its own recipe; reviewkd: ReviewKD's README, its authors' recipe"),
}
"""``dataset`` -> its ``BenchmarkLayout``: the data sets whose benchmark table has published numbers."""


def layout_table(runs: Runs | pd.DataFrame, statistic: str = "last", dataset: str = "imagenet",
                 where: Optional[Mapping[str, Any]] = None) -> pd.DataFrame:
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

    table = table.reindex(index=sorted(rows, key=order), columns=[*columns, *(c for c in table.columns if c not in columns)],
                          fill_value="")
    return with_published(table.rename_axis(index="method"), published)


def layout_reports(runs: Runs | pd.DataFrame, dataset: str = "imagenet",
                   where: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
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
        caption = (f"{dataset}, top-1 {meaning}, %: mean ± sample standard deviation over seeds (a single seed: its "
                   f"value alone); published numbers in parentheses ({source}): {layout.sources}.")
        reports[f"{dataset}_{statistic}"] = f"{caption}\n\n{benchmark_markdown(table)}"
    return reports
