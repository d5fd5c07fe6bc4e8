"""The benchmark table the field compares (the CRD layout): a row per method, a column per
teacher→student pair, with the published CIFAR-100 numbers beside ours.

Its own module because choosing the cells (one configuration each, one recipe per table) and
placing the published rows are rules of their own, apart from the per-configuration summary.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from toolbox.analysis.runs import PLAIN_ROLES, Runs, _isset, flag_columns
from toolbox.analysis.summary import _method_settings, _output_folder, summarize, write_output
from toolbox.config import RECIPES, Config, recipe_defaults
from toolbox.config.choices import CROSS_ARCH_PAIRS, SAME_ARCH_PAIRS
from toolbox.config.naming import format_value
from toolbox.errors import UsageError
from toolbox.rundir import ABSENT
from toolbox.utils import markdown_table

PUBLISHED_CSV = Path(__file__).resolve().parents[1] / "published" / "crd_cifar100.csv"
"""The published CIFAR-100 numbers of the benchmark, with their sources (``CIFAR_SOURCES``)."""
PUBLISHED_DATASET = "cifar100"
CIFAR_SOURCES = (
    "RepDistiller's README; DKD and kd_dot from mdistiller's README, crd+kd from the CRD paper, kd+ls and "
    "dkd+ls from Sun et al.'s README, dist from DIST's README"
)
BENCHMARK_PAIRS = SAME_ARCH_PAIRS
"""The published table's teacher->student pairs (same architectural type), in its column order."""
BENCHMARK_ROWS = (
    "teacher",
    "student alone",
    "kd",
    "fitnet",
    "at",
    "sp",
    "pkt",
    "rkd",
    "vid",
    "ab",
    "ft",
    "fsp",
    "crd",
    "crd+kd",
    "dkd",
    "cc",
    "nst",
    "kdsvd",
    "ofd",
    "reviewkd",
    "dist",
    "kd+ls",
    "dkd+ls",
    "kd_dot",
    "featuremap",
)
"""Rows in this order (deliberately the published tables' order, not a list of the methods), then the Tucker
variants (``TUCKER_FAMILIES``), then any other method by name."""
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


def _training_flags(summary: pd.DataFrame) -> list[str]:
    """The flags of the recipe: those that define a configuration beyond its method, pair and
    data set (epochs, lr, batch size, schedule, ``recipe``, ...)."""
    settings = _method_settings()
    return [f for f in flag_columns(summary) if f not in PAIR_FLAGS and f not in settings]


def _recipe(row: pd.Series, training: Sequence[str]) -> str:
    """``crd`` or ``crd, epochs=2, max_batches=3``: the configuration's recipe and the training
    flags that differ from the recipe's defaults for its architecture (so the CRD recipe's lower
    learning rate for a MobileNetV2 student is part of the recipe, not a change to it)."""
    recipe, distillation = (
        row[flag] if flag in row.index and _isset(row[flag]) else default
        for flag, default in (("recipe", "original"), ("distillation", "none"))
    )
    defaults = {item.name: item.default for item in dataclasses.fields(Config)}
    if recipe in RECIPES:
        defaults.update(recipe_defaults(recipe, row["student"], distillation))
    changes = [
        f"{f}={format_value(row[f] if _isset(row[f]) else None)}"
        for f in training
        if f != "recipe" and (row[f] if _isset(row[f]) else None) != defaults.get(f, ABSENT)
    ]
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
        raise UsageError(
            f"the {dataset} runs were trained with {len(counts)} recipes, which one benchmark table must not "
            f"mix: {found}; keep one with where={{{flag!r}: {value!r}}} (BENCHMARK_FLAGS in the notebook)"
        )
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
        return float(name[len(prefix) :].removeprefix("_x").split("_")[0])
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
                for role, architecture in zip(PLAIN_ROLES, (teacher, student)):
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
            raise UsageError(
                f"cell {base}, {pair_label(*pair)} would mix runs of different flags "
                f"({', '.join(f for f in varying if f not in settings)}); restrict it with where=..."
            )
        details[base] = [f for f in flags if f in varying or f in details.get(base, [])]
    cells, order = {}, {}
    for base, family_name, pair, config in entries:
        shown = ", ".join(f"{f}={format_value(config[f])}" for f in details.get(base, []) if _isset(config[f]))
        label = f"{base} ({shown})" if shown else base
        if (label, pair_label(*pair)) in cells:  # unreachable: configurations differ in some flag; never average them
            raise UsageError(
                f"cell {label}, {pair_label(*pair)} would hold two configurations; restrict it with where=..."
            )
        cells[(label, pair_label(*pair))] = config
        order[label] = _row_order(label, base, family_name)
    for role in PLAIN_ROLES:  # the reference rows are always there, empty until trained
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


def benchmark_table(
    runs: Runs | pd.DataFrame,
    statistic: str = "last",
    dataset: str = PUBLISHED_DATASET,
    where: Optional[Mapping[str, Any]] = None,
) -> pd.DataFrame:
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
    ``method`` is ``teacher``/``student alone`` for plain training of the pair's architectures (the
    file's ``student``, named as every table of the analysis names it), else our ``--distillation`` key."""
    published = pd.read_csv(
        path, comment="#", dtype={"teacher": str, "student": str, "method": str, "top1": float, "source": str}
    )
    return published.replace({"method": {"student": PLAIN_ROLES[1]}})


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
    rows = [
        [str(label), *(str(v) for v in values)] for label, values in zip(table.index, table.itertuples(index=False))
    ]
    return markdown_table(
        [table.index.name or "method", *map(str, table.columns)], rows, [False] + [True] * len(table.columns)
    )


def benchmark_reports(
    runs: Runs | pd.DataFrame, dataset: str = PUBLISHED_DATASET, where: Optional[Mapping[str, Any]] = None
) -> dict[str, str]:
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
        caption = (
            f"{dataset}, {meaning}, %: mean ± sample standard deviation over seeds (a single seed: its value alone)"
        )
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
        write_output(path, lambda temporary, report=report: temporary.write_text(report))
        paths.append(path)
    return paths
