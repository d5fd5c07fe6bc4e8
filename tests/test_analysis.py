"""toolbox.analysis on a hand-written experiments tree with known numbers, and toolbox.analysis.inspection
against float64 numpy/scipy references."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.stats
import torch

from tests.conftest import patience
from toolbox import analysis
from toolbox.analysis import inspection
from toolbox.config import Config, recipe_defaults
from toolbox.config.choices import CROSS_ARCH_PAIRS
from toolbox.distillation import with_defaults
from toolbox.errors import UsageError
from toolbox.models import build_model
from toolbox.rundir import RunDir, resolve
from toolbox.sweep.folders import CORRUPT, folder_state
from toolbox.tucker import recompose, relative_error

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"dataset": "digits", "teacher": "ResNet20", "student": "ResNetBaby", "epochs": 3}


def write_run(root: Path, test_acc: Optional[list[float]], **flags: Any) -> str:
    """A run folder as training leaves it: the resolved config, and metrics when ``test_acc`` is
    given (the other curves are filler)."""
    config = resolve(Config(**{**COMMON, "experiments_dir": str(root), **flags}))
    folder = root / config.experiment_name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config), "environment": {}}))
    if test_acc is not None:
        best = int(np.argmax(test_acc))
        filler = [1.0] * len(test_acc)
        metrics = {
            "train_hard_loss": filler,
            "train_soft_loss": filler,
            "train_acc": filler,
            "test_loss": filler,
            "test_acc": test_acc,
            "best_test_acc": test_acc[best],
            "best_epoch": best + 1,
            "epochs": len(test_acc),
            "wall_time_s": 1.0,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder.relative_to(root).as_posix()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("experiments")
    write_run(root, [40, 50, 45], distillation="none", seed=0)
    write_run(root, [42, 48, 52], distillation="none", seed=1)
    # Flags featuremap ignores (ranks, recomp_target) differ between its seeds, and must not split it.
    write_run(root, [50, 60, 70], distillation="featuremap", seed=0, ranks="BATCH_SIZE,16,8,8", recomp_target="both")
    write_run(root, [52, 66, 64], distillation="featuremap", seed=1)
    for seed, (acc, target) in enumerate(
        [([55, 70, 72], "student"), ([57, 74, 70], "both"), ([56, 69, 71], "teacher")]
    ):
        write_run(root, acc, distillation="tucker", ranks="BATCH_SIZE,32,8,8", recomp_target=target, seed=seed)
    write_run(root, [60, 65, 64], distillation="tucker_recomp", recomp_target="both", ranks="BATCH_SIZE,16,8,8")
    write_run(root, [30, 35, 40], distillation="noise", noise_std=1.0)
    write_run(root, None, distillation="tucker", ranks="BATCH_SIZE,48,8,8")
    broken = root / "broken/run"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def summary(tree: Path) -> pd.DataFrame:
    return analysis.summarize(analysis.load_runs(tree)).set_index("method")


def test_names_follow_the_original_table() -> None:
    def name(**flags: Any) -> str:
        return analysis.method_name(dataclasses.asdict(with_defaults(Config(**flags))))

    assert name(distillation="featuremap") == "featuremap"
    assert name(distillation="tucker", ranks="BATCH_SIZE,32,8,8") == "tucker_x0.5"
    assert name(distillation="tucker_recomp", recomp_target="both", ranks="BATCH_SIZE,16,8,8") == "recomp_both_x0.25"
    assert name(distillation="tucker", ranks="BATCH_SIZE,16,8,8", feature_layer=2) == "tucker_x0.5_B-16-8-8"
    assert name(distillation="tucker", ranks="BATCH_SIZE,16,16,16", feature_layer=2) == "tucker_x0.5"
    assert name(distillation="tucker", ranks="BATCH_SIZE,32,4,4") == "tucker_x0.5_B-32-4-4"
    assert name(distillation="noise", noise_std=1.0) == "noise_std1"
    assert name(distillation="noise", noise_std=0.5) == "noise_std0.5"
    assert name(distillation="none") == "plain"
    assert analysis.feature_map_shape({"teacher": "ResNet20", "dataset": "digits", "feature_layer": 3}) == (64, 8, 8)
    assert analysis.feature_map_shape({"teacher": "wrn_40_2", "dataset": "cifar100", "feature_layer": 3}) == (128, 8, 8)
    assert name(distillation="tucker", teacher="wrn_40_2", ranks="BATCH_SIZE,32,8,8") == "tucker_x0.25"


def test_summary_numbers_match_hand_computed_values(summary: pd.DataFrame) -> None:
    assert list(summary.index) == [
        "tucker_x0.5",
        "featuremap",
        "recomp_both_x0.25",
        "student alone",
        "noise_std1",
    ]  # best first
    expected = {  # runs, best mean, best std, final mean, final std, max of the mean curve, diff featuremap, diff plain
        "student alone": (2, 51, math.sqrt(2), 48.5, math.sqrt(24.5), 49, -17, 0),
        "featuremap": (2, 68, math.sqrt(8), 67, math.sqrt(18), 67, 0, 17),
        "tucker_x0.5": (3, 217 / 3, math.sqrt(7 / 3), 71, 1, 71, 217 / 3 - 68, 217 / 3 - 51),
        "recomp_both_x0.25": (1, 65, np.nan, 64, np.nan, 65, -3, 14),
        "noise_std1": (1, 40, np.nan, 40, np.nan, 40, -28, -11),
    }
    columns = [
        "runs",
        "best_test_acc_mean",
        "best_test_acc_std",
        "final_test_acc_mean",
        "final_test_acc_std",
        "max_mean_test_acc",
        "diff_featuremap",
        "diff_plain",
    ]
    for method, values in expected.items():
        assert summary.loc[method, columns].to_numpy(dtype=float) == pytest.approx(
            np.array(values, dtype=float), nan_ok=True
        ), method


def test_ignored_flags_do_not_split_configurations(summary: pd.DataFrame) -> None:
    assert summary.loc["featuremap", "seeds"] == "0,1"
    assert summary.loc["tucker_x0.5", "seeds"] == "0,1,2"
    assert summary.loc["featuremap", "ranks"] is None and summary.loc["tucker_x0.5", "recomp_target"] is None
    assert summary.loc["student alone", "teacher"] is None and summary.loc["student alone", "beta"] is None
    assert (summary["label"] == summary.index).all()  # nothing else differs within a family


def test_unfinished_and_unreadable_runs_are_listed_apart(tree: Path) -> None:
    runs = analysis.load_runs(tree)
    pending = runs.pending.set_index("run")
    assert pending.loc["digits/ResNet20-ResNetBaby/tucker/B-48-8-8/epochs=3/seed0", "status"] == "unfinished"
    assert pending.loc["broken/run", "status"].startswith("unreadable")
    assert len(runs.finished) == 9 and not set(pending.index) & set(runs.finished["run"])
    assert analysis.describe(runs).startswith("9 finished runs in 5 configurations")


def test_a_fifo_in_place_of_a_run_file_is_refused_without_waiting(tmp_path: Path) -> None:
    """Reading a FIFO named metrics.json or config.json would wait for a writer forever (the
    notebook, util.sh status and clean alike)."""
    finished = tmp_path / write_run(tmp_path, [40, 50], distillation="none")
    fifo_metrics = tmp_path / write_run(tmp_path, None, distillation="none", seed=1)
    os.mkfifo(fifo_metrics / "metrics.json")
    fifo_config = tmp_path / "fifo"
    fifo_config.mkdir()
    os.mkfifo(fifo_config / "config.json")

    def waited(*_: Any) -> None:
        pytest.fail("waited for a writer of a FIFO")  # not an OSError, which the readers catch

    previous = signal.signal(signal.SIGALRM, waited)  # a regression waits forever: fail instead
    signal.alarm(20)
    try:
        runs = analysis.load_runs(tmp_path)
        state = folder_state(RunDir(fifo_metrics), {}, "local")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert runs.finished["run"].tolist() == [finished.relative_to(tmp_path).as_posix()]
    status = runs.pending.set_index("run")["status"]
    for folder, name in ((fifo_metrics, "metrics.json"), (fifo_config, "config.json")):
        assert f"{folder / name} is not a regular file (a FIFO)" in status[folder.relative_to(tmp_path).as_posix()]
    assert state.state == CORRUPT and "not a regular file" in state.detail


def test_damaged_numbers_are_listed_as_unreadable_naming_file_and_entry(tmp_path: Path) -> None:
    """What training never writes (a text or NaN accuracy, no epoch, a list as a flag, a config
    without its 'config') is one line naming the file and the entry, never a traceback or a NaN mean."""
    write_run(tmp_path, [40, 50], distillation="none")
    damages = {
        "nan": (
            "metrics.json",
            lambda d: d.update(test_acc=[math.nan, 50.0]),
            "'test_acc' is not a list of finite numbers",
        ),
        "inf": (
            "metrics.json",
            lambda d: d.update(best_test_acc=math.inf),
            "'best_test_acc' is inf, not a finite number",
        ),
        "text": ("metrics.json", lambda d: d.update(train_acc=["1"]), "'train_acc' is not a list of finite numbers"),
        "none": ("metrics.json", lambda d: d.update(best_test_acc=None), "'best_test_acc' is None"),
        "empty": ("metrics.json", lambda d: d.update(test_acc=[]), "holds no epoch"),
        "list": ("config.json", lambda d: d["config"].update(beta=[1]), "'beta' is [1]"),
        "seed": ("config.json", lambda d: d["config"].update(seed="0"), "'seed' is '0'"),
        "null": ("config.json", lambda d: d.update(config=None), "no 'config' entry"),
    }
    for seed, (case, (file, damage, message)) in enumerate(damages.items(), start=1):
        path = tmp_path / write_run(tmp_path, [40, 50], distillation="none", seed=seed, experiment_name=case) / file
        data = json.loads(path.read_text())
        damage(data)
        path.write_text(json.dumps(data))
    runs = analysis.load_runs(tmp_path)
    status = runs.pending.set_index("run")["status"]
    for case, (file, _, message) in damages.items():
        assert f"{tmp_path / case / file} " in status[case] and message in status[case], status[case]
    assert len(runs.finished) == 1 and analysis.summarize(runs)["best_test_acc_mean"].tolist() == [50]


def test_a_copy_of_a_run_is_counted_once(tmp_path: Path) -> None:
    """A backup copied inside the experiments folder holds the same configuration and seeds: counted
    twice it would halve the spread's share of each seed and narrow every interval."""
    runs = [write_run(tmp_path, acc, distillation="none", seed=seed) for seed, acc in enumerate([[40, 50], [44, 46]])]
    shutil.copytree(tmp_path / "digits", tmp_path / "a backup" / "digits")
    loaded = analysis.load_runs(tmp_path)
    assert sorted(loaded.finished["run"]) == runs
    status = loaded.pending.set_index("run")["status"]
    assert (
        status[f"a backup/{runs[0]}"] == f"duplicate of {runs[0]} (same configuration, seed and teacher): not counted"
    )
    row = analysis.expectation_table(loaded).iloc[0]
    assert (row["n"], row["mean"], row["std"]) == (2, 48, pytest.approx(math.sqrt(8)))
    assert analysis.summarize(loaded)["runs"].tolist() == [2]


def test_students_of_two_teachers_with_one_seed_are_two_samples(tmp_path: Path) -> None:
    """The same student flags and seed distilled from two teacher files (--teacher_checkpoint) are
    two runs of the configuration, not a copy of one."""
    for folder, acc in (("from-a", [60, 70]), ("from-b", [62, 64])):
        write_run(
            tmp_path,
            acc,
            distillation="kd",
            experiment_name=folder,
            teacher_checkpoint=str(tmp_path / folder / "t.pth"),
        )
    loaded = analysis.load_runs(tmp_path)
    assert sorted(loaded.finished["run"]) == ["from-a", "from-b"] and loaded.pending.empty


def test_a_folder_that_cannot_be_listed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder without read permission (chmod 000) hides its runs: say so rather than leave a
    method out of the tables without a word. Listing it is refused here by a stand-in for the
    kernel, since the tests may run as root, whom permissions do not stop."""
    write_run(tmp_path, [40, 50], distillation="none")
    closed = tmp_path / write_run(tmp_path, [40, 60], distillation="kd")
    listing = os.scandir

    def refusing(path: Any = ".") -> Any:
        if Path(path) == closed:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refusing)
    runs = analysis.load_runs(tmp_path)
    assert len(runs.finished) == 1
    status = runs.pending.set_index("run")["status"]
    assert status[closed.relative_to(tmp_path).as_posix()].startswith("unreadable folder (Permission denied)")


def test_curves_are_means_and_sample_deviations_per_epoch(tree: Path) -> None:
    curves = analysis.curves(analysis.load_runs(tree), "test_acc").set_index(["label", "epoch"])
    assert curves.loc[("featuremap", 1), ["mean", "std", "runs"]].tolist() == pytest.approx([51, math.sqrt(2), 2])
    assert curves.loc[("tucker_x0.5", 2), ["mean", "std"]].tolist() == pytest.approx([71, math.sqrt(7)])
    with pytest.raises(UsageError, match="curve must be one of"):
        analysis.curves(analysis.load_runs(tree), "accuracy")


def test_exports_csv_and_markdown(tree: Path, tmp_path: Path) -> None:
    summary = analysis.summarize(analysis.load_runs(tree))
    csv_path, markdown_path = analysis.export_summary(summary, tmp_path)
    table = pd.read_csv(csv_path)
    assert list(table.columns) == list(analysis.compact(summary).columns)
    assert "beta" not in table.columns  # the same everywhere it is set: not shown
    assert table.loc[0, "method"] == "tucker_x0.5" and table.loc[0, "best_test_acc_mean"] == pytest.approx(217 / 3)
    lines = markdown_path.read_text().splitlines()
    assert len(lines) == 2 + len(summary) and lines[0].startswith("| method | distillation | dataset")
    assert "| recomp_both_x0.25 |" in lines[4] and "| 65.00 |  |" in lines[4]  # NaN std left blank


def test_exports_never_write_through_a_link(tree: Path, tmp_path: Path) -> None:
    """A link planted where a table goes is refused and kept, and the file it points to unchanged."""
    runs = analysis.load_runs(tree)
    theirs = tmp_path / "notes.md"
    theirs.write_text("mine")
    for name, export in (
        ("summary.md", lambda: analysis.export_summary(analysis.summarize(runs), tmp_path / "out")),
        ("what_to_expect.md", lambda: analysis.export_expectations(runs, tmp_path / "out")),
        ("benchmark_best.md", lambda: analysis.export_benchmark({"best": "table"}, tmp_path / "out")),
    ):
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / name).symlink_to(theirs)
        with pytest.raises(UsageError, match=f"{name} is a symbolic link"):
            export()
        assert theirs.read_text() == "mine" and (tmp_path / "out" / name).is_symlink()
        assert not [path.name for path in (tmp_path / "out").iterdir() if path.name.endswith(".tmp")]


def test_rank_table_places_tucker_variants_by_channel_rank(summary: pd.DataFrame) -> None:
    table = analysis.rank_table(summary.reset_index())
    assert table[["line", "channel_rank", "channel_fraction"]].values.tolist() == [
        ["recomp_both", 16, 0.25],
        ["tucker", 32, 0.5],
    ]


def test_labels_and_baselines_where_other_flags_differ(tmp_path: Path) -> None:
    write_run(tmp_path, [50, 60], distillation="featuremap", beta=125.0)
    write_run(tmp_path, [50, 62], distillation="featuremap", beta=50.0, experiment_name="featuremap-beta50")
    write_run(tmp_path, [50, 65], distillation="tucker", beta=50.0, ranks="BATCH_SIZE,32,8,8")
    write_run(tmp_path, [50, 63], distillation="tucker", beta=50.0, ranks="BATCH_SIZE,16,4,4")
    write_run(tmp_path, [50, 61], distillation="kd")
    summary = analysis.summarize(analysis.load_runs(tmp_path)).set_index("label")
    assert set(summary.index) == {
        "featuremap (beta=125.0)",
        "featuremap (beta=50.0)",
        "tucker_x0.5",
        "tucker_x0.25_B-16-4-4",
        "kd",
    }
    assert summary.loc["tucker_x0.5", "diff_featuremap"] == pytest.approx(3)  # the featuremap run with its beta
    assert summary.loc["tucker_x0.25_B-16-4-4", "diff_featuremap"] == pytest.approx(1)
    lines = analysis.rank_table(summary.reset_index())[["line", "channel_rank"]].values.tolist()
    assert lines == [["tucker", 32], ["tucker B-r-4-4", 16]]
    assert math.isnan(summary.loc["kd", "diff_featuremap"])  # two candidates, neither with kd's beta: ambiguous
    assert math.isnan(summary.loc["kd", "diff_plain"])  # no plain run
    assert "beta" in analysis.compact(summary.reset_index()).columns


def test_plain_runs_are_named_by_their_role(tmp_path: Path) -> None:
    """The teacher the students distilled from, the student alone, and a network that is both."""
    recipe = {"epochs": 8, "batch_size": 64, "lr": 0.05}  # digits' teacher recipe: where students find their teacher
    write_run(tmp_path, [80, 90, 85], distillation="none", student="ResNet20", **recipe)
    write_run(tmp_path, [50, 60, 55], distillation="none")
    write_run(tmp_path, [60, 70, 65], distillation="tucker", ranks="BATCH_SIZE,16,8,8")
    write_run(tmp_path, [40, 50, 45], distillation="none", dataset="cifar10", student="ResNetBaby")
    write_run(tmp_path, [40, 55, 45], distillation="kd", dataset="cifar10", teacher="ResNetBaby", teacher_epochs=3)
    runs = analysis.load_runs(tmp_path)
    roles = dict(zip(runs.finished["run"], runs.finished["method"]))
    assert roles == {
        "digits/teacher/ResNet20/epochs=8,batch_size=64,lr=0.05/seed0": "teacher",
        "digits/teacher/ResNetBaby/epochs=3/seed0": "student alone",
        "digits/ResNet20-ResNetBaby/tucker/B-16-8-8/epochs=3/seed0": "tucker_x0.25",
        "cifar10/teacher/ResNetBaby/epochs=3/seed0": "teacher / student alone",
        "cifar10/ResNetBaby-ResNetBaby/kd/epochs=3,teacher_epochs=3/seed0": "kd",
    }
    summary = analysis.summarize(runs).set_index("label")
    assert set(summary.index) == {*roles.values()}  # the roles tell plain configurations apart
    assert summary.loc["kd", "diff_plain"] == 5  # kd's own cross-entropy weight (0.1) does not hide its student alone


def test_t_interval_is_the_textbook_one() -> None:
    """mean ± t(0.975, n − 1) s / √n; t(0.975, 2) = 4.303 and t(0.975, 1) = 12.706 from the tables."""
    assert analysis.t_interval([1.0, 2.0, 3.0]) == pytest.approx(
        (2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3))
    )
    assert analysis.t_interval([50.0, 52.0]) == pytest.approx((51 - 12.706205, 51 + 12.706205))
    assert analysis.t_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert all(math.isnan(bound) for bound in analysis.t_interval([5.0]))


def test_paired_t_test_pairs_by_seed() -> None:
    """Seeds 0-2 pair up (differences 1, 2, 3): t = 2 / (1 / √3); with 2 degrees of freedom the
    two-sided p-value is 1 − t / √(2 + t²) = 0.0742 in closed form, and scipy.stats.ttest_rel's."""
    test = analysis.paired_t_test({0: 90.0, 1: 92.0, 2: 95.0, 3: 80.0}, {0: 89.0, 1: 90.0, 2: 92.0, 4: 70.0})
    t = 2 * math.sqrt(3)
    assert test.pairs == 3 and test.difference == pytest.approx(2)
    assert (test.low, test.high) == pytest.approx(analysis.t_interval([1.0, 2.0, 3.0]))
    assert test.p_value == pytest.approx(1 - t / math.sqrt(2 + t**2))
    assert test.p_value == pytest.approx(scipy.stats.ttest_rel([90, 92, 95], [89, 90, 92]).pvalue)
    single = analysis.paired_t_test({0: 90.0, 1: 91.0}, {0: 89.0})
    assert single.pairs == 1 and single.difference == 1 and math.isnan(single.p_value) and math.isnan(single.low)


def test_expectation_table_and_its_markdown(tree: Path) -> None:
    runs = analysis.load_runs(tree)
    table = analysis.expectation_table(runs).set_index("method")
    assert list(table.index) == ["student alone", "tucker_x0.5", "featuremap", "recomp_both_x0.25", "noise_std1"]
    # featuremap 70, 66 against the student alone's 50, 52 on the same seeds: differences 20, 14;
    # t = 17 / 3 with 1 degree of freedom: p = 1 − 2 atan(t) / π.
    featuremap = table.loc["featuremap"]
    assert featuremap[["n", "mean", "std", "pairs", "difference"]].tolist() == pytest.approx(
        [2, 68, math.sqrt(8), 2, 17]
    )
    assert (featuremap["ci_low"], featuremap["ci_high"]) == pytest.approx((68 - 12.706205 * 2, 68 + 12.706205 * 2))
    assert (featuremap["difference_low"], featuremap["difference_high"]) == pytest.approx(
        (17 - 12.706205 * 3, 17 + 12.706205 * 3)
    )
    assert featuremap["p_value"] == pytest.approx(1 - 2 * math.atan(17 / 3) / math.pi)
    assert table.loc["recomp_both_x0.25", ["pairs", "difference"]].tolist() == [1, 15]  # one seed: no test
    assert table.loc["student alone", "pairs"] == 0
    tucker = table.loc["tucker_x0.5"]  # seed 2 has no student-alone run to pair with; differences 22, 22
    assert tucker[["pairs", "difference", "difference_low"]].tolist() == [2, 22, 22] and math.isnan(tucker["p_value"])
    lines = analysis.expectation_markdown(table.reset_index()).splitlines()
    assert lines[0] == "| method | n | mean ± std | 95% CI | Δ vs student alone [95% CI] | p (paired t) |"
    assert lines[2] == "| student alone | 2 | 51.00 ± 1.41 | [38.29, 63.71] | reference |  |"
    assert lines[4] == "| featuremap | 2 | 68.00 ± 2.83 | [42.59, 93.41] | +17.00 [-21.12, 55.12] | 0.111 |"
    assert (
        lines[3]
        == "| tucker_x0.5 | 3 | 72.33 ± 1.53 | [68.54, 76.13] | +22.00 [22.00, 22.00] (2 of 3 seeds paired) |  |"
    )
    assert lines[5] == "| recomp_both_x0.25 | 1 | 65.00 |  | +15.00 |  |"
    report = analysis.expectation_report(runs, "last")
    assert (
        report.startswith("Test accuracy of the last epoch (the statistic RepDistiller reports)")
        and "**digits**" in report
    )
    assert "| featuremap | 2 | 67.00 ± 4.24 |" in report
    assert analysis.expectation_report(analysis.load_runs(tree / "broken")).startswith("No finished runs")


@pytest.mark.skipif(
    not (ROOT / ".venv" / ".installed").exists()
    or (ROOT / "requirements.txt").stat().st_mtime > (ROOT / ".venv" / ".installed").stat().st_mtime,
    reason="util.sh would install .venv first (./util.sh setup)",
)
def test_study_grid(tmp_path: Path) -> None:
    """``./util.sh study --dry_run``: every method of the study and every baseline, tucker with both
    cores, 3 seeds, and the teacher they share, in their own folder."""
    result = subprocess.run(
        [str(ROOT / "util.sh"), "study", "--dry_run", "--scripts"],
        capture_output=True,
        text=True,
        timeout=patience(300),
        env={**os.environ, "EXPERIMENTS_DIR": str(tmp_path)},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    runs = re.findall(r"^\| \S+ \| .* \| (digits/\S+) \|$", result.stdout, re.MULTILINE)
    configurations = {run.rsplit("/", 1)[0] for run in runs}
    assert len(runs) == 51 and len(configurations) == 17 and "would submit 52 (teachers: 1)" in result.stdout
    prefix = "digits/ResNet20-ResNetBaby/"
    methods = {c.removeprefix(prefix).split("/")[0] for c in configurations if c.startswith(prefix)}
    assert methods == {
        "featuremap",
        "tucker",
        "tucker_recomp",
        "noise",
        "kd",
        "fitnet",
        "at",
        "sp",
        "pkt",
        "rkd",
        "vid",
        "crd",
        "dkd",
    }
    assert sum("tucker_core=per_sample" in c for c in configurations) == 1
    teacher = "--experiment_name digits/teacher/ResNet20/epochs=8,batch_size=64,lr=0.05/seed0"
    training = "--epochs 8 --batch_size 64 --lr 0.05"  # digits' teacher recipe (the study's students have the same)
    assert f"--distillation none --seed 0 --threads 1 --experiments_dir {tmp_path}/study {training} {teacher}" in (
        result.stdout
    )
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_empty_folder_says_so_and_draws_nothing(tmp_path: Path) -> None:
    runs = analysis.load_runs(tmp_path)
    assert analysis.describe(runs).startswith("No finished runs under")
    summary = analysis.summarize(runs)
    assert summary.empty and analysis.export_summary(summary, tmp_path) == []
    assert analysis.compact(summary).empty and analysis.curves(runs, "test_loss").empty
    analysis.plot_curves(runs, "test_acc")
    analysis.plot_accuracy_vs_rank(summary)
    with pytest.raises(UsageError, match="does not exist"):
        analysis.load_runs(tmp_path / "missing")


# The benchmark table (CRD layout)

CRD = {**recipe_defaults("crd", "wrn_16_2"), "recipe": "crd", "dataset": "cifar100", "epochs": 3}
"""The CRD recipe as ``--recipe crd --epochs 3`` resolves it (these students get the recipe's lr)."""
WRN, RESNET, OTHER = "wrn_40_2→wrn_16_2", "resnet56→resnet20", "wrn_40_2→resnet8"


def write_benchmark_runs(
    root: Path, pair: tuple[str, str], distillation: str, curves: list[list[float]], **flags: Any
) -> None:
    """One run per seed; plain training (``none``) of ``pair[1]``, as the teacher's run is written."""
    teacher, student = pair
    for seed, test_acc in enumerate(curves):
        write_run(
            root,
            test_acc,
            **{**CRD, "teacher": teacher, "student": student, "distillation": distillation, "seed": seed, **flags},
        )


def write_benchmark_tree(root: Path) -> Path:
    """Two published pairs and one other, 1 to 3 seeds, written in no particular order; a cell's
    last-epoch and best-epoch statistics differ."""
    write_benchmark_runs(root, ("resnet56", "resnet20"), "kd", [[60, 72, 70], [72, 60, 72]])
    write_benchmark_runs(root, ("resnet56", "resnet20"), "noise", [[60, 65, 64]], noise_std=1.0)
    write_benchmark_runs(
        root,
        ("resnet56", "resnet20"),
        "tucker_recomp",
        [[60, 69, 70]],
        recomp_target="both",
        ranks="BATCH_SIZE,x0.5,x1,x1",
    )
    write_benchmark_runs(root, ("resnet56", "resnet20"), "featuremap", [[60, 70, 70]])
    write_benchmark_runs(
        root, ("resnet56", "resnet20"), "dkd", [[60, 72, 71], [60, 73, 72]]
    )  # dkd_beta 2 for this pair
    write_benchmark_runs(root, ("wrn_40_2", "wrn_16_2"), "dkd", [[60, 77, 76]])  # and 6 for this one: still one row
    write_benchmark_runs(root, ("wrn_40_2", "wrn_16_2"), "crd", [[60, 75, 75.5]])
    write_benchmark_runs(root, ("resnet56", "resnet20"), "fitnet", [[60, 69, 69]])
    write_benchmark_runs(root, ("wrn_40_2", "resnet8"), "kd", [[50, 55, 54]])
    write_benchmark_runs(
        root, ("wrn_40_2", "wrn_16_2"), "tucker", [[60, 74, 75], [60, 76, 73]], ranks="BATCH_SIZE,x0.5,x1,x1"
    )
    write_benchmark_runs(root, ("wrn_40_2", "wrn_16_2"), "tucker", [[60, 70, 71]], ranks="BATCH_SIZE,x0.25,x1,x1")
    write_benchmark_runs(root, ("wrn_40_2", "wrn_16_2"), "kd", [[60, 75, 74], [60, 76, 75], [60, 77, 76]])
    write_benchmark_runs(root, ("resnet20", "resnet20"), "none", [[60, 70, 69], [60, 68, 67]])
    write_benchmark_runs(root, ("resnet56", "resnet56"), "none", [[60, 73, 72]])
    write_benchmark_runs(root, ("wrn_16_2", "wrn_16_2"), "none", [[60, 74, 73], [60, 72, 71], [60, 73, 72]])
    write_benchmark_runs(root, ("wrn_40_2", "wrn_40_2"), "none", [[70, 76, 75], [71, 77, 76]])
    write_run(root, [10, 20, 30], distillation="kd")  # digits: another data set, never in a cifar100 table
    return root


@pytest.fixture(scope="module")
def benchmark_runs(tmp_path_factory: pytest.TempPathFactory) -> analysis.Runs:
    return analysis.load_runs(write_benchmark_tree(tmp_path_factory.mktemp("benchmark")))


BENCHMARK_ROWS = [
    "teacher",
    "student alone",
    "kd",
    "fitnet",
    "crd",
    "dkd",
    "featuremap",
    "tucker_x0.25",
    "tucker_x0.5",
    "recomp_both_x0.5",
    "noise_std1",
]
BENCHMARK_COLUMNS = [WRN, "wrn_40_2→wrn_40_1", RESNET, OTHER]  # published order; wrn_40_1: its teacher has a run


def test_benchmark_table_cells_rows_and_columns(benchmark_runs: analysis.Runs) -> None:
    last = analysis.benchmark_table(benchmark_runs, "last", "cifar100")
    assert list(last.index) == BENCHMARK_ROWS and list(last.columns) == BENCHMARK_COLUMNS
    assert last.loc["teacher"].tolist() == ["75.50 ± 0.71", "75.50 ± 0.71", "72.00", "75.50 ± 0.71"]  # one seed: no ±
    assert last.loc["student alone"].tolist() == ["72.00 ± 1.00", "", "68.00 ± 1.41", ""]
    assert last.loc["kd"].tolist() == ["75.00 ± 1.00", "", "71.00 ± 1.41", "54.00"]
    assert last.loc["tucker_x0.5", WRN] == "74.00 ± 1.41" and last.loc["tucker_x0.25", WRN] == "71.00"
    assert last.loc["recomp_both_x0.5", RESNET] == "70.00" and last.loc["noise_std1", RESNET] == "64.00"
    assert last.loc["dkd"].tolist() == ["76.00", "", "71.50 ± 0.71", ""] and last.loc["crd", WRN] == "75.50"
    assert last.loc["fitnet"].tolist() == ["", "", "69.00", ""]
    best = analysis.benchmark_table(benchmark_runs, "best", "cifar100")
    assert list(best.index) == BENCHMARK_ROWS and list(best.columns) == BENCHMARK_COLUMNS
    assert best.loc["teacher"].tolist() == ["76.50 ± 0.71", "76.50 ± 0.71", "73.00", "76.50 ± 0.71"]
    assert best.loc["kd"].tolist() == ["76.00 ± 1.00", "", "72.00 ± 0.00", "55.00"]
    assert best.loc["tucker_x0.5", WRN] == "75.50 ± 0.71" and best.loc["noise_std1", RESNET] == "65.00"
    digits = analysis.benchmark_table(benchmark_runs, "last", "digits")
    assert list(digits.index) == ["teacher", "student alone", "kd"] and list(digits.columns) == ["ResNet20→ResNetBaby"]
    assert analysis.benchmark_table(benchmark_runs, "last", "cifar10").empty
    with pytest.raises(UsageError, match="statistic must be one of last, best"):
        analysis.benchmark_table(benchmark_runs, "mean")


def test_row_order_places_the_field_s_methods_first() -> None:
    names = [
        ("noise_std1", "noise"),
        ("toy", "toy"),
        ("recomp_both_x0.25", "recomp_both"),
        ("tucker_x0.5", "tucker"),
        ("tucker_x0.25_B-16-4-4", "tucker"),
        ("featuremap", "featuremap"),
        ("dkd", "dkd"),
        ("crd", "crd"),
        ("vid", "vid"),
        ("rkd", "rkd"),
        ("pkt", "pkt"),
        ("sp", "sp"),
        ("at", "at"),
        ("fitnet", "fitnet"),
        ("kd", "kd"),
        ("student alone", "plain"),
        ("teacher", "plain"),
        ("recomp_teacher_x0.5", "recomp_teacher"),
    ]
    ordered = sorted(names, key=lambda n: analysis._row_order(n[0], n[0], n[1]))
    assert [name for name, _ in ordered] == [
        "teacher",
        "student alone",
        "kd",
        "fitnet",
        "at",
        "sp",
        "pkt",
        "rkd",
        "vid",
        "crd",
        "dkd",
        "featuremap",
        "tucker_x0.25_B-16-4-4",
        "tucker_x0.5",
        "recomp_teacher_x0.5",
        "recomp_both_x0.25",
        "noise_std1",
        "toy",
    ]


def test_a_cell_never_mixes_recipes_or_settings(tmp_path: Path) -> None:
    pair = ("wrn_40_2", "wrn_16_2")
    write_benchmark_runs(tmp_path, pair, "kd", [[60, 70, 70], [60, 72, 72]])
    write_benchmark_runs(tmp_path, ("wrn_40_2", "wrn_40_2"), "none", [[60, 75, 75]])
    runs = analysis.load_runs(tmp_path)
    assert analysis.benchmark_table(runs).loc["kd", WRN] == "71.00 ± 1.41"
    # Another setting of the method: its own row, labelled with the setting.
    write_benchmark_runs(tmp_path, pair, "kd", [[60, 60, 60]], beta=0.5)
    table = analysis.benchmark_table(analysis.load_runs(tmp_path))
    assert list(table.index) == ["teacher", "student alone", "kd (beta=0.5)", "kd (beta=0.9)"]
    assert table[WRN].tolist() == ["75.00", "", "60.00", "71.00 ± 1.41"]
    # Another recipe (here more epochs) in the same folder: refused, in one line, until one is picked.
    write_benchmark_runs(tmp_path, pair, "kd", [[60, 80, 80, 80]], epochs=4)
    runs = analysis.load_runs(tmp_path)
    with pytest.raises(
        UsageError, match=r"2 recipes.*crd, epochs=3 \(3 configurations\); crd, epochs=4 \(1 configuration\)"
    ) as error:
        analysis.benchmark_table(runs)
    assert "\n" not in str(error.value) and "where={'epochs': 3}" in str(error.value)
    assert analysis.benchmark_table(runs, where={"epochs": 3}).equals(table)
    assert analysis.benchmark_table(runs, where={"epochs": 4}).loc["kd", WRN] == "80.00"
    # The recipe's own learning rate for a MobileNetV2 student is the recipe, not a change to it.
    write_run(
        tmp_path,
        [60, 65, 66],
        **{
            **CRD,
            "lr": recipe_defaults("crd", "MobileNetV2")["lr"],
            "distillation": "kd",
            "teacher": "wrn_40_2",
            "student": "MobileNetV2",
        },
    )
    table = analysis.benchmark_table(analysis.load_runs(tmp_path), where={"epochs": 3})
    assert table.loc["kd (beta=0.9)", "wrn_40_2→MobileNetV2"] == "66.00"
    with pytest.raises(UsageError, match="'warmup' is not a flag"):
        analysis.benchmark_table(runs, where={"warmup": 5})


def test_published_numbers() -> None:
    published = analysis.published_results()
    assert (
        list(published.columns) == ["teacher", "student", "method", "top1", "source"] and len(published) == 77 + 68 + 21
    )
    indexed = published.set_index(["teacher", "student", "method"])
    assert indexed.loc[("wrn_40_2", "wrn_16_2", "teacher"), "top1"] == 75.61
    assert math.isnan(indexed.loc[("resnet110", "resnet20", "dkd"), "top1"])  # not published, not zero
    assert math.isnan(indexed.loc[("wrn_40_2", "wrn_40_1", "fsp"), "top1"])  # N/A: the widths differ
    assert indexed.loc[("resnet32x4", "resnet8x4", "ab"), "top1"] == 73.17
    assert indexed.loc[("vgg13", "vgg8", "crd"), "top1"] == 73.94
    assert indexed.loc[("resnet32x4", "resnet8x4", "dkd"), "source"] == "https://github.com/megvii-research/mdistiller"
    repdistillers = ["teacher", "student alone", "kd", "fitnet", "at", "sp", "pkt", "rkd", "vid", "crd", "cc", "nst"]
    assert set(published.loc[published["method"].isin(repdistillers), "source"]) == {
        "https://github.com/HobbitLong/RepDistiller"
    }
    wide = analysis.published_table(published)
    assert list(wide.index) == [
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
        "dist",
        "kd+ls",
        "dkd+ls",
        "kd_dot",
    ]
    assert list(wide.columns) == [analysis.pair_label(*pair) for pair in (*analysis.BENCHMARK_PAIRS, *CROSS_ARCH_PAIRS)]
    assert wide.loc["student alone", "resnet110→resnet32"] == 71.14


def test_benchmark_markdown_with_published_numbers(benchmark_runs: analysis.Runs, tmp_path: Path) -> None:
    table = analysis.with_published(analysis.benchmark_table(benchmark_runs, "last"))
    assert table.loc["teacher"].tolist() == [
        "75.50 ± 0.71 (75.61)",
        "75.50 ± 0.71 (75.61)",
        "72.00 (72.34)",
        "75.50 ± 0.71",
    ]
    assert table.loc["kd"].tolist() == ["75.00 ± 1.00 (74.92)", "– (73.54)", "71.00 ± 1.41 (70.66)", "54.00"]
    assert table.loc["tucker_x0.5", WRN] == "74.00 ± 1.41"  # no published number: ours alone
    assert table.loc["dkd"].tolist() == ["76.00 (76.23)", "– (74.81)", "71.50 ± 0.71 (71.97)", ""]
    lines = analysis.benchmark_markdown(table).splitlines()
    assert lines[:3] == [
        f"| method | {WRN} | wrn_40_2→wrn_40_1 | {RESNET} | {OTHER} |",
        "|---|---:|---:|---:|---:|",
        "| teacher | 75.50 ± 0.71 (75.61) | 75.50 ± 0.71 (75.61) | 72.00 (72.34) | 75.50 ± 0.71 |",
    ]
    assert lines[-1] == "| noise_std1 |  |  | 64.00 |  |" and len(lines) == 2 + len(BENCHMARK_ROWS)
    dkd = pd.DataFrame({"resnet110→resnet20": ["70.10"]}, index=pd.Index(["dkd"], name="method"))
    assert analysis.with_published(dkd).iloc[0, 0] == "70.10 (–)"  # nothing published for this cell

    reports = analysis.benchmark_reports(benchmark_runs, "cifar100")
    assert list(reports) == ["last", "best"]
    assert "last epoch" in reports["last"] and "published numbers in parentheses" in reports["last"]
    assert "| kd | 76.00 ± 1.00 (74.92) |" in reports["best"]
    digits = analysis.benchmark_reports(benchmark_runs, "digits")
    assert (
        "none is shown" in digits["last"]
        and "| kd | 30.00 |" in digits["last"]
        and "(" not in digits["last"].split("\n\n")[1]
    )
    assert analysis.benchmark_reports(benchmark_runs, "cifar10") == {}
    paths = analysis.export_benchmark(reports, tmp_path)
    assert [p.name for p in paths] == ["benchmark_last.md", "benchmark_best.md"] and paths[0].read_text() == reports[
        "last"
    ]
    assert analysis.export_benchmark({}, tmp_path / "nothing") == []


def test_benchmark_of_an_empty_folder(tmp_path: Path) -> None:
    runs = analysis.load_runs(tmp_path)
    assert analysis.benchmark_table(runs).empty and analysis.benchmark_reports(runs) == {}


# toolbox.analysis.inspection


@pytest.fixture(scope="module")
def maps() -> torch.Tensor:
    """Layer-3 maps of an untrained ResNetBaby on random images: ReLU maps of the right shape."""
    torch.manual_seed(0)
    model = build_model("ResNetBaby", 10).eval()
    return inspection.feature_maps(model, torch.randn(16, 3, 32, 32), 3)


def numpy_unfolding(x: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)


def test_principal_angles_match_scipy() -> None:
    generator = np.random.default_rng(0)
    a = np.linalg.qr(generator.normal(size=(64, 12)))[0]
    b = np.linalg.qr(generator.normal(size=(64, 8)))[0]
    close = np.linalg.qr(a + 1e-7 * generator.normal(size=a.shape))[0]  # tiny angles, where arccos fails
    for first, second in [(a, b), (b, a), (a, close)]:
        ours = inspection.principal_angles(torch.from_numpy(first), torch.from_numpy(second))
        reference = np.sort(scipy.linalg.subspace_angles(first, second))
        assert ours == pytest.approx(reference, abs=1e-12)
    assert inspection.principal_angles(torch.from_numpy(a), torch.from_numpy(close)).max() < 1e-5


def test_channel_subspace_is_the_leading_left_singular_subspace(maps: torch.Tensor) -> None:
    reference = np.linalg.svd(numpy_unfolding(maps.double().numpy(), 1))[0][:, :10]
    basis = inspection.channel_subspace(maps, 10)
    assert (basis.T @ basis).numpy() == pytest.approx(np.eye(10), abs=1e-12)
    assert inspection.principal_angles(basis, torch.from_numpy(reference)).max() < 1e-6
    assert torch.equal(inspection.channel_subspace(maps, 64), torch.eye(64, dtype=torch.float64))


def test_spectra_match_numpy(maps: torch.Tensor) -> None:
    x = maps.double().numpy()
    for mode, (name, values) in enumerate(inspection.mode_spectra(maps).items()):
        assert name == ("batch", "channel", "height", "width")[mode]
        assert values == pytest.approx(np.linalg.svd(numpy_unfolding(x, mode), compute_uv=False), rel=1e-10)


def test_energy_kept_is_one_minus_squared_error(maps: torch.Tensor) -> None:
    x = maps.double()
    singular = np.linalg.svd(numpy_unfolding(x.numpy(), 1), compute_uv=False)
    for backend in ("fast", "tensorly"):
        for ranks in [(None, 8, 8, 8), (None, 64, 3, 5), (None, 20, 4, 4)]:
            core, factors = inspection.decompose(x, ranks, backend)
            energy = inspection.energy_kept(x, core)
            assert energy == pytest.approx(1 - relative_error(x, recompose(core, factors)) ** 2, abs=1e-10)
        core, _ = inspection.decompose(x, (None, 8, 8, 8), backend)
        assert inspection.energy_kept(x, core) == pytest.approx(
            (singular[:8] ** 2).sum() / (singular**2).sum(), rel=1e-10
        )


def test_rank_sweeps_fall_with_rank_and_backends_agree(maps: torch.Tensor) -> None:
    assert inspection.default_sweep(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert inspection.default_sweep(8) == [1, 2, 4, 6, 8]
    sweep = pd.concat(
        [
            inspection.rank_sweep(maps, "channel", [1, 4, 16, 48, 64]),
            inspection.rank_sweep(maps, "spatial", [1, 3, 8], n_iter=20),  # HOOI on the fast side too
        ]
    )
    for (_, backend), line in sweep.groupby(["sweep", "backend"]):
        assert line["relative_error"].is_monotonic_decreasing and line["relative_error"].iloc[-1] < 1e-5
    wide = inspection.compare_backends(sweep)
    assert wide["error difference (fast - tensorly)"].abs().max() < 1e-5
    with pytest.raises(UsageError, match="sweep must be one of"):
        inspection.sweep_ranks(maps.shape, "batch", 2)


def test_subspace_angles_table(maps: torch.Tensor) -> None:
    angles = inspection.subspace_angles({"teacher": maps, "itself": maps.clone()}, 6)
    assert set(angles["compared"]) == {"itself", "random subspace"}
    assert angles.loc[angles["compared"] == "itself", "angle_deg"].max() < 1e-4
    assert len(angles) == 12 and angles["angle_deg"].between(0, 90).all()


def test_reconstruction_figure_gives_the_batch_error_once_and_each_maps_own() -> None:
    x = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    damaged = x.clone()
    damaged[1, 2] = 0
    errors = inspection.channel_errors(x, damaged, image=1)
    assert float(errors[2]) == 1.0 and float(errors[torch.arange(8) != 2].abs().max()) == 0.0
    figure = inspection.plot_reconstructions(x, [2, 8], image=1, channels=(0, 2))
    titles = [ax.get_title() for ax in figure.axes]
    assert sum("batch error" in title for title in titles) == 2  # once per rank, in the first row
    assert (
        sum("map error" in title for title in titles) == 4 and len(figure.axes) == 2 * 3 + 2
    )  # and a colour bar per row
    plt.close(figure)


def imagenet_run(root: Path, acc: list[float], distillation: str, teacher: str, student: str, **flags: Any) -> str:
    """A run as ``--recipe imagenet --dataset imagenet`` resolves it."""
    return write_run(
        root,
        acc,
        **{
            **recipe_defaults("imagenet", student, distillation),
            "recipe": "imagenet",
            "dataset": "imagenet",
            "distillation": distillation,
            "teacher": teacher,
            "student": student,
            **flags,
        },
    )


def test_the_imagenet_layout_shows_both_pairs_and_every_published_row(tmp_path: Path) -> None:
    imagenet_run(tmp_path, [60.0, 69.5, 69.0], "none", "resnet34", "resnet18")
    imagenet_run(tmp_path, [61.0, 70.0, 71.25], "kd", "resnet34", "resnet18")
    imagenet_run(tmp_path, [62.0, 71.5, 71.0], "tucker", "resnet34", "resnet18", ranks="BATCH_SIZE,x0.5,x1,x1")
    imagenet_run(
        tmp_path, [55.0, 68.0], "crd", "resnet50", "MobileNetV1", epochs=2
    )  # crd's batch 256, lr 0.1: its recipe
    write_run(tmp_path, [50, 60, 70], distillation="kd", teacher="ResNet20", student="ResNetBaby")  # another data set
    summary = analysis.summarize(analysis.load_runs(tmp_path))
    with pytest.raises(UsageError, match=r"2 recipes, .*: imagenet \(3 configurations\); imagenet, epochs=2 "):
        analysis.layout_table(summary, "last", "imagenet")
    where = {"epochs": 100}
    last = analysis.layout_table(summary, "last", "imagenet", where)
    assert list(last.columns) == ["resnet34→resnet18", "resnet50→MobileNetV1"]  # both pairs, though one has no run
    assert list(last.index) == [
        "teacher",
        "student alone",
        "kd",
        "at",
        "crd",
        "dkd",
        "reviewkd",
        "dist",
        "kd_dot",
        "tucker_x0.5",
    ]
    assert last.loc["teacher"].tolist() == ["– (73.31)", "– (76.13)"]  # torchvision's teachers: never trained here
    assert last.loc["student alone"].tolist() == ["69.00 (69.76)", "– (–)"]  # no MobileNetV1 alone is published
    assert last.loc["crd"].tolist() == ["– (70.93)", "– (–)"]  # the epochs=2 run is not of this recipe
    assert last.loc["kd"].tolist() == ["71.25 (71.03)", "– (70.50)"]
    assert last.loc["tucker_x0.5"].tolist() == ["71.00", ""]  # ours alone: nothing is published for it
    assert last.loc["kd_dot"].tolist() == ["– (71.72)", "– (73.09)"]
    assert analysis.layout_table(summary, "best", "imagenet", where).loc["kd", "resnet34→resnet18"] == "71.25 (71.03)"
    reports = analysis.layout_reports(summary, "imagenet", where)
    assert list(reports) == ["imagenet_last", "imagenet_best"]
    assert reports["imagenet_best"].startswith("imagenet, top-1 test accuracy of the best epoch")
    assert "(toolbox/published/imagenet.csv)" in reports["imagenet_last"]
    assert analysis.layout_reports(summary, "imagenet", {"epochs": 7}) == {}  # nothing to show
    assert analysis.layout_table(summary, "last", "imagenet", {"epochs": 7}).empty


def test_every_published_imagenet_number_names_its_source() -> None:
    published = analysis.published_results(analysis.IMAGENET_PUBLISHED_CSV)
    assert set(zip(published["teacher"], published["student"])) == set(analysis.IMAGENET_PAIRS)
    assert published["source"].str.contains("mdistiller|torchvision|torchdistill|DIST_KD|ReviewKD").all()
    assert not published.duplicated(["teacher", "student", "method"]).any()


def test_a_study_folder_shows_its_shared_teacher(tmp_path: Path) -> None:
    """runner.py --study puts the students in a sub-folder and shares their teacher one level up: the
    analysis of the study's folder still fills the teacher row, from the teacher the students name."""
    write_run(tmp_path, [90.0, 97.5], distillation="none", student="ResNet20")
    study = tmp_path / "s1"
    write_run(
        study,
        [80.0, 85.0],
        distillation="kd",
        teacher_checkpoint=str(tmp_path / "digits" / "teacher" / "ResNet20" / "epochs=3" / "seed0" / "ResNet20.pth"),
    )
    write_run(study, [70.0, 75.0], distillation="none")
    runs = analysis.load_runs(study)
    methods = dict(zip(runs.finished["method"], runs.finished["best_test_acc"]))
    assert methods == {"teacher": 97.5, "kd": 85.0, "student alone": 75.0}
    assert analysis.expectation_table(runs).iloc[0]["method"] == "teacher"
