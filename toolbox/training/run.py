"""``train(config) -> metrics``: one run, from flags to a finished run folder, read top to bottom:
open (resolve the flags, claim the folder, resume from last.pt or start) -> fit (every epoch left,
``Trainer.fit``) -> finish (metrics.json). And ``evaluate_checkpoint`` for ``--evaluate``.

The loop knows no method by name: the distiller gives the soft loss, and its parameters are trained
with the student. Rerunning the same command resumes from last.pt (``toolbox.training.resume``);
metrics.json is written only when the last epoch is done. Under torchrun the same code runs on every
rank (``toolbox.distributed``): rank 0 alone locks the folder and writes in it, the others wait
until it has claimed the folder, then read the same files and reach the same decisions.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from toolbox.config import Config
from toolbox.distributed import World, join
from toolbox.errors import UsageError
from toolbox.models import build_model, load_checkpoint
from toolbox.rundir import RunDir, file_digest, identity, resolve
from toolbox.stop import StopFlag, interruptible, stop_flag
from toolbox.training.console import ConsoleLog, final_line
from toolbox.training.curves import open_curves
from toolbox.training.prepare import data_set, make_autocast
from toolbox.training.resume import check_same_run, finished_metrics, read_last, restore
from toolbox.training.trainer import Trainer
from toolbox.utils import atomic_write_json, environment, evaluate, select_device


def train(config: Config) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the run that ``config`` describes; its metrics.
    The run's folder is locked for the whole call: a second process on it fails at once."""
    named, teacher_given = config.experiment_name is not None, config.teacher_checkpoint is not None
    config = resolve(config)
    run = RunDir(Path(config.experiments_dir) / config.experiment_name)
    world = join(config.device)
    if config.sync_bn and world.distributed and world.device.type != "cuda":
        world.close()
        raise UsageError(
            "--sync_bn synchronises BatchNorm over GPUs (torch's SyncBatchNorm runs on CUDA only), and these ranks "
            "train on the CPU: leave it out"
        )
    try:  # before the folder is touched: ranks started with other flags would train another run than rank 0's
        world.check_agreement(
            "flags", {"experiment_name": config.experiment_name, **identity(asdict(config))}, flag_differences
        )
    except BaseException:
        world.close()
        raise
    claimed = run.claimed(config.experiment_name) if world.is_writer else contextlib.nullcontext()
    with contextlib.closing(world), claimed, stop_flag() as stop, ConsoleLog(run, world.is_writer) as log:
        if world.is_writer:
            run.remove_stale_temporaries()
        world.barrier()
        if run.finished:
            return finished_metrics(run, config, named)
        trainer = open_run(config, run, world, stop, log, named, teacher_given)
        trainer.curves = open_curves(run, config.tensorboard_every, trainer.epoch, trainer.steps_done, world.is_writer)
        with trainer.curves:
            trainer.fit(stop, log)
        return finish(trainer, log)


def open_run(
    config: Config,
    run: RunDir,
    world: World,
    stop: StopFlag,
    log: Callable[[str], None],
    named: bool,
    teacher_given: bool = False,
) -> Trainer:
    """The run's trainer, resumed from last.pt when there is one (checked: same flags, same
    teacher: the one it started with unless ``teacher_given``), and its config.json written."""
    with stop.interruptible(f"reading {run.last}"):
        if world.distributed:  # a stale copy on one node's view of a shared file system would resume another state
            world.check_agreement(
                f"files in {run.path}",
                file_digest(run.last) if run.last.is_file() else None,
                lambda theirs, ours: f"its last.pt is {'missing' if theirs is None else 'another file'}",
            )
        state = read_last(run, torch.device("cpu"))
    saved, recorded = run.saved_config(), state.get("config") if state else None
    if state is not None and saved is None and recorded is None:
        raise UsageError(
            f"{run.last} does not record its flags and {run.config} is missing, so resuming cannot be "
            "checked; move last.pt away to restart the run from epoch 0"
        )
    for flags in (saved, recorded):
        if flags is not None:
            check_same_run(flags, config, run.path, named)
    if state is not None and not teacher_given and saved and isinstance(saved.get("teacher_checkpoint"), str):
        teacher = started_teacher(config.teacher_checkpoint, saved["teacher_checkpoint"], state.get("teacher_sha256"))
        config = dataclasses.replace(config, teacher_checkpoint=teacher)

    with stop.interruptible("loading the data set and the teacher"):
        trainer = Trainer(config, run, world=world)
    if trainer.teacher is not None:
        trainer.teacher_sha256 = file_digest(Path(config.teacher_checkpoint))
    if state is not None:
        if state.get("teacher_sha256") != trainer.teacher_sha256:
            raise UsageError(
                f"--teacher_checkpoint {config.teacher_checkpoint} is not the teacher {run.path} was "
                "trained with (its content differs); pass that teacher's file to resume, or choose "
                "another --experiment_name for a run with this teacher"
            )
        restore(trainer, state)
        starting = f"resuming {run.path} after {trainer.where()}"
    else:
        what = config.student if trainer.teacher is None else f"{config.teacher} -> {config.student}"
        where = f"{world.size} processes ({trainer.device.type})" if world.distributed else trainer.device
        starting = f"training {run.path} on {where} ({config.distillation}: {what})"
    if world.is_writer:
        previous = run.read_json(run.config) if state is not None else None  # keep the environment the run started in
        atomic_write_json(
            run.config,
            {  # the flags as they are now (a moved teacher's new path)
                "config": dataclasses.asdict(config),
                "environment": (previous or {}).get("environment") or environment(),
                "teacher_sha256": trainer.teacher_sha256,
                "feature_shapes": trainer.feature_shapes,  # the distilled maps, (C, H, W), for the notebooks
                "world_size": world.size,  # ranks of this session: a run may resume with another number
            },
        )
    log(starting)  # train.log only ever stands beside the config.json that makes the folder a run of ours
    return trainer


def started_teacher(default: str | None, recorded: str, digest: Any) -> str | None:
    """The teacher file a resumed run started from, found by its content: the default teacher (as the
    current flags and folder name it), else the path config.json recorded (a default teacher that has
    moved since: another teacher recipe); the default where neither holds it, for its one-line error."""
    for path in (default, recorded):
        if path is not None and Path(path).is_file() and file_digest(Path(path)) == digest:
            return path
    return default


def flag_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    """``--lr 5.0 there, 0.05 on rank 0`` for each flag in which two ranks' runs differ."""
    return "; ".join(
        f"--{name} {theirs.get(name)!r} there, {value!r} on rank 0"
        for name, value in ours.items()
        if theirs.get(name) != value
    )


def finish(trainer: Trainer, log: Callable[[str], None]) -> dict[str, Any]:
    """metrics.json, written once every epoch is done: the run is finished."""
    history, epochs = trainer.history, trainer.config.epochs
    best_epoch = max(range(epochs), key=lambda i: history["test_acc"][i])
    metrics = {
        **history,
        "best_test_acc": history["test_acc"][best_epoch],
        "best_epoch": best_epoch + 1,
        "epochs": epochs,
        "wall_time_s": trainer.elapsed,
        **({"phase_history": trainer.phase_history} if trainer.phase_history else {}),
    }
    log(final_line(metrics))  # before metrics.json, which closes the log
    if trainer.world.is_writer:
        atomic_write_json(trainer.run.metrics, metrics)
    trainer.world.barrier()  # no rank leaves (and no torchrun tears the others down) before the run is finished
    return metrics


def evaluate_checkpoint(config: Config) -> dict[str, float]:
    """Test loss and accuracy of the ``--evaluate`` checkpoint as a ``--student`` on ``--dataset``:
    check a downloaded teacher before distilling from it. It writes nothing, so a stop signal ends it at once."""
    with interruptible(f"evaluating {config.evaluate}"):
        device = select_device(config.device)
        data = data_set(config, device)
        model = build_model(config.student, data.num_classes)
        load_checkpoint(model, Path(config.evaluate), "--evaluate")
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format)
        batches = (
            (images.contiguous(memory_format=memory_format), labels)
            for images, labels in data.eval_batches(config.eval_batch_size)
        )
        loss, accuracy = evaluate(model, batches, make_autocast(config, device))
    return {"test_loss": loss, "test_acc": accuracy}
