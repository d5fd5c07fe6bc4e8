"""The noise-injection study: test_noise.py's sweep, and the generation module being trained."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import SMOKE_CHANGES, STUDENT, TEACHER, TINY, teacher_run

from tests.conftest import patience
from toolbox import analysis
from toolbox.config import parse_config
from toolbox.rundir import RunDir, resolve
from toolbox.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "test_noise.py"


def load_script() -> ModuleType:
    """The top-level script under another module name (this test module is ``test_noise`` too)."""
    spec = importlib.util.spec_from_file_location("noise_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


noise_study = load_script()


@pytest.fixture(scope="module")
def sweep(
    digits_teacher: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """Two noise levels trained by the script into a fresh experiments folder: the folder and the
    arguments used."""
    teacher_experiments, _ = digits_teacher
    experiments = tmp_path_factory.mktemp("noise-experiments")
    argv = [
        *TINY,
        "--teacher",
        TEACHER,
        "--student",
        STUDENT,
        "--epochs",
        "2",
        "--max_batches",
        "3",
        "--teacher_checkpoint",
        str(teacher_run(teacher_experiments) / f"{TEACHER}.pth"),
        "--experiments_dir",
        str(experiments),
        "--noise_stds",
        "0.5",
        "1",
    ]
    assert noise_study.main(argv) == 0
    return experiments, argv


def test_sweep_writes_one_finished_run_per_level(sweep: tuple[Path, list[str]]) -> None:
    experiments, _ = sweep
    for level in ("0.5", "1"):
        run = RunDir(experiments / f"digits/{TEACHER}-{STUDENT}/noise/std{level}/{SMOKE_CHANGES}/seed0")
        assert run.finished
        assert run.read_json(run.config)["config"]["noise_std"] == float(level)
    summary = analysis.summarize(analysis.load_runs(experiments))
    assert sorted(summary["method"]) == ["noise_std0.5", "noise_std1", "teacher"]  # the teacher they name, elsewhere


def test_generation_module_is_trained(sweep: tuple[Path, list[str]]) -> None:
    """Its weights after training differ from those it starts with (same seed, same build order),
    which they would not if it were left out of the optimiser."""
    experiments, argv = sweep
    config = resolve(noise_study.sweep_configs(argv)[0])
    fresh = Trainer(config, RunDir(experiments / config.experiment_name))
    trained = torch.load(experiments / config.experiment_name / "last.pt", map_location="cpu", weights_only=True)[
        "distiller"
    ]
    initial = fresh.distiller.state_dict()
    generator_keys = [key for key in initial if key.startswith("generator.")]
    assert len(generator_keys) == 4  # two convolutions, weights and biases
    for key in generator_keys:
        assert not torch.allclose(initial[key], trained[key]), key
    optimised = {id(p) for group in fresh.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in fresh.distiller.generator.parameters())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--noise_stds", "0.5", "0.5"], "repeats a level"),
        (["--noise_stds", "-1"], "must be zero or a positive number"),
        (["--distillation", "tucker"], "noise method only"),
        (["--noise_std", "2", "--noise_stds", "1", "3"], "not both"),
        (["--noise_stds", "1", "2", "--experiment_name", "mine"], "--experiment_name"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        noise_study.sweep_configs(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_levels_give_one_config_each() -> None:
    configs = noise_study.sweep_configs(["--noise_stds", "0.5", "2", "--dataset", "digits"])
    assert [(c.distillation, c.noise_std, c.dataset) for c in configs] == [
        ("noise", 0.5, "digits"),
        ("noise", 2.0, "digits"),
    ]
    assert [c.noise_std for c in noise_study.sweep_configs(["--noise_std", "3"])] == [3.0]


def test_help_names_noise_as_the_method() -> None:
    """The shared training parser's help says tucker is the default; this script trains noise alone."""
    shown = " ".join(noise_study.build_noise_parser().format_help().split())
    assert "only 'noise' here" in shown and "(default: tucker)" not in shown


@pytest.mark.parametrize("recipe", ["original", "crd", "imagenet"])
def test_flags_are_read_as_the_training_script_reads_them(recipe: str, tmp_path: Path) -> None:
    """The recipe decides the defaults (epochs, lr, schedule, ...), and a --config file's flags sit
    under the command line's, exactly as for tucker_distillation.py --distillation noise."""
    file = tmp_path / "noise.yaml"
    file.write_text("dataset: digits\nbeta: 7\nnoise_std: 2\n")
    argv = [
        "--recipe",
        recipe,
        "--teacher",
        "ResNet20",
        "--student",
        "ResNetBaby",
        "--config",
        str(file),
        "--beta",
        "9",
    ]
    (config,) = noise_study.sweep_configs(argv)
    assert config == parse_config(["--distillation", "noise", *argv])
    assert (config.dataset, config.beta, config.noise_std) == ("digits", 9.0, 2.0)


def test_command_line_reports_a_missing_teacher_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--experiments_dir", str(tmp_path), "--noise_stds", "0.5", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=patience(120),
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "teacher checkpoint" in result.stderr
