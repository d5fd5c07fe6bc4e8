"""End to end on digits: a teacher, every distillation variant, resume, finished runs, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import tucker_distillation
from tests.conftest import STUDENT, TEACHER, TINY, patience, run_training, teacher_run
from toolbox.config import parse_config
from toolbox.errors import DivergedError, UsageError
from toolbox.models import build_model
from toolbox.rundir import experiment_name, resolve
from toolbox.training import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.json", "metrics.json", "last.pt", f"{STUDENT}.pth", "Loss.png", "Accuracy.png"}
HISTORY = ("train_hard_loss", "train_soft_loss", "train_acc", "test_loss", "test_acc")


def teacher_flags(digits_teacher: tuple[Path, dict]) -> list[str]:
    checkpoint = teacher_run(digits_teacher[0]) / f"{TEACHER}.pth"
    return ["--teacher", TEACHER, "--student", STUDENT, "--teacher_checkpoint", str(checkpoint)]


def test_teacher_learns_digits(digits_teacher: tuple[Path, dict]) -> None:
    experiments, metrics = digits_teacher
    assert metrics["best_test_acc"] >= 90.0
    run = teacher_run(experiments)
    assert run == experiments / "digits/teacher" / TEACHER / "epochs=6,batch_size=64,lr=0.05/seed0"
    assert {"config.json", "metrics.json", f"{TEACHER}.pth", "Loss.png", "Accuracy.png"} <= {
        p.name for p in run.iterdir()
    }
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["distillation"] == "none" and saved["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize(
    "variant",
    [
        ["--distillation", "featuremap"],
        ["--distillation", "featuremap", "--loss", "l2"],
        ["--distillation", "tucker", "--ranks", "BATCH_SIZE,16,8,8"],
        ["--distillation", "tucker", "--tucker_backend", "tensorly"],
        ["--distillation", "tucker_recomp", "--recomp_target", "teacher"],
        ["--distillation", "tucker_recomp", "--recomp_target", "student"],
        ["--distillation", "tucker_recomp", "--recomp_target", "both", "--ranks", "BATCH_SIZE,8,8,8"],
        ["--distillation", "kd"],
        ["--distillation", "noise"],
    ],
    ids=lambda v: "-".join(a.strip("-") for a in v[1::2]),
)
def test_each_variant_writes_a_finished_run(
    tmp_path: Path, digits_teacher: tuple[Path, dict], variant: list[str]
) -> None:
    metrics = run_training(
        tmp_path,
        *variant,
        *teacher_flags(digits_teacher),
        "--epochs",
        "2",
        "--max_batches",
        "4",
        "--experiment_name",
        "run",
    )
    run = tmp_path / "run"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert all(len(saved[key]) == 2 for key in HISTORY)
    assert all(value > 0 for value in saved["train_soft_loss"])  # the distillation loss really ran
    assert 0 <= saved["best_test_acc"] <= 100 and saved["best_test_acc"] == max(saved["test_acc"])
    best = torch.load(run / f"{STUDENT}.pth", weights_only=True)
    build_model(STUDENT, 10).load_state_dict(best["weights"])
    saved_config = json.loads((run / "config.json").read_text())["config"]
    assert (saved_config["beta"], saved_config["ce_weight"]) == ((0.9, 0.1) if "kd" in variant else (125.0, 1.0))


def test_default_run_name_and_teacher_path(tmp_path: Path, digits_teacher: tuple[Path, dict]) -> None:
    run_training(
        tmp_path,
        "--distillation",
        "tucker_recomp",
        "--recomp_target",
        "both",
        "--ranks",
        "BATCH_SIZE,24,8,8",
        *teacher_flags(digits_teacher),
        "--epochs",
        "1",
        "--max_batches",
        "1",
        "--seed",
        "4",
    )
    changes = "epochs=1,batch_size=64,lr=0.05,max_batches=1"
    assert (tmp_path / f"digits/{TEACHER}-{STUDENT}/tucker_recomp/both/B-24-8-8/{changes}/seed4/metrics.json").exists()


def crashing_in_second_epoch(test: Callable[[Trainer], dict]) -> Callable[[Trainer], dict]:
    """``Trainer.test`` that stops the run in its second epoch, as if the process were killed mid-epoch."""

    def crash(self: Trainer) -> dict:
        if self.epoch == 1:
            raise KeyboardInterrupt
        return test(self)

    return crash


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ["--distillation", "none", "--student", STUDENT, "--epochs", "3", "--max_batches", "3"]
    uninterrupted = run_training(tmp_path / "a", *flags)

    original_test = Trainer.test
    monkeypatch.setattr(Trainer, "test", crashing_in_second_epoch(original_test))
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "b", *flags)
    run = tmp_path / "b" / experiment_name(parse_config([*TINY, *flags]))
    assert not (run / "metrics.json").exists()
    assert len(torch.load(run / "last.pt", weights_only=True)["history"]["test_acc"]) == 1

    monkeypatch.setattr(Trainer, "test", original_test)
    resumed = run_training(tmp_path / "b", *flags)
    assert len(resumed["test_acc"]) == 3
    for key in HISTORY:
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-4, abs=1e-6)

    # train.log holds what both sessions printed, the second appended to the first
    stamped = (run / "train.log").read_text().splitlines()
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  .*", line) for line in stamped)  # when, then what
    lines = [line.split("  ", 1)[1] for line in stamped]
    assert [line.split()[0] for line in lines] == ["training", "epoch", "error:", "resuming", "epoch", "epoch", "best"]
    assert lines[1].startswith("epoch 1/3 ") and lines[2] == "error: KeyboardInterrupt: "
    assert lines[3] == f"resuming {run} after epoch 1 of 3" and lines[5].startswith("epoch 3/3 ")


def test_a_resumed_student_keeps_the_teacher_it_started_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two students started from one teacher file (as if the default teacher had moved since: another
    teacher recipe), rerun without --teacher_checkpoint: the first resumes from the file its config.json
    records, as no default teacher exists; the second, once that file has moved to the default path (a
    folder read from elsewhere), from the default. A teacher given explicitly still wins, and one of other
    content is refused."""
    tiny = ["--epochs", "2", "--max_batches", "1"]
    run_training(tmp_path / "old", "--distillation", "none", "--student", STUDENT, *tiny)
    (old_teacher,) = (tmp_path / "old").rglob(f"{STUDENT}.pth")
    student = ["--distillation", "kd", "--teacher", STUDENT, "--student", STUDENT, *tiny]
    original_test = Trainer.test
    monkeypatch.setattr(Trainer, "test", crashing_in_second_epoch(original_test))
    for seed in ("1", "2"):
        with pytest.raises(KeyboardInterrupt):
            run_training(tmp_path / "runs", *student, "--seed", seed, "--teacher_checkpoint", str(old_teacher))
    monkeypatch.setattr(Trainer, "test", original_test)
    other = tmp_path / "other.pth"
    other.write_bytes(old_teacher.read_bytes() + b"\0")
    with pytest.raises(UsageError, match=f"--teacher_checkpoint {other} is not the teacher"):
        run_training(tmp_path / "runs", *student, "--seed", "1", "--teacher_checkpoint", str(other))
    assert len(run_training(tmp_path / "runs", *student, "--seed", "1")["test_acc"]) == 2  # the recorded one
    default = Path(
        resolve(parse_config([*TINY, "--experiments_dir", str(tmp_path / "runs"), *student])).teacher_checkpoint
    )
    default.parent.mkdir(parents=True)
    old_teacher.rename(default)
    assert len(run_training(tmp_path / "runs", *student, "--seed", "2")["test_acc"]) == 2  # the default, moved there
    configs = {path.parent.name: json.loads(path.read_text()) for path in (tmp_path / "runs").rglob("config.json")}
    assert configs["seed1"]["config"]["teacher_checkpoint"] == str(old_teacher)
    assert configs["seed2"]["config"]["teacher_checkpoint"] == str(default)


def test_finished_run_is_left_untouched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags = [
        "--distillation",
        "none",
        "--student",
        STUDENT,
        "--epochs",
        "1",
        "--max_batches",
        "1",
        "--experiment_name",
        "done",
    ]
    first = run_training(tmp_path, *flags)

    def files() -> dict:  # the lock file names the process that looked last: not a result
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "done").iterdir() if p.name != ".lock"}

    before = files()
    capsys.readouterr()
    assert run_training(tmp_path, *flags) == json.loads(json.dumps(first))
    assert "has finished already" in capsys.readouterr().out
    assert files() == before


def test_divergence_stops_and_keeps_the_last_good_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_step = Trainer.step

    def nan_in_second_epoch(
        self: Trainer, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *rest: float
    ):
        hard, soft, correct = original_step(self, images, labels, indices, *rest)
        return (hard * float("nan"), soft, correct) if self.epoch == 1 else (hard, soft, correct)

    monkeypatch.setattr(Trainer, "step", nan_in_second_epoch)
    with pytest.raises(DivergedError, match="diverged in epoch 2.*keeps the last good epoch \\(1\\)"):
        run_training(
            tmp_path,
            "--distillation",
            "none",
            "--student",
            STUDENT,
            "--epochs",
            "3",
            "--max_batches",
            "2",
            "--experiment_name",
            "nan",
        )
    state = torch.load(tmp_path / "nan" / "last.pt", weights_only=True)
    assert len(state["history"]["test_acc"]) == 1 and not (tmp_path / "nan" / "metrics.json").exists()


@pytest.mark.parametrize("stop", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "Ctrl-C"])
def test_signal_saves_and_exits_75_then_the_rerun_finishes(tmp_path: Path, stop: signal.Signals) -> None:
    command = [
        sys.executable,
        str(ROOT / "tucker_distillation.py"),
        *TINY,
        "--distillation",
        "none",
        "--student",
        STUDENT,
        "--epochs",
        "8",
        "--max_batches",
        "2",
        "--experiments_dir",
        str(tmp_path),
        "--experiment_name",
        "sig",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "sig" / "last.pt"
    deadline = time.monotonic() + patience(120)
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=patience(120))
    assert process.returncode == 75, stderr
    assert stderr.count("\n") == 1 and stop.name in stderr and "rerun the same command to resume" in stderr
    assert not (tmp_path / "sig" / "metrics.json").exists()
    epochs_done = len(torch.load(last, weights_only=True)["history"]["test_acc"])
    assert 1 <= epochs_done < 8

    other_flags = subprocess.run([*command, "--lr", "0.01"], cwd=ROOT, capture_output=True, text=True)
    assert other_flags.returncode == 2 and "other flags (--lr 0.05 there, 0.01 here)" in other_flags.stderr
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming {tmp_path / 'sig'} after epoch {epochs_done} of 8" in finished.stdout
    assert len(json.loads((tmp_path / "sig" / "metrics.json").read_text())["test_acc"]) == 8


# --- bad input: one line, a non-zero exit, nothing lost --------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs must be a positive integer; got 0"),
        (["--batch_size", "-5"], "--batch_size must be a positive integer"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--beta", "inf"], "--beta must be zero or a positive number; got inf"),
        (["--lr", "abc"], "argument --lr: invalid float value"),
        (["--experiment_name", "../escape"], "--experiment_name must be a relative path"),
        (["--experiment_name", "/tmp/abs"], "--experiment_name must be a relative path"),
        (["--experiment_name", "a b;rm -rf x"], "--experiment_name must be a relative path"),
        (["--ranks", "BATCH_SIZE,32,8"], "--ranks needs 4 comma-separated ranks"),
        (["--distillation", "magic"], "argument --distillation: invalid choice"),
        (["--device", "tpu"], "--device must be"),
    ],
)
def test_bad_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        status = tucker_distillation.main([*TINY, "--experiments_dir", str(tmp_path), "--distillation", "none", *flags])
        raise SystemExit(status)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.pt"))


def test_rank_above_the_channels_names_the_flag(tmp_path: Path, digits_teacher: tuple[Path, dict]) -> None:
    with pytest.raises(UsageError, match="--ranks: the channel rank 65 exceeds"):
        run_training(tmp_path, "--ranks", "BATCH_SIZE,65,8,8", *teacher_flags(digits_teacher), "--epochs", "1")


def test_missing_teacher_prints_the_command_that_trains_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = tucker_distillation.main(
        [*TINY, "--experiments_dir", str(tmp_path), "--teacher", "ResNet32", "--student", STUDENT]
    )
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    # digits' teacher recipe, not the student's training flags
    expected_path = tmp_path / "digits/teacher/ResNet32/epochs=8,batch_size=64,lr=0.05/seed0/ResNet32.pth"
    assert f"teacher checkpoint {expected_path} not found" in err
    assert (
        f"python tucker_distillation.py --distillation none --dataset digits --student ResNet32 --seed 0 "
        f"--epochs 8 --batch_size 64 --lr 0.05 --experiments_dir {tmp_path}"
    ) in err


def test_a_missing_teacher_is_reported_before_the_data_is_loaded(tmp_path: Path) -> None:
    """The defaults (CIFAR-100, a ResNet112 teacher) with neither the data nor the teacher: the
    error is the teacher's, and nothing was downloaded first."""
    data_dir = tmp_path / "data"
    with pytest.raises(UsageError, match="teacher checkpoint .*ResNet112.pth not found; train the teacher first"):
        train(parse_config(["--experiments_dir", str(tmp_path / "experiments"), "--data_dir", str(data_dir)]))
    assert not data_dir.exists()


@pytest.mark.parametrize("teacher, classes", [("ResNet56", 10), (TEACHER, 100)])  # wrong depth; wrong classes
def test_wrong_teacher_checkpoint_is_a_clear_error(tmp_path: Path, teacher: str, classes: int) -> None:
    checkpoint = tmp_path / "wrong.pth"
    torch.save({"weights": build_model(TEACHER, classes).state_dict()}, checkpoint)
    with pytest.raises(UsageError, match=f"--teacher_checkpoint .*wrong.pth does not fit {teacher} \\(10 classes\\)"):
        run_training(tmp_path, "--teacher", teacher, "--student", STUDENT, "--teacher_checkpoint", str(checkpoint))
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="cannot be read as a torch checkpoint"):
        run_training(tmp_path, "--teacher", TEACHER, "--student", STUDENT, "--teacher_checkpoint", str(checkpoint))


def test_a_second_ctrl_c_stops_at_once_and_the_run_resumes(tmp_path: Path) -> None:
    """The first Ctrl-C lets the step end and saves there; a second, during that step, stops the run at
    once: one line, exit 75, last.pt holding the last save, and the rerun finishes."""
    flags = [
        *TINY,
        "--distillation",
        "none",
        "--student",
        STUDENT,
        "--epochs",
        "2",
        "--max_batches",
        "4",
        "--log_every",
        "1",
        "--experiments_dir",
        str(tmp_path),
        "--experiment_name",
        "twice",
    ]
    entry = [sys.executable, str(ROOT / "tests" / "distributed_entry.py")]
    process = subprocess.Popen(
        [*entry, *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ENTRY_STEP_SECONDS": "8"},
    )
    assert "step 1/4" in next(line for line in process.stdout if "step 1/4" in line or "best" in line)
    time.sleep(2)  # step 2 has begun: it waits 8 s before it trains
    process.send_signal(signal.SIGINT)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=patience(300))
    assert process.returncode == 75 and stderr.count("\n") == 1, stderr
    assert "stopped at once by a second SIGINT" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "twice" / "metrics.json").exists()
    finished = subprocess.run(
        [sys.executable, str(ROOT / "tucker_distillation.py"), *flags], cwd=ROOT, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr
    assert len(json.loads((tmp_path / "twice" / "metrics.json").read_text())["test_acc"]) == 2
