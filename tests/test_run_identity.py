"""One experiment per run folder, one process per run folder, nothing lost.

Run names spell out every defining flag that differs from its default; a finished run is returned
only for the flags it was trained with; a live process's lock keeps a second one out; divergence
never reaches a checkpoint; bad states of a folder are one-line errors with the right exit code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

import runner
from tests.conftest import STUDENT, TINY, age, patience, run_training
from toolbox.config import Config
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS
from toolbox.methods.noise import NoiseDistiller
from toolbox.rundir import RunDir, defining_flags, experiment_name, method_default, resolve, teacher_config
from toolbox.sweep.folders import CORRUPT, FAILED, RUNNING, folder_state
from toolbox.sweep.local import LocalScheduler

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tucker_distillation.py")
PLAIN = ["--distillation", "none", "--student", STUDENT]
TINY_RUN = [*PLAIN, "--epochs", "1", "--max_batches", "1"]

# A second value for every flag that can define an experiment (a different one from the default).
OTHER_VALUES: dict[str, Any] = {
    "teacher": "ResNet56",
    "beta": 7.0,
    "loss": "l2",
    "feature_layer": 1,
    "ranks": "BATCH_SIZE,16,8,8",
    "recomp_target": "both",
    "tucker_backend": "tensorly",
    "hooi_iters": 3,
    "tucker_core": "per_sample",
    "kd_temperature": 2.0,
    "noise_std": 0.5,
    "epochs": 12,
    "batch_size": 64,
    "lr": 0.01,
    "momentum": 0.5,
    "weight_decay": 1e-4,
    "seed": 3,
    "max_batches": 3,
    "sync_bn": True,
    "dataset": "cifar10",
    "student": "ResNet20",
    "recipe": "crd",
    "schedule": "step",
    "lr_milestones": "100,200",
    "lr_decay": 0.2,
    "teacher_epochs": 5,
    "teacher_batch_size": 32,
    "teacher_lr": 0.02,
    "ce_weight": 0.5,
    "dkd_alpha": 2.0,
    "dkd_beta": 4.0,
    "dkd_warmup": 5,
    "crd_dim": 64,
    "crd_negatives": 100,
    "crd_temperature": 0.1,
    "crd_momentum": 0.9,
    "rkd_distance": 10.0,
    "rkd_angle": 20.0,
    "dist_beta": 2.0,
    "dist_gamma": 0.5,
    "nkd_temperature": 2.0,
    "nkd_gamma": 2.5,
    "ttm_gamma": 0.3,
    "kd_weight": 1.0,
    "logit_standardization": True,
    "optimizer": "dot",
    "init_epochs": 5,
    "reviewkd_warmup": 5,
    "reviewkd_student_preact": True,
}
CASES = [(method, flag) for method in DISTILLERS for flag in defining_flags(method) if flag != "distillation"]


def script(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *TINY, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)


# ---------------------------------------------------------------- names and identity


def test_every_defining_flag_has_a_test_value() -> None:
    assert {flag for _, flag in CASES} <= set(OTHER_VALUES)


@pytest.mark.parametrize("method, flag", CASES, ids=lambda v: str(v))
def test_each_defining_flag_changes_the_run_name(method: str, flag: str) -> None:
    base = resolve(Config(distillation=method))
    other = resolve(Config(distillation=method, **{flag: OTHER_VALUES[flag]}))
    assert getattr(other, flag) != method_default(DISTILLERS[method], flag) or flag in ("teacher", "student", "dataset")
    assert experiment_name(other) != experiment_name(base)


@pytest.mark.parametrize("method, flag", CASES, ids=lambda v: str(v))
def test_a_finished_run_is_never_returned_for_other_flags(tmp_path: Path, method: str, flag: str) -> None:
    """The folder named explicitly, as a user (or an old runner) might: the check reads config.json."""
    base = resolve(Config(distillation=method, experiments_dir=str(tmp_path), experiment_name="run"))
    run = RunDir(tmp_path / "run")
    run.create()
    (run.config).write_text(json.dumps({"config": dataclasses.asdict(base)}))
    (run.metrics).write_text(json.dumps({"best_test_acc": 50.0}))
    other = dataclasses.replace(base, **{flag: OTHER_VALUES[flag]})
    if flag == "teacher":
        other = dataclasses.replace(other, teacher_checkpoint=base.teacher_checkpoint)
    from toolbox.training import train

    with pytest.raises(UsageError, match=f"holds a run with other flags \\(--{flag} .* there, .* here\\)"):
        train(other)
    assert train(base) == {"best_test_acc": 50.0}  # the same flags get their result


def test_default_runs_keep_their_names() -> None:
    assert experiment_name(Config()) == "cifar100/ResNet112-ResNet56/tucker/B-32-8-8/seed0"
    assert experiment_name(Config(distillation="none")) == "cifar100/teacher/ResNet56/seed0"
    assert (
        experiment_name(Config(distillation="tucker_recomp", recomp_target="both", ranks="BATCH_SIZE,8,8,8", seed=2))
        == "cifar100/ResNet112-ResNet56/tucker_recomp/both/B-8-8-8/seed2"
    )
    assert (
        experiment_name(Config(distillation="kd", beta=0.9, ce_weight=0.1)) == "cifar100/ResNet112-ResNet56/kd/seed0"
    )  # kd's defaults
    assert (
        experiment_name(Config(distillation="featuremap", lr=0.01, beta=50.0))
        == "cifar100/ResNet112-ResNet56/featuremap/beta=50,lr=0.01/seed0"
    )
    # flags a method does not read never name it
    assert (
        experiment_name(Config(distillation="featuremap", ranks="BATCH_SIZE,8,8,8", kd_temperature=2.0))
        == "cifar100/ResNet112-ResNet56/featuremap/seed0"
    )


def test_the_default_teacher_follows_the_teacher_recipe_not_the_students_training() -> None:
    """The student's data flags (--max_batches) reach its teacher; its training and method flags do not:
    the teacher recipe's do (the flags' defaults, digits' own, the CRD recipe's 240 epochs), with the
    --teacher_* flags on top."""
    student = Config(
        distillation="tucker", lr=0.05, epochs=12, beta=50.0, ranks="BATCH_SIZE,8,8,8", seed=4, max_batches=3
    )
    assert experiment_name(teacher_config(student)) == "cifar100/teacher/ResNet112/max_batches=3/seed0"
    overridden = dataclasses.replace(student, teacher_epochs=30, teacher_batch_size=128, teacher_lr=0.02)
    assert experiment_name(teacher_config(overridden)) == (
        "cifar100/teacher/ResNet112/epochs=30,batch_size=128,lr=0.02,max_batches=3/seed0"
    )
    digits = Config(distillation="kd", dataset="digits", teacher="ResNet20", student="ResNetBaby", epochs=3, lr=0.2)
    assert experiment_name(teacher_config(digits)) == "digits/teacher/ResNet20/epochs=8,batch_size=64,lr=0.05/seed0"
    crd = teacher_config(Config(distillation="kd", recipe="crd", teacher="resnet56", student="resnet20", epochs=3))
    assert (crd.epochs, crd.batch_size, crd.lr, crd.lr_milestones) == (240, 64, 0.05, "150,180,210")
    assert experiment_name(crd) == "cifar100/teacher/resnet56/recipe=crd/seed0"


def test_a_toy_method_with_its_own_flag_gets_its_own_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Toy(NoiseDistiller):
        """A method registered by this test alone; it reads noise_std and nothing else of noise's."""

        flags = ("noise_std",)
        tag_flags = ()
        defaults = {**NoiseDistiller.defaults, "beta": 7.0}

        @classmethod
        def run_tag(cls, config: Config) -> list[str]:
            return []

    monkeypatch.setitem(DISTILLERS, "toy", Toy)
    names = {experiment_name(Config(distillation="toy", noise_std=std)) for std in (0.5, 1.0, 2.0)}
    assert names == {
        "cifar100/ResNet112-ResNet56/toy/seed0",
        "cifar100/ResNet112-ResNet56/toy/noise_std=0.5/seed0",
        "cifar100/ResNet112-ResNet56/toy/noise_std=2/seed0",
    }
    assert resolve(Config(distillation="toy")).beta == 7.0
    assert (
        experiment_name(Config(distillation="toy", ranks="BATCH_SIZE,8,8,8")) == "cifar100/ResNet112-ResNet56/toy/seed0"
    )


def test_the_two_commands_of_the_report_give_two_runs(tmp_path: Path) -> None:
    first = script(*TINY_RUN, "--experiments_dir", str(tmp_path))
    second = script(*TINY_RUN, "--lr", "0.01", "--experiments_dir", str(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "has finished already" not in second.stdout
    metrics = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("metrics.json"))
    assert metrics == [
        "digits/teacher/ResNetBaby/epochs=1,batch_size=64,lr=0.01,max_batches=1/seed0/metrics.json",
        "digits/teacher/ResNetBaby/epochs=1,batch_size=64,lr=0.05,max_batches=1/seed0/metrics.json",
    ]
    explicit = script(
        *TINY_RUN,
        "--lr",
        "0.02",
        "--experiments_dir",
        str(tmp_path),
        "--experiment_name",
        "digits/teacher/ResNetBaby/epochs=1,batch_size=64,lr=0.05,max_batches=1/seed0",
    )
    assert explicit.returncode == 2 and len(explicit.stderr.strip().splitlines()) == 1
    assert "--lr 0.05 there, 0.02 here" in explicit.stderr


# ---------------------------------------------------------------- one process per folder


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + patience(timeout)
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)


def test_a_second_process_is_refused_and_kill_9_leaves_no_stale_lock(tmp_path: Path) -> None:
    flags = [
        *PLAIN,
        "--epochs",
        "50",
        "--max_batches",
        "2",
        "--experiments_dir",
        str(tmp_path),
        "--experiment_name",
        "r",
    ]
    first = subprocess.Popen(
        [sys.executable, SCRIPT, *TINY, *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(tmp_path / "r" / "last.pt", first)
        second = script(*flags)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
        assert f"is being trained by process {first.pid} on" in second.stderr
        state = folder_state(RunDir(tmp_path / "r"), {}, "local")
        assert state.state == RUNNING and f"process {first.pid}" in state.detail
    finally:
        first.kill()  # SIGKILL: no handler runs, the kernel drops the lock
        first.wait()
    assert folder_state(RunDir(tmp_path / "r"), {}, "local").state == FAILED
    resumed = script(*[f if f != "50" else "2" for f in flags])
    assert resumed.returncode == 2 and "--epochs 50 there, 2 here" in resumed.stderr  # and nothing was touched
    again = subprocess.Popen(
        [sys.executable, SCRIPT, *TINY, *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    first_line = again.stdout.readline()  # the lock was free: it resumes at once
    again.terminate()  # and stops cleanly after its current step
    assert again.wait(timeout=patience(120)) == 75 and first_line.startswith(f"resuming {tmp_path / 'r'} after epoch")


# ---------------------------------------------------------------- divergence


def test_a_nan_test_loss_is_divergence_and_nothing_non_finite_is_saved(tmp_path: Path) -> None:
    result = script(
        *PLAIN,
        "--lr",
        "1e6",
        "--max_batches",
        "1",
        "--epochs",
        "3",
        "--experiments_dir",
        str(tmp_path),
        "--experiment_name",
        "nan",
    )
    assert result.returncode == 1 and "diverged in epoch" in result.stderr, result.stderr
    run = tmp_path / "nan"
    assert not (run / "metrics.json").exists()
    for name in ("last.pt", f"{STUDENT}.pth"):
        if (run / name).exists():
            state = torch.load(run / name, weights_only=True)
            weights = state["student"] if name == "last.pt" else state["weights"]
            assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_a_nan_teacher_is_named(tmp_path: Path) -> None:
    from toolbox.models import build_model

    teacher = build_model(STUDENT, 10)
    with torch.no_grad():
        next(teacher.parameters()).fill_(float("nan"))
    torch.save({"weights": teacher.state_dict()}, tmp_path / "t.pth")
    with pytest.raises(UsageError, match="NaN or infinite weights"):
        run_training(
            tmp_path,
            "--distillation",
            "featuremap",
            "--teacher",
            STUDENT,
            "--student",
            STUDENT,
            "--teacher_checkpoint",
            str(tmp_path / "t.pth"),
            "--epochs",
            "1",
            "--max_batches",
            "1",
        )


# ---------------------------------------------------------------- damaged folders and bad places


def finished_tiny_run(tmp_path: Path, name: str = "r") -> Path:
    run_training(tmp_path, *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiment_name", name)
    return tmp_path / name


@pytest.mark.parametrize("content", [b"", b"junk" * 10, None], ids=["empty", "junk", "truncated"])
def test_a_corrupt_last_pt_is_a_one_line_error_that_keeps_it(tmp_path: Path, content: Optional[bytes]) -> None:
    run = finished_tiny_run(tmp_path)
    (run / "metrics.json").unlink()  # as if killed before the end
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2] if content is None else content)
    damaged = (run / "last.pt").read_bytes()
    result = script(
        *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiments_dir", str(tmp_path), "--experiment_name", "r"
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "last.pt is unreadable" in result.stderr and "move it away" in result.stderr
    assert (run / "last.pt").read_bytes() == damaged


def test_a_lost_config_json_is_rewritten_from_last_pt_and_still_guards_the_flags(tmp_path: Path) -> None:
    """Lost, not damaged: a damaged config.json is refused and kept (tests/test_hostile_folders.py)."""
    flags = [*PLAIN, "--epochs", "3", "--max_batches", "1", "--experiment_name", "r"]
    run_training(tmp_path, *flags[:-4], "--epochs", "1", "--max_batches", "1", "--experiment_name", "r")
    run = tmp_path / "r"
    (run / "metrics.json").unlink()
    (run / "config.json").unlink()
    # last.pt says epochs=1: resuming with other flags is refused even without config.json
    with pytest.raises(UsageError, match="--epochs 1 there, 3 here"):
        run_training(tmp_path, *flags)
    run_training(tmp_path, *flags[:-4], "--epochs", "1", "--max_batches", "1", "--experiment_name", "r")
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 1


def test_stale_temporary_files_are_removed_on_resume(tmp_path: Path) -> None:
    run = finished_tiny_run(tmp_path)
    (run / "metrics.json").unlink()
    stale = [run / ".last.pt.999999.tmp", run / f".{STUDENT}.pth.12.tmp"]
    foreign = run / ".notes.txt.1.tmp"
    for path in [*stale, foreign]:
        path.write_bytes(b"partial")
    run_training(tmp_path, *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiment_name", "r")
    assert not any(path.exists() for path in stale) and foreign.exists()


def test_a_teacher_with_other_content_is_refused_on_resume_the_same_content_elsewhere_is_accepted(
    tmp_path: Path,
) -> None:
    from toolbox.models import build_model

    torch.manual_seed(0)
    torch.save({"weights": build_model(STUDENT, 10).state_dict()}, tmp_path / "a.pth")
    torch.save({"weights": build_model(STUDENT, 10).state_dict()}, tmp_path / "b.pth")
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "a.pth").write_bytes((tmp_path / "a.pth").read_bytes())
    flags = [
        "--distillation",
        "featuremap",
        "--teacher",
        STUDENT,
        "--student",
        STUDENT,
        "--max_batches",
        "1",
        "--experiment_name",
        "r",
    ]
    run_training(tmp_path, *flags, "--epochs", "1", "--teacher_checkpoint", str(tmp_path / "a.pth"))
    (tmp_path / "r" / "metrics.json").unlink()
    with pytest.raises(UsageError, match="is not the teacher .* was trained with"):
        run_training(tmp_path, *flags, "--epochs", "1", "--teacher_checkpoint", str(tmp_path / "b.pth"))
    run_training(tmp_path, *flags, "--epochs", "1", "--teacher_checkpoint", str(tmp_path / "moved" / "a.pth"))
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["teacher_checkpoint"] == str(tmp_path / "moved" / "a.pth")


def test_a_failed_write_is_a_one_line_error_with_status_74_and_the_run_resumes(tmp_path: Path) -> None:
    def small_files() -> None:  # as a full disk does: a write fails part-way
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    flags = [
        *PLAIN,
        "--epochs",
        "2",
        "--max_batches",
        "1",
        "--experiments_dir",
        str(tmp_path),
        "--experiment_name",
        "r",
    ]
    failed = subprocess.run(
        [sys.executable, SCRIPT, *TINY, *flags], cwd=ROOT, capture_output=True, text=True, preexec_fn=small_files
    )
    assert failed.returncode == 74, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "rerun the same command" in failed.stderr
    assert not list((tmp_path / "r").glob(".*.tmp"))
    assert script(*flags).returncode == 0


@pytest.mark.parametrize("where", ["file", "long"])
def test_impossible_places_are_one_line_errors(tmp_path: Path, where: str) -> None:
    if where == "file":
        (tmp_path / "file").write_text("")
        flags = ["--experiments_dir", str(tmp_path / "file")]
        expected = "a file stands in its way"
    else:
        flags = ["--experiments_dir", str(tmp_path), "--experiment_name", "x" * 300]
        expected = "--experiment_name is too long"
    result = script(*TINY_RUN, *flags)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_a_stop_signal_during_start_up_exits_75(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, SCRIPT, *TINY, *TINY_RUN, "--experiments_dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # importing torch
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=patience(120))
    assert process.returncode == 75, stderr
    assert not list(tmp_path.rglob("metrics.json"))


# ---------------------------------------------------------------- status and clean


def test_status_lists_a_corrupt_metrics_json_instead_of_crashing(tmp_path: Path) -> None:
    run = finished_tiny_run(tmp_path)
    for damaged in ("{", '{"best_test_acc": NaN}', '{"best_test_acc": true}', '{"best_test_acc": "91"}'):
        (run / "metrics.json").write_text(damaged)
        state = folder_state(RunDir(run), {}, "local")
        assert state.state == CORRUPT and "metrics.json" in state.detail, damaged


def clean(experiments: Path) -> list[Path]:
    return runner.clean(experiments, LocalScheduler(1), confirm=lambda _: True, out=lambda _: None)


def test_clean_deletes_only_provable_runs_of_ours(tmp_path: Path) -> None:
    experiments = tmp_path / "E"
    (experiments / "notes").mkdir(parents=True)
    (experiments / "config.json").write_text("{}")  # the experiments folder itself looks unfinished
    (experiments / "notes" / "todo.txt").write_text("keep")
    hf = experiments / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["Bert"]}))
    (hf / "pytorch_model.bin").write_bytes(b"weights")
    crashed = finished_tiny_run(experiments, "mine/seed0")
    (crashed / "metrics.json").unlink()
    (crashed / "notes.txt").write_text("a user's file")  # foreign: the folder stays, with it
    other = finished_tiny_run(experiments, "mine/seed1")
    (other / "metrics.json").unlink()
    moved = finished_tiny_run(experiments, "elsewhere")
    (moved / "metrics.json").unlink()
    (experiments / "renamed").mkdir()
    os.rename(moved, experiments / "renamed" / "x")  # no longer where its name says
    age(experiments)
    assert clean(experiments) == [other]
    assert (experiments / "notes" / "todo.txt").exists() and (experiments / "config.json").exists()
    assert (hf / "pytorch_model.bin").exists() and (experiments / "renamed" / "x" / "last.pt").exists()
    assert sorted(p.name for p in crashed.iterdir()) == ["notes.txt"]
    assert not other.exists() and (experiments / "mine").exists()


def test_clean_never_deletes_a_run_a_live_process_trains(tmp_path: Path) -> None:
    run = finished_tiny_run(tmp_path, "busy")
    (run / "metrics.json").unlink()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; sys.path.insert(0, sys.argv[1]); from toolbox.rundir import RunDir\n"
                "with RunDir(sys.argv[2]).locked():\n    print('locked', flush=True); time.sleep(60)"
            ),
            str(ROOT),
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert clean(tmp_path) == [] and (run / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    age(run)
    assert clean(tmp_path) == [run] and not run.exists()
