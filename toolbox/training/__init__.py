"""``train(config) -> metrics``: one run, from flags to a finished run folder.

The loop knows no method by name: the distiller gives the soft loss, and its parameters are
trained with the student. Per-step metrics are summed on the device and read once per epoch, so a
step never waits for the GPU. After every epoch ``last.pt`` is written atomically; rerunning the
same command resumes from it, and ``metrics.json`` is written only when the last epoch is done.
Within an epoch, last.pt is also written every ``--checkpoint_every`` steps and where a stop signal
arrives, with the position in the epoch (``toolbox.progress``). Each epoch (and with
``--tensorboard_every`` each N-th step) also goes to TensorBoard event files (``toolbox.curves``),
flushed before every last.pt so that a resumed run's curves continue it. The loop reads every data set
through the same ``DataSource`` face and knows neither where its images are kept nor their size.

Under torchrun the same loop runs on every rank (``toolbox.distributed``): it asks whether it is
the writer (rank 0 alone locks the folder and writes in it), has sums reduced and decisions (stop,
divergence) agreed, and knows nothing else about the ranks.

The package's modules: ``trainer`` (the Trainer: step, epoch, phases, last.pt's state),
``prepare`` (data set, schedule, autocast, determinism, the teacher's checks), ``resume`` (what a
rerun finds: a finished run, other flags, a stop) and ``console`` (train.log). This face holds the
two entry points, ``train`` and ``evaluate_checkpoint``, and the names other code imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from toolbox.config import Config
from toolbox.curves import open_curves
from toolbox.distributed import join
from toolbox.errors import UsageError
from toolbox.lastpt import HISTORY_KEYS, read_last
from toolbox.models import build_model, load_checkpoint
from toolbox.rundir import RunDir, file_digest, resolve
from toolbox.stop import interruptible, stop_flag
from toolbox.training.console import ConsoleLog, final_line
from toolbox.training.prepare import (
    all_finite,
    check_teacher_exists,
    data_set,
    make_autocast,
    make_scheduler,
    output_shapes,
    set_deterministic,
)
from toolbox.training.resume import check_same_run, check_stop, finished_metrics
from toolbox.training.trainer import Learner, Trainer
from toolbox.utils import atomic_torch_save, atomic_write_json, environment, evaluate, plot_curves, select_device

__all__ = [
    "ConsoleLog", "Learner", "Trainer", "all_finite", "check_same_run", "check_stop", "check_teacher_exists",
    "data_set", "evaluate_checkpoint", "final_line", "finished_metrics", "make_autocast", "make_scheduler",
    "output_shapes", "set_deterministic", "train",
]


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
        batches = ((images.contiguous(memory_format=memory_format), labels)
                   for images, labels in data.eval_batches(config.eval_batch_size))
        loss, accuracy = evaluate(model, batches, make_autocast(config, device))
    return {"test_loss": loss, "test_acc": accuracy}


def train(config: Config) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the run that ``config`` describes; its metrics.
    The run's folder is locked for the whole call: a second process on it fails at once. Under
    torchrun every rank calls it; rank 0 alone locks and writes, the others wait until it has
    claimed the folder, then read the same files and reach the same decisions."""
    named = config.experiment_name is not None
    config = resolve(config)
    run = RunDir(Path(config.experiments_dir) / config.experiment_name)
    world = join(config.device)
    claimed = run.claimed(config.experiment_name) if world.is_writer else contextlib.nullcontext()
    with contextlib.closing(world), claimed, stop_flag() as stop, ConsoleLog(run, world.is_writer) as log:
        if world.is_writer:
            run.remove_stale_temporaries()
        world.barrier()
        if run.finished:
            return finished_metrics(run, config, named)
        with stop.interruptible(f"reading {run.last}"):
            state = read_last(run, torch.device("cpu"))
        saved, recorded = run.saved_config(), state.get("config") if state else None
        if state is not None and saved is None and recorded is None:
            raise UsageError(f"{run.last} does not record its flags and {run.config} is missing, so resuming cannot be "
                             "checked; move last.pt away to restart the run from epoch 0")
        for flags in (saved, recorded):
            if flags is not None:
                check_same_run(flags, config, run.path, named)

        with stop.interruptible("loading the data set and the teacher"):
            trainer = Trainer(config, run, world=world)
        if trainer.teacher is not None:
            trainer.teacher_sha256 = file_digest(Path(config.teacher_checkpoint))
        if state is not None:
            if state.get("teacher_sha256") != trainer.teacher_sha256:
                raise UsageError(f"--teacher_checkpoint {config.teacher_checkpoint} is not the teacher {run.path} was "
                                 "trained with (its content differs); pass that teacher's file to resume, or choose "
                                 "another --experiment_name for a run with this teacher")
            trainer.restore(state)
            located = trainer.phase  # in a preliminary phase: its epochs
            done, ahead = ((f"{located[0].name} epoch {located[1] - 1} of {located[0].epochs}", f"{located[0].name} epoch {located[1]}")
                           if located else (f"epoch {trainer.epoch} of {config.epochs}", f"epoch {trainer.epoch + 1}"))
            within = f", at batch {trainer.position.batch} of {ahead}" if trainer.position else ""
            starting = f"resuming {run.path} after {done}{within}"
        else:
            what = config.student if trainer.teacher is None else f"{config.teacher} -> {config.student}"
            where = f"{world.size} processes ({trainer.device.type})" if world.distributed else trainer.device
            starting = f"training {run.path} on {where} ({config.distillation}: {what})"
        if world.is_writer:
            previous = run.read_json(run.config) if state is not None else None  # keep the environment the run started in
            atomic_write_json(run.config, {  # the flags as they are now (a moved teacher's new path)
                "config": dataclasses.asdict(config),
                "environment": (previous or {}).get("environment") or environment(),
                "teacher_sha256": trainer.teacher_sha256,
                "feature_shapes": trainer.feature_shapes,  # the distilled maps, (C, H, W), for the notebooks
                "world_size": world.size,  # ranks of this session: a run may resume with another number
            })
        log(starting)  # train.log only ever stands beside the config.json that makes the folder a run of ours

        best_path = run.best_checkpoint(config.student)
        trainer.curves = open_curves(run, config.tensorboard_every, trainer.epoch, trainer.steps_done, world.is_writer)
        with trainer.curves:
            trainer.train_phases(stop, log)
            while trainer.epoch < config.epochs:
                check_stop(stop, run, trainer.epoch, stopping=world.any(stop.signal is not None))  # also one during the last test
                started = trainer.clock = time.perf_counter()
                lr = trainer.optimizer.param_groups[0]["lr"]  # the epoch's: the scheduler steps after it
                record = trainer.train_epoch(stop, log)
                record.update(trainer.test())
                trainer.check_finite(record)
                trainer.scheduler.step()
                trainer.account_time()
                is_best = trainer.epoch == 0 or record["test_acc"] > max(trainer.history["test_acc"])
                for key in HISTORY_KEYS:
                    trainer.history[key].append(record[key])
                trainer.curves.write_epoch(trainer.epoch, {**record, "lr": lr, "epoch_s": time.perf_counter() - started})
                trainer.curves.flush()  # before last.pt: an epoch it holds is never missing from the curves
                if world.is_writer:
                    if is_best:
                        atomic_torch_save(best_path, {"weights": trainer.student.state_dict()})
                    atomic_torch_save(run.last, trainer.state())
                    plot_curves(trainer.history, run.path)
                trainer.position_saved = 0
                log(
                    f"epoch {trainer.epoch}/{config.epochs}  cross-entropy {record['train_hard_loss']:.4f}  "
                    f"distillation {record['train_soft_loss']:.4g}  train {record['train_acc']:.2f}%  "
                    f"test {record['test_acc']:.2f}% (best {max(trainer.history['test_acc']):.2f}%)  "
                    f"{time.perf_counter() - started:.1f}s"
                )

        best_epoch = max(range(config.epochs), key=lambda i: trainer.history["test_acc"][i])
        metrics = {
            **trainer.history,
            "best_test_acc": trainer.history["test_acc"][best_epoch],
            "best_epoch": best_epoch + 1,
            "epochs": config.epochs,
            "wall_time_s": trainer.elapsed,
            **({"phase_history": trainer.phase_history} if trainer.phase_history else {}),
        }
        log(final_line(metrics))  # before metrics.json, which closes the log
        if world.is_writer:
            atomic_write_json(run.metrics, metrics)
        world.barrier()  # no rank leaves (and no torchrun tears the others down) before the run is finished
        return metrics
