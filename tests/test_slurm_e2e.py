"""runner.py against a real single-node SLURM cluster that this module starts (util.sh slurm-up)
and stops again if it was not already up: a tiny digits grid goes through sbatch, runs, and is
not submitted twice; a job cancelled mid-run is resubmitted by the next runner.py and resumes
from its last.pt; a job warned with USR1 (as before its time limit) requeues itself and resumes.

Skipped, with the reason, only where this machine cannot run SLURM (not root, no way to install
it); with CI=true it fails instead. About two and a half minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from tests.conftest import patience
from toolbox.models import build_model
from toolbox.sweep.slurm import SlurmScheduler

REPO = Path(__file__).resolve().parent.parent
SMALL = "epochs=2,batch_size=64,max_batches=3"  # the grid's flags that differ from their defaults, as named
TEACHER = "digits/teacher/ResNetBaby/epochs=8,batch_size=64,lr=0.05,max_batches=3/seed0"  # digits' teacher recipe
PAIR = "digits/ResNetBaby-ResNetBaby"
# Tiny jobs: 1 CPU and 1 GB each, so that two run at once on 2 cores.
JOBS = ["--gpus", "0", "--cpus", "1", "--mem", "1G", "--time", "00:10:00"]
TINY = ["--dataset", "digits", "--teacher", "ResNetBaby", "--student", "ResNetBaby"]
TRAINING = ["--", "--threads", "1", "--device", "cpu"]


def unable() -> str:
    """Why this machine cannot run the test, or ''."""
    if os.geteuid() != 0:
        return "starting SLURM needs root"
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        return "SLURM is not installed and there is no apt-get to install it"
    return ""


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SLURM end-to-end test, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmScheduler]:
    if unable():
        skip_or_fail(unable())
    was_up = shutil.which("scontrol") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0
    up = subprocess.run([str(REPO / "util.sh"), "slurm-up"], capture_output=True, text=True, timeout=patience(900))
    if up.returncode != 0:
        skip_or_fail(f"util.sh slurm-up failed: {up.stderr.strip()[-500:]}")
    yield SlurmScheduler("root")
    if not was_up:
        subprocess.run([str(REPO / "util.sh"), "slurm-down"], capture_output=True, timeout=patience(120))


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests: the second reuses the first one's teacher (or trains it, run alone)."""
    return tmp_path_factory.mktemp("slurm-e2e") / "experiments"


def runner(experiments: Path, *flags: str) -> str:
    """python runner.py ... as a user types it; its output (it must succeed)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "runner.py"), "--experiments_dir", str(experiments), *JOBS, *flags],
        capture_output=True,
        text=True,
        timeout=patience(120),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def job_id(run: Path) -> str:
    return json.loads((run / "job.json").read_text())["job_id"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 150) -> None:
    deadline = time.monotonic() + patience(timeout)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_for_jobs(slurm: SlurmScheduler, ids: list[str], timeout: float = 150) -> None:
    wait_until(lambda: not set(ids) & set(slurm.live_jobs()), f"jobs {ids} to end", timeout)


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def log(run: Path, job: str) -> str:
    return (run / f"slurm-{job}.out").read_text()


def test_grid_runs_through_sbatch_and_is_not_submitted_twice(slurm: SlurmScheduler, experiments: Path) -> None:
    grid = [
        *TINY,
        "--epochs",
        "2",
        "--batch_size",
        "64",
        "--distillations",
        "featuremap",
        "tucker",
        "--ranks_list",
        "BATCH_SIZE,8,8,8",
        "--runs",
        "1",
        *TRAINING,
        "--max_batches",
        "3",
    ]
    runs = [
        experiments / name
        for name in (TEACHER, f"{PAIR}/featuremap/{SMALL}/seed0", f"{PAIR}/tucker/B-8-8-8/{SMALL}/seed0")
    ]

    out = runner(experiments, *grid)

    assert "submitted 3 (teachers: 1)" in out, out
    teacher_job = job_id(runs[0])
    for student in runs[1:]:
        assert json.loads((student / "job.json").read_text())["dependency"] == teacher_job
    wait_for_jobs(slurm, [job_id(run) for run in runs])
    for run, epochs in zip(runs, (8, 2, 2)):  # the teacher by digits' teacher recipe, the students by the grid
        assert (run / "metrics.json").exists(), log(run, job_id(run))
        assert metrics(run)["epochs"] == epochs and len(metrics(run)["test_acc"]) == epochs
    assert "submitted 0 (teachers: 0), skipped as finished 2" in runner(experiments, *grid)


def test_interrupted_jobs_resume_from_their_checkpoint(slurm: SlurmScheduler, experiments: Path) -> None:
    """seed0 is cancelled (scancel) once its first epoch is saved: the next runner.py resubmits it.
    seed1 gets USR1 as before its time limit: the job requeues itself. Both resume. Their teacher is
    a given file (an untrained one), so no teacher job runs first."""
    # Epochs of a few seconds, so that the interruptions land mid-run.
    long = "epochs=3,batch_size=8,max_batches=120"
    teacher = experiments.parent / "untrained-teacher.pth"
    torch.save({"weights": build_model("ResNetBaby", 10).state_dict()}, teacher)
    grid = [
        *TINY,
        "--study",
        "interrupted",
        "--epochs",
        "3",
        "--batch_size",
        "8",
        "--distillations",
        "featuremap",
        "--runs",
        "2",
        *TRAINING,
        "--max_batches",
        "120",
        "--teacher_checkpoint",
        str(teacher),
    ]
    cancelled, warned = (experiments / f"interrupted/{PAIR}/featuremap/{long}/seed{seed}" for seed in (0, 1))

    runner(experiments, *grid)
    first, second = job_id(cancelled), job_id(warned)
    wait_until(lambda: (cancelled / "last.pt").exists(), "the first epoch of the run to cancel", timeout=400)
    subprocess.run(["scancel", first], check=True)
    wait_until(lambda: (warned / "last.pt").exists(), "the first epoch of the run to warn")
    subprocess.run(["scancel", "--signal=USR1", "--batch", second], check=True)

    wait_for_jobs(slurm, [first])
    assert not (cancelled / "metrics.json").exists(), "the run finished before it was cancelled: make its epochs longer"
    assert (cancelled / "last.pt").exists()
    wait_until(lambda: "requeueing job" in log(warned, second), "the warned job to requeue itself")

    out = runner(experiments, *grid)

    assert "submitted 1 (teachers: 0)" in out and "skipped as queued or running 1" in out, out
    assert f"interrupted/{PAIR}/featuremap/{long}/seed0  job" in out and "(resumes from last.pt)" in out, out
    third = job_id(cancelled)
    assert third != first
    wait_for_jobs(slurm, [second, third])
    for run, job in ((cancelled, third), (warned, second)):
        assert (run / "metrics.json").exists(), log(run, job)
        assert metrics(run)["epochs"] == 3 and len(metrics(run)["test_acc"]) == 3
        assert re.search(r"resuming .* after epoch [12] of 3", log(run, job)), log(run, job)
    assert f"requeueing job {second} to resume" in log(warned, second)
    assert "submitted 0" in runner(experiments, *grid)


def test_two_process_run_stops_requeues_and_finishes(slurm: SlurmScheduler, experiments: Path) -> None:
    """runner.py --gpus_per_node 2 (--gpus 0: two CPU processes through gloo): srun starts both
    ranks, USR1 before the time limit stops both at the same step, the job requeues itself and the
    two ranks resume from rank 0's last.pt; the finished folder holds what a one-process run's does."""
    teacher = experiments.parent / "untrained-teacher-ddp.pth"
    torch.save({"weights": build_model("ResNetBaby", 10).state_dict()}, teacher)
    grid = [
        *TINY,
        "--study",
        "ranks",
        "--epochs",
        "2",
        "--batch_size",
        "8",
        "--distillations",
        "featuremap",
        "--runs",
        "1",
        "--gpus_per_node",
        "2",
        *TRAINING,
        "--max_batches",
        "120",
        "--teacher_checkpoint",
        str(teacher),
    ]
    run = experiments / f"ranks/{PAIR}/featuremap/epochs=2,batch_size=8,max_batches=120/seed0"

    assert "#SBATCH --ntasks-per-node=2" in runner(experiments, "--dry_run", "--scripts", *grid)
    runner(experiments, *grid)
    job = job_id(run)
    wait_until(lambda: (run / "last.pt").exists(), "the first epoch of the two-process run", timeout=400)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_until(lambda: "requeueing job" in log(run, job), "the two-process job to requeue itself")
    wait_for_jobs(slurm, [job])

    out = log(run, job)
    assert (run / "metrics.json").exists(), out
    assert metrics(run)["epochs"] == 2 and len(metrics(run)["test_acc"]) == 2
    # srun reports both ranks' 75 on one line ("tasks 0-1") or on two; neither was killed
    assert "on 2 processes (cpu)" in out and "Exited with exit code 75" in out and "Killed" not in out, out
    assert "Terminated" not in out, out
    assert re.search(r"resuming .* after epoch 1 of 2", out), out
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    events = [path.name for path in run.iterdir() if path.name.startswith("events.out.tfevents.")]
    assert events  # rank 0's TensorBoard curves, a file per session
    assert sorted(path.name for path in run.iterdir() if path.name not in events) == sorted(
        [
            ".lock",
            "Accuracy.png",
            "Loss.png",
            "ResNetBaby.pth",
            "config.json",
            "job.json",
            "last.pt",
            "metrics.json",
            "run.job",
            f"slurm-{job}.out",
            "train.log",
        ]
    )
    assert "submitted 0" in runner(experiments, *grid)


def test_runs_share_a_job_and_are_not_submitted_twice(slurm: SlurmScheduler, experiments: Path) -> None:
    """runner.py --runs_per_gpu 4: four students in one job (sharing the one CPU that SLURM gives a
    job asking for none, --cpus 0), each with its own folder, log and metrics; the next runner.py
    submits nothing."""
    teacher = experiments.parent / "untrained-teacher-pack.pth"
    torch.save({"weights": build_model("ResNetBaby", 10).state_dict()}, teacher)
    grid = [
        *TINY,
        "--study",
        "packed",
        "--epochs",
        "2",
        "--batch_size",
        "64",
        "--distillations",
        "featuremap",
        "kd",
        "--runs",
        "2",
        "--runs_per_gpu",
        "4",
        "--cpus",
        "0",
        *TRAINING,
        "--max_batches",
        "3",
        "--teacher_checkpoint",
        str(teacher),
    ]
    runs = [
        experiments / f"packed/{PAIR}/{method}/{SMALL}/seed{seed}" for method in ("featuremap", "kd") for seed in (0, 1)
    ]

    runner(experiments, *grid)
    job = job_id(runs[0])
    assert [job_id(run) for run in runs] == [job] * 4
    wait_for_jobs(slurm, [job], timeout=400)  # four trainings on one CPU, on a machine that may be busy
    for run in runs:
        assert (run / "metrics.json").exists(), (run / "job.out").read_text()
        assert metrics(run)["epochs"] == 2 and "best test accuracy" in (run / "job.out").read_text()
    assert "submitted 0" in runner(experiments, *grid)
