"""Flags from a file (--config): the same run as the same flags on the command line, which win;
bad files are one line and status 2; runner.py's grid: section plans the runs --grid plans."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

import runner
import tucker_distillation
from tests.conftest import STUDENT
from tests.test_sweep import SMALL, plan
from toolbox.config import parse_config
from toolbox.rundir import resolve
from toolbox.training import train

FILE = f"""\
# the tiny digits run of the tests (TINY), as a file
dataset: digits
distillation: none
student: {STUDENT}
batch_size: 64
lr: 0.05
epochs: 1
max_batches: 1
amp: off            # YAML 1.1 would read off as false: here it is the text, as on the command line
channels_last: false
beta: null          # the method's default, as when left out
"""
COMMAND_LINE = [
    "--dataset",
    "digits",
    "--distillation",
    "none",
    "--student",
    STUDENT,
    "--batch_size",
    "64",
    "--lr",
    "0.05",
    "--epochs",
    "1",
    "--max_batches",
    "1",
    "--amp",
    "off",
    "--no-channels_last",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_file_and_its_command_line_are_the_same_run(tmp_path: Path) -> None:
    config_file = write(tmp_path / "run.yaml", FILE)
    train(parse_config(["--config", str(config_file), "--experiments_dir", str(tmp_path)]))
    [saved] = list(tmp_path.rglob("config.json"))
    recorded = json.loads(saved.read_text())["config"]
    same = resolve(parse_config([*COMMAND_LINE, "--experiments_dir", str(tmp_path)]))
    assert recorded == dataclasses.asdict(same)
    assert saved.parent == tmp_path / same.experiment_name
    assert same.experiment_name == "digits/teacher/ResNetBaby/epochs=1,batch_size=64,lr=0.05,max_batches=1/seed0"


def test_the_command_line_wins_and_the_file_beats_the_recipe(tmp_path: Path) -> None:
    config_file = write(
        tmp_path / "run.yaml", FILE + "recipe: crd\nweight_decay: 1e-4\n"
    )  # 1e-4: YAML 1.1 reads a text
    config = parse_config(["--config", str(config_file), "--lr", "0.01", "--channels_last"])
    assert (config.lr, config.channels_last, config.epochs, config.weight_decay) == (0.01, True, 1, 1e-4)
    assert (config.schedule, config.lr_milestones) == (
        "step",
        "150,180,210",
    )  # the file's recipe, where nothing else says
    assert parse_config(["--config", str(config_file), "--recipe", "original"]).schedule == "cosine"
    as_json = write(tmp_path / "run.json", json.dumps({"dataset": "digits", "epochs": 3, "compile": True}))
    assert dataclasses.astuple(parse_config(["--config", str(as_json)])) == dataclasses.astuple(
        parse_config(["--dataset", "digits", "--epochs", "3", "--compile"])
    )


FIFO = "<a FIFO>"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.yaml", "lrr: 0.1\n", "a.yaml: unknown key 'lrr' (did you mean lr?)"),
        (
            "a.yaml",
            "grid:\n  lr: [0.1]\n",
            "unknown key 'grid'; keys are the flags of --help without '--'; grid: is a section of runner.py's",
        ),
        ("a.yaml", "epochs: 1.5\n", "a.yaml: epochs: must be a whole number; got 1.5"),
        ("a.yaml", "lr: fast\n", "a.yaml: lr: must be a number; got 'fast'"),
        ("a.yaml", "compile: yes\n", "a.yaml: compile: must be true or false; got 'yes'"),
        ("a.yaml", "ranks: [32, 8, 8]\n", "a.yaml: ranks: must be one value, as on the command line"),
        ("a.yaml", "lr: -1\n", "a.yaml: lr: must be a positive number; got -1.0"),
        ("a.yaml", "distillation: magic\n", "a.yaml: distillation: must be one of none, featuremap,"),
        ("a.yaml", "ranks: BATCH_SIZE,32,8\n", "a.yaml: ranks: needs 4 comma-separated ranks"),
        (
            "a.yaml",
            "- lr\n- 0.1\n",
            "a.yaml must hold a mapping of flag names to values (e.g. 'lr: 0.05'); it holds a list",
        ),
        ("a.yaml", "", "a.yaml must hold a mapping of flag names to values (e.g. 'lr: 0.05'); it holds nothing"),
        (
            "a.yaml",
            "lr: 0.1\n  epochs: 2\n",
            "a.yaml is not valid YAML (line 2, column 9: mapping values are not allowed here)",
        ),
        ("a.yaml", "lr: 0.1\nlr: 0.2\n", "a.yaml is not valid YAML (line 2, column 1: the key 'lr' is given twice)"),
        ("a.json", '{"lr": 0.1,}', "a.json is not valid JSON (line 1, column 12"),
        ("a.toml", "lr = 0.1\n", "a.toml: name a YAML or JSON file (.yaml, .yml, .json)"),
        ("missing.yaml", None, "missing.yaml: no such file"),
        ("deep.yaml", "[" * 100_000, "deep.yaml nests too deeply to be read"),
        ("deep.json", "[" * 100_000, "deep.json nests too deeply to be read"),
        ("fifo.yaml", FIFO, "fifo.yaml is not a regular file; name a file"),  # reading it would wait for a writer
        # YAML 1.1's base 60 and dates are texts here, as on the command line; an alias could expand a
        # few hundred bytes into a huge value (9 levels of 9: 387 million strings): refused where it stands
        ("a.yaml", "epochs: 1:30\n", "a.yaml: epochs: must be a whole number; got '1:30'"),
        ("a.yaml", "seed: 2024-01-01\n", "a.yaml: seed: must be a whole number; got '2024-01-01'"),
        ("a.yaml", "epochs: 0x10\n", "a.yaml: epochs: must be a whole number; got '0x10'"),
        ("a.yaml", "epochs: !!int 0x10\n", "a.yaml is not valid YAML"),
        (
            "bomb.yaml",
            "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
            + "".join(f"{c}: &{c} [{', '.join([f'*{chr(ord(c) - 1)}'] * 9)}]\n" for c in "bcdefghi")
            + "lr: *i\n",
            "bomb.yaml is not valid YAML (line 2, column 8: an alias (*name): write the value out instead)",
        ),
        ("a.yaml", f"ranks: {list(range(500))}\n", "ranks: must be one value, as on the command line; got [0, 1, 2"),
    ],
)
def test_a_bad_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, text: str, message: str
) -> None:
    path = tmp_path / name if text in (None, FIFO) else write(tmp_path / name, text)
    if text == FIFO:
        os.mkfifo(path)
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(tucker_distillation.main(["--config", str(path), "--experiments_dir", str(tmp_path)]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and len(lines[0]) < 400, lines
    assert f"error: --config {tmp_path}/" in lines[0] and message in lines[0]
    assert not (tmp_path / "digits").exists() and not (tmp_path / "cifar100").exists()


SWEEP = """\
dataset: digits
teacher: ResNetBaby
student: ResNetBaby
epochs: 2
batch_size: 64
lr: 0.05            # defines the runs: an axis of one value
threads: 1          # speed: given to every run as after '--'
grid:
  distillation: [featuremap, kd]
  beta: [50, 125]
  ranks: ["BATCH_SIZE,8,8,8"]
"""


def test_the_grid_section_plans_the_runs_of_grid_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_file = write(tmp_path / "sweep.yaml", SWEEP)
    experiments = ["--experiments_dir", str(tmp_path / "E"), "--runs", "2"]
    by_file = plan(["--config", str(config_file), *experiments])
    by_flags = plan(
        [
            *SMALL,
            *experiments,
            "--distillations",
            "featuremap",
            "kd",
            "--grid",
            "beta=50,125",
            "--ranks_list",
            "BATCH_SIZE,8,8,8",
            "--",
            "--lr",
            "0.05",
            "--threads",
            "1",
        ]
    )
    assert [run.name for run in by_file] == [run.name for run in by_flags] and len(by_file) == 8
    assert [run.config for run in by_file] == [run.config for run in by_flags]
    assert runner.main(["--config", str(config_file), *experiments, "--scheduler", "local", "--dry_run"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0] == "| distillation | beta | seed | run |" and len(table) == 2 + 8

    # the command line wins: its own flags and --grid over the file's axes, '--' over its flags, --runs over its seed
    overridden = plan(
        [
            "--config",
            str(config_file),
            "--experiments_dir",
            str(tmp_path / "E"),
            "--epochs",
            "3",
            "--grid",
            "beta=250",
            "--",
            "--threads",
            "2",
            "--lr",
            "0.1",
        ]
    )
    assert {(run.config.epochs, run.config.beta, run.config.threads, run.config.lr) for run in overridden} == {
        (3, 250.0, 2, 0.1)
    }
    seeded = write(tmp_path / "seeded.yaml", SWEEP + "seed: 4\n")
    assert {run.config.seed for run in plan(["--config", str(seeded), "--experiments_dir", str(tmp_path)])} == {4}
    assert {
        run.config.seed for run in plan(["--config", str(seeded), "--experiments_dir", str(tmp_path), "--runs", "1"])
    } == {0}


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid: [beta]\n", "sweep.yaml: grid: must be a mapping of flags to lists of values"),
        ("grid:\n  beta: 50\n", "sweep.yaml: grid: beta: must be a list of values, e.g. [50, 125]; got 50"),
        ("grid:\n  beta: [50, x]\n", "sweep.yaml: grid: beta: must be a number; got 'x'"),
        ("grid:\n  device: [cpu]\n", "sweep.yaml: grid: device: not a flag that defines a run"),
        ("grid:\n  pair: [resnet56]\n", "sweep.yaml: grid: pair: each value is TEACHER-STUDENT"),
        ("beta: 50\ngrid:\n  beta: [125]\n", "sweep.yaml: beta is both a flag and a grid: axis; give it once"),
        ("experiment_name: mine\n", "sweep.yaml: experiment_name: runner.py names every run"),
    ],
)
def test_a_bad_sweep_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    config_file = write(tmp_path / "sweep.yaml", text)
    assert runner.main(["--config", str(config_file), "--experiments_dir", str(tmp_path), "--dry_run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner.py: error: --config ") and message in lines[0], lines


@pytest.mark.parametrize(
    "text, values",
    [
        ("epochs: 010\nbatch_size: 0100\nseed: 017\n", {"epochs": 10, "batch_size": 100, "seed": 17}),
        ("lr: 1e-3\nbeta: .5\namp: off\n", {"lr": 0.001, "beta": 0.5, "amp": "off"}),
    ],
    ids=["leading zeros are decimal", "numbers and texts"],
)
def test_a_file_reads_values_as_the_command_line_does(tmp_path: Path, text: str, values: dict) -> None:
    """YAML 1.1 reads 010 as octal 8; the command line, and so the file, reads 10."""
    config = parse_config(["--config", str(write(tmp_path / "a.yaml", text))])
    assert {name: getattr(config, name) for name in values} == values
    assert config == parse_config([token for name, value in values.items() for token in (f"--{name}", str(value))])
