"""Finished runs as tables: each run folder's name, family and defining flags, read into ``Runs``.

The naming and grouping rules live here, apart from the statistics drawn from them, because every
other table (summary, what to expect, curves, benchmark) starts from the rows ``load_runs`` makes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from toolbox.config import RUNTIME_FIELDS, Config
from toolbox.config.choices import IMAGE_SIZES, parse_ranks
from toolbox.config.naming import ranks_tag
from toolbox.errors import UsageError
from toolbox.models import stage_shapes
from toolbox.rundir import CONFIG_FILE, SWITCHED_FLAGS, TEACHER_FLAGS, RunDir, defining_flags, method_specific
from toolbox.tucker import Ranks, absolute_ranks

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
SUMMARY_NUMBERS = (
    "runs",
    "best_test_acc_mean",
    "best_test_acc_std",
    "final_test_acc_mean",
    "final_test_acc_std",
    "max_mean_test_acc",
)
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
    """The flags that make a run's configuration (``toolbox.rundir.identity.defining_flags``, the same rule
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
        f"{method} ({details})" if details else method
        for method, details in zip(finished["method"], finished["details"])
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


ACCURACY_CURVES = frozenset({"test_acc", "train_acc"})
"""Curves of percentages: a NaN there is damage, where a loss curve may hold the NaN of a diverged run."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_record(run: RunDir, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Refuse, naming the file and the entry, what training never writes: a table built from it
    would fail far from the cause (a text where a number belongs) or turn a whole configuration's
    mean into NaN (one NaN accuracy)."""
    bad = next(
        (flag for flag, value in config.items() if not (value is None or isinstance(value, (str, int, float)))), None
    )
    if bad is not None or not _is_number(config.get("seed")) or config["seed"] != int(config["seed"]):
        raise UsageError(
            f"{run.config} is damaged ({bad or 'seed'!r} is {config.get(bad or 'seed')!r}); it was left as it is"
        )
    for curve in CURVES:
        values = metrics.get(curve)
        if (
            not isinstance(values, list)
            or not all(_is_number(v) for v in values)
            or (curve in ACCURACY_CURVES and not all(math.isfinite(v) for v in values))
        ):
            raise UsageError(
                f"{run.metrics} is damaged ({curve!r} is not a list of "
                f"{'finite ' if curve in ACCURACY_CURVES else ''}numbers); it was left as it is"
            )
    if not metrics["test_acc"]:
        raise UsageError(f"{run.metrics} holds no epoch (its 'test_acc' is empty); it was left as it is")
    for entry in ("best_test_acc", "best_epoch", "wall_time_s"):
        if not _is_number(metrics.get(entry)) or not math.isfinite(metrics[entry]):
            raise UsageError(
                f"{run.metrics} is damaged ({entry!r} is {metrics.get(entry)!r}, not a finite number); "
                "it was left as it is"
            )


def _run_record(name: str, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    flags = identity(config)
    return {
        "run": name,
        "method": method_name(config),
        "family": family(config),
        "key": json.dumps(flags, sort_keys=True),
        **flags,
        "seed": int(config["seed"]),
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


def _config_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The config.json files under ``folder`` (links to folders are not followed: a run must lie
    inside), and the folders that could not be listed with the reason: ``Path.rglob`` skips those
    silently, and a whole method would be missing from the tables without a word."""
    closed: list[tuple[Path, str]] = []
    found = [
        Path(parent) / CONFIG_FILE
        for parent, _, files in os.walk(
            folder, onerror=lambda error: closed.append((Path(error.filename), error.strerror or str(error)))
        )
        if CONFIG_FILE in files
    ]
    return sorted(found), sorted(closed)


def _one_run_per_seed(
    finished: list[dict[str, Any]], at_home: set[str], teachers: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The runs with one run per configuration, seed and teacher file, and the others as pending.
    Two runs of the same flags and seed from the same teacher (a copy of a run, a backup inside the
    experiments folder, the same run trained on two machines) are one sample: counting both would
    shrink the spread over seeds, and pairing by seed would keep one at random. The run in the
    folder its config.json names is kept, else the first by folder name. Students of different
    teachers (``--teacher_checkpoint``) stay separate samples."""

    def sample(record: dict[str, Any]) -> tuple[str, int, str]:
        return record["key"], record["seed"], json.dumps(teachers.get(record["run"]))

    kept: dict[tuple[str, int, str], str] = {}
    for record in sorted(finished, key=lambda record: record["run"] not in at_home):  # stable: folder order
        kept.setdefault(sample(record), record["run"])
    duplicates = [
        {"run": record["run"], "status": f"duplicate of {original} (same configuration, seed and teacher): not counted"}
        for record in finished
        if (original := kept[sample(record)]) != record["run"]
    ]
    return [record for record in finished if kept[sample(record)] == record["run"]], duplicates


def load_runs(experiments_dir: str | Path) -> Runs:
    """Every run folder (a folder with ``config.json``) under ``experiments_dir``; a run whose
    files cannot be read is listed as pending with the reason, not dropped."""
    folder = Path(experiments_dir)
    if not folder.is_dir():
        raise UsageError(f"experiments folder {folder} does not exist (set EXPERIMENTS_DIR to a folder of runs)")
    finished, pending, teacher_folders, at_home, teachers = [], [], set(), set(), {}
    config_paths, closed = _config_files(folder)
    pending += [
        {
            "run": path.relative_to(folder).as_posix(),
            "status": f"unreadable folder ({reason}): runs in it, if any, are not counted",
        }
        for path, reason in closed
    ]
    for config_path in config_paths:
        run = RunDir(config_path.parent)
        name = run.path.relative_to(folder).as_posix()
        try:
            config = run.saved_config()
            if config is None:  # removed since the folder was listed (./util.sh clean)
                continue
            if isinstance(config.get("teacher_checkpoint"), str):
                teacher_folders.add(Path(config["teacher_checkpoint"]).parent.as_posix())
            metrics = run.read_json(run.metrics)
            if metrics is None:
                pending.append({"run": name, "status": "unfinished", **{k: config.get(k) for k in PENDING_COLUMNS[2:]}})
            else:
                _check_record(run, config, metrics)
                finished.append(_run_record(name, config, metrics))
                teachers[name] = config.get("teacher_checkpoint")
                if name == config["experiment_name"]:
                    at_home.add(name)
        except (UsageError, KeyError, TypeError, IndexError, ValueError) as error:
            pending.append({"run": name, "status": f"unreadable ({type(error).__name__}: {error})"})
    finished += _teachers_elsewhere(folder, teacher_folders)
    finished, duplicates = _one_run_per_seed(finished, at_home, teachers)
    pending += duplicates
    empty_columns = ["run", *NAME_COLUMNS, *SHOWN_FLAGS, "feature_layer", *RUN_STATS, *CURVES]
    finished_table = _table(finished, RUN_STATS, empty_columns)
    roles = _plain_roles(finished_table, teacher_folders)
    finished_table.loc[roles.index, "method"] = finished_table.loc[roles.index, "family"] = roles
    finished_table = _with_labels(finished_table)
    return Runs(folder, finished_table, pd.DataFrame(pending, columns=list(PENDING_COLUMNS)))


def _teachers_elsewhere(folder: Path, teacher_folders: set[str]) -> list[dict[str, Any]]:
    """The finished plain runs outside ``folder`` that its runs distilled from: a study's folder
    (runner.py --study) holds its students, and their teachers are shared, one level up; their rows
    (``teacher``) are filled from there. Named by their folder as the students' config.json name it."""
    records = []
    for teacher_folder in sorted(teacher_folders):
        run = RunDir(teacher_folder)
        if run.path.resolve().is_relative_to(folder.resolve()) or not run.finished:
            continue
        try:
            config, metrics = run.saved_config(), run.read_json(run.metrics)
            if config is None or config.get("distillation") != "none":
                continue
            _check_record(run, config, metrics)
            records.append(_run_record(teacher_folder, config, metrics))
        except (UsageError, KeyError, TypeError, IndexError, ValueError):
            continue  # a teacher row left empty, as when the teacher is gone; its students still count
    return records


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
