"""TensorBoard curves: the scalars a run writes, read back as TensorBoard reads them; a run killed
mid-epoch and resumed shows each epoch and step once; the folders are the project's own."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import STUDENT, run_training
from toolbox.errors import UsageError
from toolbox.models import build_model
from toolbox.rundir import EVENT_FILE, RunDir
from toolbox.sweep.folders import remove_own_files
from toolbox.training import trainer as trainer_module
from toolbox.training.curves import EPOCH_TAGS, STEP_TAGS, open_curves

HISTORY = ("train_hard_loss", "train_soft_loss", "train_acc", "test_loss", "test_acc")


def scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder (or of one event file) as TensorBoard shows it: (step, value)."""
    events = EventAccumulator(str(path))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def kd_flags(tmp_path: Path) -> list[str]:
    """kd from an untrained ResNetBaby: a distillation loss without training a teacher first."""
    teacher = tmp_path / "teacher.pth"
    torch.save({"weights": build_model(STUDENT, 10).state_dict()}, teacher)
    return [
        "--distillation",
        "kd",
        "--teacher",
        STUDENT,
        "--student",
        STUDENT,
        "--teacher_checkpoint",
        str(teacher),
        "--max_batches",
        "3",
        "--experiment_name",
        "r",
    ]


def test_a_run_writes_its_epochs_and_every_nth_step(tmp_path: Path) -> None:
    metrics = run_training(tmp_path, *kd_flags(tmp_path), "--epochs", "2", "--tensorboard_every", "1")
    run = tmp_path / "r"
    epochs = scalars(run)
    assert set(epochs) == set(EPOCH_TAGS.values())
    for key in HISTORY:
        assert [step for step, _ in epochs[EPOCH_TAGS[key]]] == [1, 2]
        assert [value for _, value in epochs[EPOCH_TAGS[key]]] == pytest.approx(metrics[key], rel=1e-6)
    assert [value for _, value in epochs["schedule/learning_rate"]] == pytest.approx(
        [0.05, 0.025]
    )  # cosine over 2 epochs
    assert all(
        value > 0 for tag in ("speed/epoch_seconds", "speed/train_images_per_second") for _, value in epochs[tag]
    )

    steps = scalars(run / "steps")
    assert set(steps) == set(STEP_TAGS) and [step for step, _ in steps[STEP_TAGS[0]]] == [1, 2, 3, 4, 5, 6]
    for tag, key in zip(STEP_TAGS, ("train_hard_loss", "train_soft_loss")):
        values = [value for _, value in steps[tag]]
        # every step has 64 images: an epoch's loss is the mean of its three steps'
        assert [sum(values[:3]) / 3, sum(values[3:]) / 3] == pytest.approx(metrics[key], rel=1e-5)
    assert min(value for _, value in steps[STEP_TAGS[1]]) > 0

    (run / "metrics.json").unlink()  # as an unfinished run: clean deletes every file the run wrote, steps/ too
    remove_own_files(RunDir(run))
    assert list(run.iterdir()) == []


def test_a_resumed_run_shows_each_epoch_and_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed as epoch 2 ends, after its curves were written but before last.pt, which holds epoch 1
    and the first 2 steps of epoch 2 (--checkpoint_every 2): the resumed session trains step 6 and
    epoch 2 again, and TensorBoard shows its values, not the killed session's as well."""
    flags = [*kd_flags(tmp_path), "--epochs", "2", "--checkpoint_every", "2", "--tensorboard_every", "2"]
    saved = trainer_module.atomic_torch_save  # the Trainer saves each epoch's last.pt

    def killed_before_saving_epoch_2(path: Path, state: dict) -> None:
        if path.name == "last.pt" and state["position"] is None and len(state["history"]["test_acc"]) == 2:
            raise KeyboardInterrupt
        saved(path, state)

    monkeypatch.setattr(trainer_module, "atomic_torch_save", killed_before_saving_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path, *flags)
    run = tmp_path / "r"
    [killed_epochs] = [path for path in run.iterdir() if EVENT_FILE.fullmatch(path.name)]
    [killed_steps] = list((run / "steps").iterdir())
    assert [step for step, _ in scalars(killed_epochs)["accuracy/test"]] == [1, 2]
    assert [step for step, _ in scalars(killed_steps)[STEP_TAGS[0]]] == [2, 4, 6]

    monkeypatch.setattr(trainer_module, "atomic_torch_save", saved)
    metrics = run_training(tmp_path, *flags)
    assert len([path for path in run.iterdir() if EVENT_FILE.fullmatch(path.name)]) == 2
    epochs, steps = scalars(run), scalars(run / "steps")
    for key in HISTORY:
        assert [step for step, _ in epochs[EPOCH_TAGS[key]]] == [1, 2]
        assert [value for _, value in epochs[EPOCH_TAGS[key]]] == pytest.approx(metrics[key], rel=1e-6)
    assert [step for step, _ in steps[STEP_TAGS[0]]] == [2, 4, 6]
    assert [step for step, _ in steps[STEP_TAGS[1]]] == [2, 4, 6]


def test_curves_are_never_written_through_a_link(tmp_path: Path) -> None:
    run, elsewhere = RunDir(tmp_path / "r"), tmp_path / "elsewhere"
    run.path.mkdir()
    elsewhere.mkdir()
    run.steps.symlink_to(elsewhere)
    with pytest.raises(UsageError, match="r/steps is a symbolic link, and the project never writes through one"):
        open_curves(run, 1, 0, 0, writer=True)
    run.steps.unlink()
    run.steps.write_text("a file")
    with pytest.raises(UsageError, match="r/steps is not a folder"):
        open_curves(run, 1, 0, 0, writer=True)
    (run.path / "events.out.tfevents.1700000000.node7.42.0").symlink_to(elsewhere / "theirs")
    with pytest.raises(UsageError, match="events.out.tfevents.1700000000.node7.42.0 is a symbolic link"):
        open_curves(run, 0, 0, 0, writer=True)
    assert list(elsewhere.iterdir()) == [] and sorted(path.name for path in run.path.iterdir()) == [
        "events.out.tfevents.1700000000.node7.42.0",
        "steps",
    ]


def test_a_full_disk_under_the_event_writer_is_one_error_naming_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The writer's thread meets the failure; the training's next call raises it, named, with no
    traceback of the thread on stderr (the entry point prints one line, exit status 74)."""
    curves = open_curves(RunDir(tmp_path), 0, 0, 0, writer=True)

    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    curves.epoch_writer.file_writer.event_writer._general_file_writer.write = full
    with pytest.raises(OSError) as raised:
        with curves:
            curves.write_epoch(1, dict.fromkeys(EPOCH_TAGS, 1.0))
            curves.flush()
    assert raised.value.errno == errno.ENOSPC and EVENT_FILE.fullmatch(Path(raised.value.filename).name)
    assert "Traceback" not in capfd.readouterr().err


def test_a_full_disk_when_the_event_file_opens_is_one_error_without_a_thread_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up as the writers open: their threads fail at their first write, before the
    training holds the curves; still one error, naming the file, and no thread's traceback."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self: RecordWriter, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RecordWriter, "write", full)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # Python's: it prints (pytest's keeps)
    hook = threading.excepthook
    with pytest.raises(OSError) as raised:
        curves = open_curves(RunDir(tmp_path), 2, 0, 0, writer=True)
        time.sleep(0.5)  # the threads have met the full disk
        with curves:
            curves.flush()
    where = Path(raised.value.filename)
    assert raised.value.errno == errno.ENOSPC and (where == tmp_path or EVENT_FILE.fullmatch(where.name)), where
    time.sleep(0.5)  # a thread that could still fail has had the time to
    assert "Exception in thread" not in capfd.readouterr().err and threading.excepthook is hook
