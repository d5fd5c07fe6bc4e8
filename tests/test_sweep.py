"""Sweeps over any training flag: grid axes, their filtering and deduplication, the default grid
(golden list of run names), and a beta sweep and a noise sweep end to end on digits through the
local scheduler, each value a row of the aggregator's table."""

from __future__ import annotations

from pathlib import Path

import pytest

import runner
from toolbox import analysis, sweep
from toolbox.errors import UsageError

GOLDEN = Path(__file__).parent / "golden" / "default_grid.txt"
SMALL = [
    "--dataset",
    "digits",
    "--teacher",
    "ResNetBaby",
    "--student",
    "ResNetBaby",
    "--epochs",
    "2",
    "--batch_size",
    "64",
]
TRAINING = ["--", "--max_batches", "2", "--threads", "1", "--device", "cpu"]


def plan(argv: list[str]) -> list[sweep.Run]:
    args, extra = runner.parse_args(argv)
    return sweep.build_grid(runner.grid_axes(args), extra, Path(args.experiments_dir).absolute(), args.study)


def test_the_default_grid_is_unchanged(tmp_path: Path) -> None:
    runs = plan(["--experiments_dir", str(tmp_path)])
    names = [run.name for run in [*sweep.teachers(runs), *runs]]
    assert len(runs) == 51 and len({run.config.experiment_name for run in runs}) == 51
    assert names == GOLDEN.read_text().split()


@pytest.mark.parametrize(
    "text, axis",
    [
        ("beta=50,125,250", ("beta", ["50", "125", "250"])),
        ("ranks=BATCH_SIZE,32,8,8:BATCH_SIZE,8,8,8", ("ranks", ["BATCH_SIZE,32,8,8", "BATCH_SIZE,8,8,8"])),
        ("lr=0.1,0.1,0.05", ("lr", ["0.1", "0.05"])),
    ],
)
def test_axes_parse(text: str, axis: tuple) -> None:
    assert sweep.parse_axis(text) == axis


@pytest.mark.parametrize("text", ["beta", "device=cpu,cuda", "nonsense=1", "beta=1,,2", "experiment_name=a,b"])
def test_bad_axes_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--grid"):
        sweep.parse_axis(text)


def test_axes_are_crossed_filtered_by_method_and_deduplicated(tmp_path: Path) -> None:
    runs = plan(
        [
            *SMALL,
            "--experiments_dir",
            str(tmp_path),
            "--distillations",
            "featuremap",
            "kd",
            "--runs",
            "1",
            "--grid",
            "kd_temperature=2,4",
            "--grid",
            "beta=50,125",
        ]
    )
    names = [run.name.split("ResNetBaby-ResNetBaby/")[1] for run in runs]
    # featuremap reads beta, not the temperature; kd reads both, and its default beta is 1
    assert names == [
        "featuremap/beta=50,epochs=2,batch_size=64/seed0",
        "featuremap/epochs=2,batch_size=64/seed0",
        "kd/beta=50,kd_temperature=2,epochs=2,batch_size=64/seed0",
        "kd/beta=125,kd_temperature=2,epochs=2,batch_size=64/seed0",
        "kd/beta=50,epochs=2,batch_size=64/seed0",
        "kd/beta=125,epochs=2,batch_size=64/seed0",
    ]
    assert all("--kd_temperature" not in run.flags for run in runs if run.config.distillation == "featuremap")
    assert len(sweep.teachers(runs)) == 1  # one teacher for all


def test_a_grid_axis_and_the_same_flag_after_dashes_are_refused() -> None:
    with pytest.raises(UsageError, match="--lr is both a --grid axis and a flag after '--'"):
        runner.parse_args(["--grid", "lr=0.1,0.2", "--", "--lr", "0.3"])


def test_dry_run_prints_the_grid_as_a_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = runner.main(
        [
            *SMALL,
            "--experiments_dir",
            str(tmp_path),
            "--distillations",
            "featuremap",
            "--runs",
            "1",
            "--grid",
            "beta=50,250",
            "--scheduler",
            "local",
            "--dry_run",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and out.startswith("the grid: 2 runs\n| beta | run |")  # columns where the runs differ
    assert "| 50 | digits/ResNetBaby-ResNetBaby/featuremap/beta=50,epochs=2,batch_size=64/seed0 |" in out
    assert not list(tmp_path.rglob("*.json"))  # a dry run writes nothing

    status = runner.main(
        [
            *SMALL,
            "--experiments_dir",
            str(tmp_path),
            "--distillations",
            "featuremap",
            "tucker",
            "--runs",
            "1",
            "--ranks_list",
            "BATCH_SIZE,8,8,8",
            "BATCH_SIZE,4,8,8",
            "--scheduler",
            "local",
            "--dry_run",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and out.startswith("the grid: 3 runs\n| distillation | ranks | run |")
    assert (
        "| featuremap | - | digits/ResNetBaby-ResNetBaby/featuremap/epochs=2,batch_size=64/seed0 |" in out
    )  # ranks unread
    assert (
        "| tucker | BATCH_SIZE,4,8,8 | digits/ResNetBaby-ResNetBaby/tucker/B-4-8-8/epochs=2,batch_size=64/seed0 |"
        in out
    )


@pytest.mark.parametrize(
    "axis, method, column", [("beta=50,250", "featuremap", "beta"), ("noise_std=0.5,2", "noise", "noise_std")]
)
def test_a_sweep_end_to_end_gives_one_row_per_value(
    tmp_path: Path, capsys: pytest.CaptureFixture, axis: str, method: str, column: str
) -> None:
    argv = [
        *SMALL,
        "--experiments_dir",
        str(tmp_path),
        "--distillations",
        method,
        "--runs",
        "1",
        "--grid",
        axis,
        "--scheduler",
        "local",
        "--parallel",
        "2",
        *TRAINING,
    ]
    assert runner.main(argv) == 0, capsys.readouterr()
    assert "submitted 3 (teachers: 1)" in capsys.readouterr().out
    summary = analysis.summarize(analysis.load_runs(tmp_path))
    students = summary[summary["distillation"] == method]
    assert len(students) == 2 and sorted(students[column]) == sorted(float(v) for v in axis.split("=")[1].split(","))
    assert runner.main(argv) == 0 and "skipped as finished 2" in capsys.readouterr().out


def test_a_sweep_of_short_students_shares_one_teacher_trained_by_the_teacher_recipe(tmp_path: Path) -> None:
    """beta, ce_weight, --epochs: the students' own; their teacher is the plain run they all look for
    (teacher_config), trained by the teacher recipe (digits': 8 epochs), not one per value nor one of
    the students' 3 epochs. --teacher_epochs names another teacher, and the report warns of it."""
    axes = {
        "dataset": ["digits"],
        "distillation": ["featuremap", "kd"],
        "ce_weight": ["0.5", "1"],
        "beta": ["2"],
        "epochs": ["3"],
    }
    runs = sweep.build_grid(axes, [], tmp_path)
    name = "digits/teacher/ResNet112/epochs=8,batch_size=64,lr=0.05/seed0"
    assert len(runs) == 4 and {run.teacher.name for run in runs} == {name}
    assert all(run.teacher_checkpoint == tmp_path / name / "ResNet112.pth" for run in runs)
    assert sweep.teacher_report(runs) == [f"teacher {name}: 8 epochs, trained first, for 4 students"]
    short = sweep.build_grid({**axes, "teacher_epochs": ["2"]}, [], tmp_path)
    assert {run.teacher.name for run in short} == {"digits/teacher/ResNet112/epochs=2,batch_size=64,lr=0.05/seed0"}
    assert all(run.config.teacher_checkpoint == str(run.teacher_checkpoint) for run in short)
    assert "fewer than the teacher recipe's 8" in sweep.teacher_report(short)[1]
