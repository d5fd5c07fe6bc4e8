"""Shared fixtures: tiny real runs on the offline digits data set."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # test processes side by side (pytest.ini): a core's thread each,
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch reads it; threads beyond the cores wait on each other
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from toolbox.config import parse_config
from toolbox.rundir import experiment_name
from toolbox.stop import StopFlag
from toolbox.sweep.folders import QUIET_S
from toolbox.training import train

PATIENCE = 10
"""How much longer than on quiet cores a test waits for a process or a file before it gives up: a
hard limit only stops a test that hangs, and on a machine at load 12 the same work can take ten
times as long. Every wait in the suite goes through ``patience``."""


def patience(seconds: float) -> float:
    """A wait of ``seconds`` on quiet cores, allowed for a busy machine."""
    return seconds * PATIENCE


# Small batches so that a few epochs on digits' 1438 training images take a few seconds.
TINY = ["--dataset", "digits", "--batch_size", "64", "--lr", "0.05"]
TEACHER = "ResNet20"
STUDENT = "ResNetBaby"


def run_training(experiments_dir: Path, *flags: str) -> dict[str, Any]:
    """Train in this process with the tiny settings; the run's metrics."""
    return train(parse_config([*TINY, "--experiments_dir", str(experiments_dir), *flags]))


def age(folder: Path) -> None:
    """As if the runs in ``folder`` had stopped long ago: clean keeps a folder changed in the last
    QUIET_S seconds, which may belong to a run that is starting."""
    old = time.time() - 10 * QUIET_S
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)


TEACHER_FLAGS = ["--distillation", "none", "--student", TEACHER, "--epochs", "6"]


TEACHER_RUN = experiment_name(parse_config([*TINY, *TEACHER_FLAGS]))
"""The name of the ``digits_teacher`` run (named after its flags, as every run is)."""
SMOKE_CHANGES = "epochs=2,batch_size=64,lr=0.05,max_batches=3"
"""How TINY with ``--epochs 2 --max_batches 3`` appears in run names."""


def teacher_run(experiments_dir: Path) -> Path:
    """The folder of the ``digits_teacher`` run."""
    return experiments_dir / TEACHER_RUN


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A ResNet20 teacher trained on digits at the conventional path (about 30 s on 2 cores):
    the experiments folder and the teacher's metrics. Tests must not write into this folder;
    they pass ``--teacher_checkpoint`` or copy it."""
    experiments = tmp_path_factory.mktemp("teacher-experiments")
    metrics = run_training(experiments, *TEACHER_FLAGS)
    return experiments, metrics


REAL_BATCH = 64


@pytest.fixture(scope="session")
def briefly_trained() -> tuple[Any, Any, Any, Any]:
    """A ResNet20 teacher and a ResNetBaby student trained briefly on digits (their maps have a
    trained network's structure, which random tensors lack), in eval mode, and one batch of
    REAL_BATCH training images with its labels: (teacher, student, images, labels)."""
    from tests.test_tucker_fidelity import train_briefly
    from toolbox.data_loader import load_dataset, train_batches

    data = load_dataset("digits", "unused", "cpu")
    teacher, student = train_briefly("ResNet20", data, 30, seed=0), train_briefly("ResNetBaby", data, 15, seed=1)
    images, labels, _ = next(train_batches(data, REAL_BATCH, seed=2, epoch=0))
    return teacher, student, images, labels


@pytest.fixture(scope="session")
def real_outputs(briefly_trained: tuple) -> tuple[list[Any], list[Any], Any]:
    """Every output of the briefly trained teacher and student on their batch: maps with a trained
    network's structure (a few dominant directions, many zeros after the ReLU); and the batch's
    labels. For the baselines' tests, which compare their losses on these maps with float64 references."""
    import torch

    teacher, student, images, labels = briefly_trained
    with torch.no_grad():
        return teacher(images), student(images), labels


def forget_stop_signal() -> None:
    """A run stopped in this process leaves the signal recorded on the installed StopFlag
    (tucker_distillation.py installs one when it is imported), which would stop the next run at once."""
    installed = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if isinstance(installed, StopFlag):
        installed.signal = None


@pytest.fixture(autouse=True)
def no_stop_signal_left() -> Iterator[None]:
    """Each test starts without a stop signal left by the one before."""
    yield
    forget_stop_signal()
