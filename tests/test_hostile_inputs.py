"""Files and flags that are not what they should be: one line on stderr, the right exit status,
and every file left as it was."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import runner
import tucker_distillation
from tests.conftest import STUDENT, TINY, patience
from toolbox import rundir, utils
from toolbox.errors import UsageError
from toolbox.methods.rkd import rkd_angles, rkd_distances
from toolbox.models import build_model, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ["--distillation", "none", "--student", STUDENT, "--epochs", "1", "--max_batches", "1"]


def script(*args: str) -> subprocess.CompletedProcess:
    """The training script with the tiny settings; a timeout, so a read that blocks cannot hang the suite."""
    return subprocess.run(
        [sys.executable, str(ROOT / "tucker_distillation.py"), *TINY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=patience(120),
    )


def digests(folder: Path) -> dict[str, str]:
    """The content of every regular file under ``folder`` (not the lock, which names its last holder,
    nor train.log, which records the error)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in (".lock", "train.log")
    }


def one_line(result: subprocess.CompletedProcess | str) -> str:
    stderr = result if isinstance(result, str) else result.stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def finished_run(experiments: Path) -> Path:
    run = experiments / "r"
    result = script(*PLAIN, "--experiments_dir", str(experiments), "--experiment_name", "r")
    assert result.returncode == 0, result.stderr
    return run


# ---------------------------------------------------------------- checkpoints that are not files


@pytest.mark.parametrize("flag", ["--evaluate", "--teacher_checkpoint"])
def test_a_fifo_as_a_checkpoint_is_refused_at_once(tmp_path: Path, flag: str) -> None:
    fifo = tmp_path / "teacher.pth"
    os.mkfifo(fifo)
    method = ["--distillation", "kd", "--teacher", STUDENT] if flag == "--teacher_checkpoint" else []
    result = script(*PLAIN, *method, flag, str(fifo), "--experiments_dir", str(tmp_path / "e"))
    assert result.returncode == 2
    assert f"{flag} {fifo} is not a regular file (a FIFO)" in one_line(result)


def test_a_folder_as_last_pt_is_refused_and_kept(tmp_path: Path) -> None:
    run = finished_run(tmp_path)
    (run / "metrics.json").unlink()
    (run / "last.pt").unlink()
    (run / "last.pt").mkdir()
    before = digests(tmp_path)
    result = script(*PLAIN, "--experiments_dir", str(tmp_path), "--experiment_name", "r")
    assert result.returncode == 2 and "last.pt is not a regular file (a folder)" in one_line(result)
    assert digests(tmp_path) == before and (run / "last.pt").is_dir()


def test_a_symlink_to_a_checkpoint_is_read(tmp_path: Path) -> None:
    model = build_model(STUDENT, 10)
    torch.save({"weights": model.state_dict()}, tmp_path / "real.pth")
    (tmp_path / "link.pth").symlink_to(tmp_path / "real.pth")
    load_checkpoint(build_model(STUDENT, 10), tmp_path / "link.pth", "--evaluate")


def test_runner_names_a_teacher_that_is_not_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    os.mkfifo(tmp_path / f"{STUDENT}.pth")
    status = runner.main(
        [
            "--dataset",
            "digits",
            "--teacher",
            STUDENT,
            "--student",
            STUDENT,
            "--distillations",
            "kd",
            "--teacher_dir",
            str(tmp_path),
            "--experiments_dir",
            str(tmp_path / "e"),
            "--dry_run",
        ]
    )
    assert status == 2
    assert f"{tmp_path / f'{STUDENT}.pth'} is not a regular file" in one_line(capsys.readouterr().err)


def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (200 << 20))
    assert bomb.stat().st_size < 1 << 20
    started = time.perf_counter()
    with pytest.raises(UsageError, match="is not a torch checkpoint: its entries are compressed") as info:
        load_checkpoint(build_model(STUDENT, 10), bomb, "--evaluate")
    assert time.perf_counter() - started < 5 and str(info.value).startswith(f"--evaluate {bomb} ")


def test_a_refused_pickle_never_advises_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    torch.save({"weights": build_model(STUDENT, 10).state_dict(), "extra": zipfile.ZipInfo("x")}, path)
    result = script(*PLAIN, "--evaluate", str(path))
    line = one_line(result)
    assert result.returncode == 2 and "weights-only loading refused it" in line and "ZipInfo" in line
    assert "weights_only" not in line and "trust" not in line


# ---------------------------------------------------------------- damaged state and metrics


def damage_last(state: dict[str, Any], name: str) -> dict[str, Any]:
    damaged = dict(state)
    if name == "empty student":
        damaged["student"] = {}
    elif name == "string config":
        damaged["config"] = "lr=0.1"
    elif name == "no history":
        del damaged["history"]
    elif name == "history of strings":
        damaged["history"] = {key: ["x"] for key in state["history"]}
    elif name == "elapsed string":
        damaged["elapsed"] = "1s"
    elif name == "crd bank of another shape":
        damaged["distiller"] = {**state["distiller"], "memory_s": state["distiller"]["memory_s"][:10]}
    return damaged


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty student", "does not fit this run: its 'student' entry (Error(s) in loading state_dict"),
        ("string config", "is not a last.pt of this project: its 'config' entry is not a dict of flags"),
        ("no history", "is not a last.pt of this project: its 'history' entry is not a dict"),
        ("history of strings", "its history's 'train_hard_loss' is not a list of finite numbers"),
        ("elapsed string", "its 'elapsed' entry is not a number"),
        ("crd bank of another shape", "does not fit this run: its 'distiller' entry (Error(s) in loading state_dict"),
    ],
)
def test_a_damaged_last_pt_is_one_line_and_kept(tmp_path: Path, name: str, message: str) -> None:
    flags = [*PLAIN, "--epochs", "2", "--experiments_dir", str(tmp_path), "--experiment_name", "r"]
    if name.startswith("crd"):
        teacher = tmp_path / "t.pth"
        torch.save({"weights": build_model(STUDENT, 10).state_dict()}, teacher)
        flags += [
            "--distillation",
            "crd",
            "--teacher",
            STUDENT,
            "--teacher_checkpoint",
            str(teacher),
            "--crd_negatives",
            "64",
        ]
    run = tmp_path / "r"
    assert script(*flags).returncode == 0
    (run / "metrics.json").unlink()
    state = torch.load(run / "last.pt", weights_only=True)
    torch.save(damage_last(state, name), run / "last.pt")
    before = digests(tmp_path)
    result = script(*flags)
    assert result.returncode == 2 and message in one_line(result) and "last.pt" in one_line(result)
    assert digests(tmp_path) == before


def test_metrics_without_a_best_accuracy_is_one_line(tmp_path: Path) -> None:
    run = finished_run(tmp_path)
    (run / "metrics.json").write_text('{"best_test_acc": "high"}')
    before = digests(tmp_path)
    result = script(*PLAIN, "--experiments_dir", str(tmp_path), "--experiment_name", "r")
    assert result.returncode == 2 and "metrics.json has no numeric 'best_test_acc'" in one_line(result)
    assert digests(tmp_path) == before


# ---------------------------------------------------------------- flags out of range


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "-1"], "--seed must be from 0 to 2**32 - 1"),
        (["--seed", "4294967296"], "--seed must be from 0 to 2**32 - 1"),
        (["--device", "meta"], "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'meta'"),
        (
            [
                "--distillation",
                "crd",
                "--teacher",
                STUDENT,
                "--teacher_checkpoint",
                "TEACHER",
                "--crd_negatives",
                "100000000",
            ],
            "--crd_negatives must be at most 16384 on this training set of 1438 samples",
        ),
    ],
)
def test_flags_out_of_range_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    torch.save({"weights": build_model(STUDENT, 10).state_dict()}, tmp_path / "t.pth")
    flags = [str(tmp_path / "t.pth") if f == "TEACHER" else f for f in flags]
    result = script(*PLAIN, *flags, "--experiments_dir", str(tmp_path / "e"))
    assert result.returncode == 2 and message in one_line(result)


@pytest.mark.parametrize("flag", ["--evaluate", "--teacher_checkpoint"])
def test_an_empty_checkpoint_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str) -> None:
    """An empty --evaluate read as none would train a run instead of evaluating."""
    with pytest.raises(SystemExit) as exit_info:
        tucker_distillation.main([*TINY, *PLAIN, "--experiments_dir", str(tmp_path), flag, ""])
    assert exit_info.value.code == 2 and not any(tmp_path.iterdir())
    assert f"{flag} needs the path of a checkpoint file; got ''" in one_line(capsys.readouterr().err)


def test_runner_refuses_a_seed_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = runner.main(
        [
            "--dataset",
            "digits",
            "--teacher",
            STUDENT,
            "--student",
            STUDENT,
            "--distillations",
            "kd",
            "--grid",
            "seed=-1",
            "--experiments_dir",
            str(tmp_path),
            "--dry_run",
        ]
    )
    assert status == 2 and "--seed must be from 0 to 2**32 - 1" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------- read-only folders, failed writes


def main(tmp_path: Path, *flags: str) -> int:
    return tucker_distillation.main(
        [*TINY, *PLAIN, "--experiments_dir", str(tmp_path), "--experiment_name", "r", *flags]
    )


def refuse_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run folder as a read-only mount shows it (tests run as root, where chmod restricts nothing):
    the lock file opens for reading only."""

    def read_only_open(path: Path, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return opened(path, flags)

    opened = rundir.open_nofollow
    monkeypatch.setattr(rundir, "open_nofollow", read_only_open)


def test_a_finished_run_in_a_read_only_folder_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    finished_run(tmp_path)
    before = digests(tmp_path)
    refuse_writing(monkeypatch)
    assert main(tmp_path) == 0 and "has finished already" in capsys.readouterr().out
    assert digests(tmp_path) == before


def test_an_unfinished_run_in_a_read_only_folder_exits_74(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = finished_run(tmp_path)
    (run / "metrics.json").unlink()
    before = digests(tmp_path)
    refuse_writing(monkeypatch)
    assert main(tmp_path, "--epochs", "2") == 74
    assert f"the run folder {run} is read-only / permission denied" in one_line(capsys.readouterr().err)
    assert digests(tmp_path) == before


def test_a_run_folder_that_a_read_only_disk_refuses_exits_74(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def read_only_mkdir(path: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(rundir.Path, "mkdir", read_only_mkdir)
    assert main(tmp_path / "e") == 74
    assert one_line(capsys.readouterr().err) == (
        f"error: cannot create the run folder {tmp_path / 'e' / 'r'}: Read-only "
        "file system; make --experiments_dir writable (or free space), then rerun"
    )


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64 vs 0"),
    ],
)
def test_a_failed_write_names_its_target_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, failure: Exception
) -> None:
    def full_disk(obj: Any, path: Any) -> None:
        Path(path).write_bytes(b"part")
        raise failure

    monkeypatch.setattr(utils.torch, "save", full_disk)
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))  # the disk is full
    assert main(tmp_path) == 74
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {tmp_path / 'r'}/") and ".tmp" not in line and "No space left on device" in line
    assert "unexpected pos" not in line and not list((tmp_path / "r").glob(".*.tmp"))


def test_config_json_that_is_a_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "r" / "config.json").mkdir(parents=True)
    before = digests(tmp_path)
    assert main(tmp_path) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {tmp_path / 'r' / 'config.json'} is not a regular file (a folder)")
    assert ".tmp" not in line
    assert digests(tmp_path) == before


def test_a_read_only_data_folder_is_not_called_a_run_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from toolbox.training import prepare  # where data_set looks load_dataset up

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), "data/cifar-100-python/.verified")

    monkeypatch.setattr(prepare, "load_dataset", read_only)
    assert main(tmp_path) == 74
    line = one_line(capsys.readouterr().err)
    assert "data/cifar-100-python/.verified: Read-only file system, while preparing --dataset digits" in line
    assert "resumes" not in line


# ---------------------------------------------------------------- rkd on degenerate batches


@pytest.mark.parametrize("batch", ["one sample", "identical samples"])
def test_rkd_is_finite_on_degenerate_batches(batch: str) -> None:
    student = torch.randn(1, 16) if batch == "one sample" else torch.ones(4, 16)
    student.requires_grad_(True)
    teacher = torch.randn(len(student), 32)
    loss = torch.nn.functional.smooth_l1_loss(
        rkd_distances(student), rkd_distances(teacher)
    ) + torch.nn.functional.smooth_l1_loss(rkd_angles(student), rkd_angles(teacher))
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(student.grad).all())


def test_rkd_trains_through_a_one_sample_last_batch(tmp_path: Path) -> None:
    teacher = tmp_path / "t.pth"
    torch.save({"weights": build_model(STUDENT, 10).state_dict()}, teacher)
    assert 1438 % 479 == 1  # digits' training set: the epoch's last batch holds one sample
    result = script(
        "--distillation",
        "rkd",
        "--teacher",
        STUDENT,
        "--student",
        STUDENT,
        "--teacher_checkpoint",
        str(teacher),
        "--epochs",
        "1",
        "--batch_size",
        "479",
        "--experiments_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr


def test_reviewkd_refuses_a_one_sample_last_batch_before_training(tmp_path: Path) -> None:
    """ReviewKD's fusion of the pooled features normalises over the batch at a 1x1 map, which one sample
    cannot (mdistiller fails there too): refused in one line before any epoch, no folder left."""
    teacher = tmp_path / "t.pth"
    torch.save({"weights": build_model(STUDENT, 10).state_dict()}, teacher)
    flags = ["--distillation", "reviewkd", "--teacher", STUDENT, "--student", STUDENT, "--teacher_checkpoint"]
    result = script(
        *flags, str(teacher), "--epochs", "1", "--batch_size", "479", "--experiments_dir", str(tmp_path / "e")
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--distillation reviewkd trains on batches of at least 2 samples" in result.stderr
    assert "leaves 1 in the epoch's last batch of 1438 training images" in result.stderr
    assert not (tmp_path / "e").exists()
