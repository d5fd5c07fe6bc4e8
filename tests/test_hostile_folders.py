"""Folders, files and links that are not what the project wrote: refused in one line, left as they are.

Training writes only in an empty folder or a run of its own; lock, state and temporary files are
never opened through a symbolic link; clean never takes a starting, damaged or foreign folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import STUDENT, TINY, age, patience, run_training
from tests.test_run_identity import PLAIN, SCRIPT, TINY_RUN, clean, finished_tiny_run, script
from toolbox.config import Config
from toolbox.errors import Interrupted, UsageError
from toolbox.rundir import RunDir, experiment_name, resolve
from toolbox.stop import StopFlag
from toolbox.sweep import exclusive
from toolbox.sweep.folders import CORRUPT, FAILED, RUNNING, folder_state
from toolbox.training import train
from toolbox.training.resume import check_stop
from toolbox.utils import atomic_write_json

ROOT = Path(SCRIPT).parent


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links as links) -> the SHA-256 of its content or its target."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(
            os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        ).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


def refused(result: subprocess.CompletedProcess, *named: str) -> None:
    """Exit status 2 and one line on stderr that names each of ``named``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert all(name in lines[0] for name in named), lines[0]


def test_a_folder_that_is_not_a_run_of_ours_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["Bert"]}))
    (hf / "Loss.png").write_bytes(b"their plot")
    (hf / "pytorch_model.bin").write_bytes(b"weights")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    before = snapshot(tmp_path)
    refused(
        script(*TINY_RUN, "--experiments_dir", str(tmp_path), "--experiment_name", "hf_model"), "hf_model/config.json"
    )
    refused(
        script(*TINY_RUN, "--experiments_dir", str(tmp_path), "--experiment_name", "notes"),
        "notes is not a run folder",
        "todo.txt",
    )
    assert snapshot(tmp_path) == before and not (hf / ".lock").exists()


def test_a_job_that_starts_while_runner_py_writes_its_job_json_is_ours(tmp_path: Path) -> None:
    """A local job may start before runner.py has renamed job.json into place: the temporary of that
    atomic write is runner.py's, not a sign of someone else's folder."""
    run = tmp_path / "r"
    run.mkdir()
    for name in ("run.job", "local.out", ".job.json.4242.tmp"):
        (run / name).write_text("")
    RunDir(run).check_ours("r")
    (run / ".notes.txt.4242.tmp").write_text("theirs")
    with pytest.raises(UsageError, match="not a run folder of this project"):
        RunDir(run).check_ours("r")


def test_a_config_json_alone_still_guards_the_flags(tmp_path: Path) -> None:
    config = resolve(
        Config(
            distillation="none",
            dataset="digits",
            student=STUDENT,
            experiments_dir=str(tmp_path),
            experiment_name="r",
            lr=0.1,
        )
    )
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
    before = snapshot(tmp_path)
    refused(
        script(*TINY_RUN, "--lr", "0.5", "--experiments_dir", str(tmp_path), "--experiment_name", "r"),
        "--lr 0.1 there, 0.5 here",
    )
    assert snapshot(tmp_path) == before


def test_a_damaged_config_json_is_refused_and_kept_byte_for_byte(tmp_path: Path) -> None:
    run = finished_tiny_run(tmp_path)
    (run / "metrics.json").unlink()
    (run / "config.json").write_text("{ not json")
    before = snapshot(tmp_path)
    refused(
        script(
            *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiments_dir", str(tmp_path), "--experiment_name", "r"
        ),
        "config.json is unreadable",
    )
    (run / "config.json").write_text(json.dumps({"config": {"epochs": 2}}))  # JSON, but not what a run writes
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="config.json is damaged"):
        run_training(tmp_path, *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiment_name", "r")
    assert snapshot(tmp_path) == before


def test_links_in_place_of_lock_and_temporary_files_are_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    experiments = tmp_path / "E"
    run = experiments / "r"
    run.mkdir(parents=True)
    (run / ".lock").symlink_to(outside)
    (experiments / ".runner.lock").symlink_to(outside)
    temporary = experiments / f".job.json.{os.getpid()}.tmp"
    temporary.symlink_to(outside)
    before = snapshot(tmp_path)
    refused(
        script(*TINY_RUN, "--experiments_dir", str(experiments), "--experiment_name", "r"), "r/.lock is a symbolic link"
    )
    with pytest.raises(UsageError, match="runner.lock is a symbolic link"):
        with exclusive(experiments):
            pass
    with pytest.raises(UsageError, match="is in the way"):
        atomic_write_json(experiments / "job.json", {})
    assert folder_state(RunDir(run), {}, "local").state == CORRUPT
    age(experiments)
    assert clean(experiments) == []
    assert snapshot(tmp_path) == before


def test_clean_during_a_start_up_keeps_the_run(tmp_path: Path) -> None:
    run = finished_tiny_run(tmp_path)
    (run / "metrics.json").unlink()
    age(run)
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
    starting = subprocess.Popen(
        [sys.executable, SCRIPT, *TINY, *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + patience(30)
        while RunDir(run).holder() is None:  # taken before torch loads
            assert starting.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert clean(tmp_path) == [] and (run / "last.pt").exists()
    finally:
        starting.terminate()
        starting.wait()
    assert clean(tmp_path) == []  # its files changed just now: it may be starting again
    age(run)
    assert clean(tmp_path) == [run]


def test_damaged_config_and_job_files_are_listed_as_corrupt_and_the_rest_goes_on(tmp_path: Path) -> None:
    no_method = finished_tiny_run(tmp_path, "a")
    saved = json.loads((no_method / "config.json").read_text())
    del saved["config"]["distillation"]
    (no_method / "config.json").write_text(json.dumps(saved))
    listed_job = finished_tiny_run(tmp_path, "b")
    (listed_job / "job.json").write_text(json.dumps({"run": "b", "job_id": ["1"], "scheduler": "local"}))
    crashed = finished_tiny_run(tmp_path, "c")
    for run in (no_method, listed_job, crashed):
        (run / "metrics.json").unlink()
    age(tmp_path)
    states = {run.name: folder_state(RunDir(run), {}, "local", resolve(Config())) for run in (no_method, listed_job)}
    assert (
        states["a"].state == CORRUPT
        and "config.json is damaged ('config' has no text 'distillation')" in states["a"].detail
    )
    assert states["b"].state == CORRUPT and "job.json is damaged ('job_id' is not a text)" in states["b"].detail
    before = snapshot(no_method), snapshot(listed_job)
    lines: list[str] = []
    import runner
    from toolbox.sweep.local import LocalScheduler

    assert runner.clean(tmp_path, LocalScheduler(1), confirm=lambda _: True, out=lines.append) == [crashed]
    assert any(line.startswith(f"kept {no_method}: corrupt:") for line in lines)
    assert (snapshot(no_method), snapshot(listed_job)) == before


def test_other_spellings_of_the_ranks_are_the_same_run(tmp_path: Path) -> None:
    flags = dict(distillation="tucker", experiments_dir=str(tmp_path), teacher_checkpoint=str(tmp_path / "t.pth"))
    base = resolve(Config(**flags, ranks="BATCH_SIZE,8,8,8"))
    for spelling in ("BATCH_SIZE,\uff18,8,8", "BATCH_SIZE, 8,8,8"):
        assert resolve(Config(**flags, ranks=spelling)).ranks == "BATCH_SIZE,8,8,8"
        assert experiment_name(Config(**flags, ranks=spelling)) == base.experiment_name
    run = RunDir(tmp_path / base.experiment_name)
    run.create()
    run.config.write_text(json.dumps({"config": dataclasses.asdict(base)}))
    run.metrics.write_text(json.dumps({"best_test_acc": 50.0}))
    assert train(Config(**flags, ranks="BATCH_SIZE,\uff18,8,8")) == {"best_test_acc": 50.0}
    older = {name: value for name, value in dataclasses.asdict(base).items() if name != "loss"}  # before --loss existed
    run.config.write_text(json.dumps({"config": older}))  # the run of --loss's default, l1
    assert train(Config(**flags, ranks="BATCH_SIZE,8,8,8")) == {"best_test_acc": 50.0}
    assert "--loss 'l1' there, 'l2' here" in str(
        pytest.raises(UsageError, train, Config(**flags, loss="l2", experiment_name=base.experiment_name)).value
    )
    unknowable = {
        name: value for name, value in dataclasses.asdict(base).items() if name != "beta"
    }  # the method's default
    run.config.write_text(json.dumps({"config": unknowable}))
    with pytest.raises(UsageError, match="--beta '<absent>' there") as error:  # named after its flags, not by hand
        train(Config(**flags, ranks="BATCH_SIZE,8,8,8"))
    assert "--experiment_name" not in str(error.value)


def test_a_stop_without_last_pt_says_so(tmp_path: Path) -> None:
    stop = StopFlag()
    stop.signal = 15
    with pytest.raises(Interrupted) as error:
        check_stop(stop, RunDir(tmp_path), "epoch 1", "epoch 0")
    assert "no epoch has been saved yet" in str(error.value) and "holds epoch" not in str(error.value)


def test_a_local_job_of_another_runner_that_is_starting_is_running(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.create()
    run.script.write_text("sleep 30 &\nwait $!\n")  # as run.job waits for its training (bash stays the process)
    job = subprocess.Popen(["bash", str(run.script)])
    try:
        deadline = time.monotonic() + patience(10)
        while b"bash" not in Path(f"/proc/{job.pid}/cmdline").read_bytes():  # until bash runs it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        run.job.write_text(json.dumps({"run": "r", "job_id": f"local-{job.pid}", "scheduler": "local"}))
        packed = RunDir(tmp_path / "r2")  # trained by the same job (runner.py --runs_per_gpu)
        packed.create()
        packed.job.write_text(
            json.dumps({"run": "r2", "job_id": f"local-{job.pid}", "scheduler": "local", "script": str(run.script)})
        )
        assert folder_state(run, {}, "local").state == folder_state(packed, {}, "local").state == RUNNING
    finally:
        job.kill()
        job.wait()
    assert folder_state(run, {}, "local").state == folder_state(packed, {}, "local").state == FAILED


def test_a_failed_start_up_leaves_no_folder_and_clean_takes_lock_only_folders(tmp_path: Path) -> None:
    experiments = tmp_path / "E"
    experiments.mkdir()
    result = script(*TINY_RUN, "--seed", "-1", "--experiments_dir", str(experiments), "--experiment_name", "a/b")
    assert result.returncode != 0 and list(experiments.iterdir()) == []
    left = experiments / "old" / "seed0"
    left.mkdir(parents=True)
    (left / ".lock").write_text("process 12 on node7\n")
    foreign = experiments / "theirs"
    foreign.mkdir()
    (foreign / ".lock").write_text("held by another program")
    age(experiments)
    assert clean(experiments) == [left] and not (experiments / "old").exists() and (foreign / ".lock").exists()


def test_a_fifo_or_folder_in_place_of_a_run_file_is_refused_at_once_and_left(tmp_path: Path) -> None:
    """Reading or opening a FIFO waits for its other end forever (deaf to SIGTERM during start-up)."""
    run = finished_tiny_run(tmp_path)
    for name in ("metrics.json", "config.json", "train.log", ".lock"):  # after metrics.json: a run to resume
        (run / name).rename(run / "kept")
        for make, kind in ((os.mkfifo, "a FIFO"), (os.mkdir, "a folder")):
            make(run / name)
            with pytest.raises(UsageError, match=f"{name} is not a regular file \\({kind}\\)"):
                run_training(tmp_path, *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiment_name", "r")
            assert (run / name).exists() and not (run / name).is_file()
            (run / name).rmdir() if make is os.mkdir else (run / name).unlink()
        if name != "metrics.json":
            (run / "kept").rename(run / name)
        (run / "kept").unlink(missing_ok=True)
    (run / "Loss.png").unlink()
    (run / "Loss.png").mkdir()  # atomic writes rename onto their file, which a folder refuses
    with pytest.raises(UsageError, match="Loss.png is not a regular file \\(a folder\\)"):
        atomic_write_json(run / "Loss.png", {})
    assert (run / "Loss.png").is_dir()


def test_stale_temporaries_are_removed_but_a_folder_of_such_a_name_is_left(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.4242.tmp").write_bytes(b"torn")
    (tmp_path / ".metrics.json.4243.tmp").symlink_to(tmp_path / "elsewhere")
    (tmp_path / ".Loss.png.4244.tmp").mkdir()
    (tmp_path / ".Loss.png.4244.tmp" / "theirs").write_text("keep")
    RunDir(tmp_path).remove_stale_temporaries()
    assert snapshot(tmp_path) == {".Loss.png.4244.tmp/theirs": hashlib.sha256(b"keep").hexdigest()}


def test_a_last_pt_saved_beyond_its_epochs_end_is_refused_and_kept(tmp_path: Path) -> None:
    """Resuming it would skip the rest of the epoch and report the saved sums as the epoch's."""
    run = finished_tiny_run(tmp_path)  # --max_batches 1: one step an epoch
    (run / "metrics.json").unlink()
    state = torch.load(run / "last.pt", weights_only=True)
    state["history"] = {key: values[:1] for key, values in state["history"].items()}
    state["position"] = {"batch": 5, "count": 320, "hard_sum": 700.0, "soft_sum": 0.0, "correct": 30.0}
    torch.save(state, run / "last.pt")
    damaged = (run / "last.pt").read_bytes()
    with pytest.raises(UsageError, match="last.pt does not fit this run: it holds batch 5 of an epoch of 1 steps"):
        run_training(tmp_path, *PLAIN, "--epochs", "2", "--max_batches", "1", "--experiment_name", "r")
    assert (run / "last.pt").read_bytes() == damaged and not (run / "metrics.json").exists()


def test_a_run_killed_while_writing_its_first_config_json_starts_on_rerun(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text("process 4242 on node7\n")
    (run / ".config.json.4242.tmp").write_text('{"config": {"expe')  # kill -9 within the write
    run_training(tmp_path, *TINY_RUN, "--experiment_name", "r")
    assert (run / "metrics.json").is_file() and not (run / ".config.json.4242.tmp").exists()
