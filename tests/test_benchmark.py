"""The field's baselines in training and the benchmark grid: every method end to end on the
benchmark's pairs (on digits), a resumed crd run's memory bank, and ``runner.py --benchmark``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, patience, run_training
from toolbox.config import parse_config
from toolbox.config.choices import METHODS, SAME_ARCH_PAIRS
from toolbox.models import build_model
from toolbox.rundir import experiment_name
from toolbox.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")]
RANKS = "BATCH_SIZE,x0.5,x1,x1"  # fits every map
SMALL = ["--epochs", "1", "--batch_size", "16", "--max_batches", "2", "--eval_batch_size", "512", "--init_epochs", "1"]
ONE_PAIR = {
    **dict.fromkeys(("kd", "dkd", "dist", "sp", "pkt", "rkd"), PAIRS[0]),
    **dict.fromkeys(("cc", "nst", "kdsvd", "ofd", "reviewkd", "ab", "ft"), PAIRS[1]),
    "fsp": PAIRS[0],
}
"""Methods trained on one pair only, to keep the test quick: those that read logits or batch
relations only on the first; those with modules or maps of pair-dependent sizes on the
cross-architecture one (connectors, fusions of other sizes), but FSP, which needs the same widths
in both networks. The others train on both."""
TRAINED = [
    (teacher, student, method)
    for teacher, student in PAIRS
    for method in METHODS
    if ONE_PAIR.get(method, (teacher, student)) == (teacher, student)
]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained teachers, saved as RepDistiller saves its ckpt_epoch_240.pth (weights under "model")."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for arch in ("resnet32x4", "vgg13", "resnet8"):
        torch.manual_seed(0)
        paths[arch] = folder / f"{arch}.pth"
        torch.save({"model": build_model(arch, 10).state_dict(), "epoch": 240}, paths[arch])
    return paths


@pytest.fixture(scope="module")
def tiny_grid(teachers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The benchmark grid in miniature on digits, one experiments folder: both pairs x every method
    (but ``ONE_PAIR``'s; one seed; the teachers' own plain runs too), each run one epoch of 2 batches
    (and one initialisation epoch where a method has one). Returns the
    folder and each (pair, method)'s run folder and metrics."""
    root = tmp_path_factory.mktemp("tiny-grid")
    runs = {}

    def train(key: tuple[str, str], *flags: str) -> None:
        runs[key] = (root / experiment_name(parse_config([*TINY, *flags, *SMALL])), run_training(root, *flags, *SMALL))

    for teacher, student in PAIRS:
        train((f"{teacher}-{student}", "teacher"), "--distillation", "none", "--student", teacher)
    for teacher, student, method in TRAINED:
        train(
            (f"{teacher}-{student}", method),
            "--distillation",
            method,
            "--teacher",
            teacher,
            "--student",
            student,
            "--ranks",
            RANKS,
            "--teacher_checkpoint",
            str(teachers[teacher]),
        )
    return root, runs


@pytest.mark.parametrize("teacher, student, method", TRAINED, ids=[f"{t}-{s}-{m}" for t, s, m in TRAINED])
def test_every_method_trains_on_the_benchmark_pairs(
    tiny_grid: tuple[Path, dict], teacher: str, student: str, method: str
) -> None:
    run, metrics = tiny_grid[1][(f"{teacher}-{student}", method)]
    assert {"config.json", "last.pt", f"{student}.pth", "Loss.png", "Accuracy.png", "metrics.json"} <= {
        p.name for p in run.iterdir()
    }
    # every method's loss really ran: AB's and FSP's in their initialisation phase alone
    soft = [record["train_soft_loss"] for record in metrics.get("phase_history", [])] + metrics["train_soft_loss"]
    assert len(metrics["train_soft_loss"]) == 1 and len(soft) == 1 + (method in ("ab", "ft", "fsp"))
    assert (soft[0] == 0) == (method == "none") and (soft[-1] == 0) == (method in ("none", "ab", "fsp"))


def test_the_aggregator_renders_the_crd_layout_table(tiny_grid: tuple[Path, dict], tmp_path: Path) -> None:
    from tests.test_notebooks import AGGREGATOR, execute, outputs

    root, _ = tiny_grid
    notebook = execute(
        AGGREGATOR, tmp_path / "out.ipynb", EXPERIMENTS_DIR=str(root), SUMMARY_DIR=str(tmp_path), DATASET="digits"
    )
    text = "".join(output.get("text", "") for output in outputs(notebook))
    table = (tmp_path / "benchmark_last.md").read_text()
    assert "benchmark_last.md" in text and "digits, test accuracy of the last epoch" in table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert "\n".join(lines) in text  # the notebook shows what it wrote
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    # vgg13→vgg8 too: a published pair whose teacher has a plain run (shown as teachers finish first)
    assert header == ["method", "resnet32x4→resnet8x4", "vgg13→vgg8", "vgg13→MobileNetV2"]
    rows = [line.split("|")[1].strip() for line in lines[2:]]
    assert rows[:21] == [
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
        "dkd",
        "cc",
        "nst",
        "kdsvd",
        "ofd",
        "reviewkd",
        "dist",
        "featuremap",
    ]
    # then the Tucker variants, then every other method by name (noise's, and any method added since)
    assert rows[21:23] == ["tucker_x0.5", "recomp_teacher_x0.5"] and "noise_std1" in rows[23:]
    assert rows[23:] == sorted(rows[23:])
    cells = {row: (line.split("|")[2].strip(), line.split("|")[4].strip()) for row, line in zip(rows, lines[2:])}
    trained = {row: [pair == ONE_PAIR.get(row, pair) for pair in PAIRS] for row in rows}
    assert all([bool(cell) for cell in cells[row]] == trained[row] for row in rows)  # every run is a cell
    assert (tmp_path / "benchmark_best.md").exists()


def test_a_resumed_crd_run_has_the_memory_bank_of_an_uninterrupted_one(
    tmp_path: Path, teachers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [
        "--distillation",
        "crd",
        "--teacher",
        "resnet8",
        "--student",
        "resnet8",
        "--teacher_checkpoint",
        str(teachers["resnet8"]),
        "--epochs",
        "2",
        "--batch_size",
        "32",
        "--max_batches",
        "3",
        "--crd_negatives",
        "64",
    ]
    run_training(tmp_path / "whole", *flags)

    original_test = Trainer.test

    def killed_in_second_epoch(self: Trainer) -> dict:
        if self.epoch == 1:
            raise KeyboardInterrupt  # as if the process were killed before the second epoch ended
        return original_test(self)

    monkeypatch.setattr(Trainer, "test", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "resumed", *flags)
    monkeypatch.setattr(Trainer, "test", original_test)
    run_training(tmp_path / "resumed", *flags)

    name = experiment_name(parse_config(["--dataset", "digits", "--batch_size", "64", "--lr", "0.05", *flags]))
    whole, resumed = (
        torch.load(tmp_path / part / name / "last.pt", weights_only=True)["distiller"] for part in ("whole", "resumed")
    )
    assert {"memory_s", "memory_t", "z"} <= whole.keys()
    assert not torch.equal(
        whole["memory_s"],
        torch.load(tmp_path / "whole" / name / "last.pt", weights_only=True)["distiller"]["memory_s"].new_zeros(
            whole["memory_s"].shape
        ),
    )
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_the_benchmark_grid_is_one_runner_command() -> None:
    result = subprocess.run(
        [sys.executable, "runner.py", "--benchmark", "--dry_run", "--scheduler", "local"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=patience(300),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # 7 pairs x the distilled configurations (every method but noise; tucker_recomp with 3 targets) but fsp on
    # wrn_40_2-wrn_40_1 (widths differ) x 3 seeds, and the 6 students alone x 3
    configurations = len([name for name in METHODS if name not in ("none", "noise")]) + 2
    assert lines[0] == f"the grid: {(7 * configurations - 1) * 3 + 6 * 3} runs"
    assert "| wrn_40_2-wrn_40_1 | fsp |" not in result.stdout and "| wrn_40_2-wrn_16_2 | fsp | - | 0 |" in result.stdout
    assert lines[1] == "| pair | distillation | recomp_target | seed | run |"
    assert "| wrn_40_2-wrn_16_2 | kd | - | 0 | cifar100/wrn_40_2-wrn_16_2/kd/recipe=crd/seed0 |" in lines
    assert (
        "| resnet110-resnet32 | tucker_recomp | both | 2 | "
        "cifar100/resnet110-resnet32/tucker_recomp/both/B-x0.5-x1-x1/recipe=crd/seed2 |" in lines
    )
    assert "| resnet20 | none | - | 1 | cifar100/teacher/resnet20/recipe=crd/seed1 |" in lines
    teachers = sorted({teacher for teacher, _ in SAME_ARCH_PAIRS})
    for arch in teachers:  # each teacher is trained once, first, on the same recipe
        assert f"would submit cifar100/teacher/{arch}/recipe=crd/seed0" in result.stdout


def runner(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "runner.py", "--dry_run", "--scheduler", "local", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=patience(300),
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--benchmark", "--teacher", "resnet56"],
            "--teacher/--student and the pairs (of --benchmark or --grid pair=...) both set",
        ),
        (
            ["--grid", "pair=resnet56"],
            "argument --grid: pair: each value is TEACHER-STUDENT with both among ResNet112,",
        ),
        (["--grid", "pair=resnet56-resnet2O"], "got 'resnet56-resnet2O'"),
        (
            ["--grid", "pair=resnet32x4-vgg8", "--distillations", "kd", "at"],  # refused before anything is submitted
            "--distillation at needs the same number of stages in teacher and student; resnet32x4 has 3, vgg8 has 4",
        ),
    ],
)
def test_bad_pairs_are_one_line_errors(argv: list[str], message: str) -> None:
    result = runner(*argv)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_teachers_come_from_teacher_dir_in_the_downloads_layout(tmp_path: Path) -> None:
    archs = sorted({teacher for teacher, _ in SAME_ARCH_PAIRS})
    for arch in archs[1:]:
        (tmp_path / f"{arch}_vanilla").mkdir()
        (tmp_path / f"{arch}_vanilla" / "ckpt_epoch_240.pth").write_bytes(b"weights")
    missing = runner("--benchmark", "--teacher_dir", str(tmp_path))
    assert missing.returncode == 2
    assert (
        f"--teacher_dir {tmp_path} has no checkpoint for the teacher {archs[0]}: put it at "
        f"{tmp_path / f'{archs[0]}_vanilla' / 'ckpt_epoch_240.pth'} or {tmp_path / f'{archs[0]}.pth'}"
    ) in missing.stderr

    (tmp_path / f"{archs[0]}.pth").write_bytes(b"weights")
    given = runner("--benchmark", "--teacher_dir", str(tmp_path), "--runs", "1", "--scripts")
    assert given.returncode == 0, given.stderr
    assert "would submit cifar100/teacher/resnet56/recipe=crd/seed0" not in given.stdout  # nothing to train first
    assert f"--teacher_checkpoint {tmp_path / 'resnet56_vanilla' / 'ckpt_epoch_240.pth'}" in given.stdout
    assert f"--teacher_checkpoint {tmp_path / f'{archs[0]}.pth'}" in given.stdout


IMAGENET_GOLDEN = ROOT / "tests" / "golden" / "imagenet_grid.txt"


def test_the_imagenet_benchmark_is_one_command_on_torchvisions_teachers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import runner

    common = [
        "--benchmark",
        "imagenet",
        "--dry_run",
        "--scripts",
        "--scheduler",
        "local",
        "--experiments_dir",
        str(tmp_path / "exp"),
    ]
    assert runner.main(common) == 2
    assert capsys.readouterr().err == (
        "runner.py: error: --benchmark imagenet distils from torchvision's pretrained "
        "teachers: pass --teacher_dir DIR with DIR/resnet34.pth and DIR/resnet50.pth "
        "(docs/imagenet.md)\n"
    )
    for arch in ("resnet34", "resnet50"):  # torchvision's files, renamed: nothing reads them in a dry run
        (tmp_path / f"{arch}.pth").write_bytes(b"weights")
    assert runner.main([*common, "--teacher_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 2 pairs x 12 distilled configurations (tucker_recomp with 3 targets) x 1 seed, and the 2 students alone
    runs = 2 * 12 + 2
    assert out.splitlines()[0] == f"the grid: {runs} runs"
    names = sorted(line.split("|")[-2].strip() for line in out.splitlines()[3 : 3 + runs])
    if os.environ.get("UPDATE_GOLDEN"):
        IMAGENET_GOLDEN.write_text("\n".join(names) + "\n")
    assert names == IMAGENET_GOLDEN.read_text().splitlines()
    assert "would submit imagenet/teacher/resnet34" not in out and "imagenet/teacher/resnet50" not in out
    assert f"--teacher_checkpoint {tmp_path / 'resnet50.pth'}" in out and "--recipe imagenet" in out
