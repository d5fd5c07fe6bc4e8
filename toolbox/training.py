"""``train(config) -> metrics``: one run, from flags to a finished run folder.

The loop knows no method by name: the distiller gives the soft loss, and its parameters are
trained with the student. Per-step metrics are summed on the device and read once per epoch, so a
step never waits for the GPU. After every epoch ``last.pt`` is written atomically; rerunning the
same command resumes from it, and ``metrics.json`` is written only when the last epoch is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pickle
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from toolbox.config import RUNTIME_FIELDS, Config
from toolbox.data_loader import IMAGE_SIZE, Dataset, eval_batches, load_dataset, train_batches
from toolbox.distillation import DISTILLERS, Distiller, build_distiller
from toolbox.errors import DivergedError, Interrupted, UsageError
from toolbox.models import build_model
from toolbox.rundir import RunDir, default_teacher_checkpoint, experiment_name, teacher_command
from toolbox.utils import (
    atomic_torch_save,
    atomic_write_json,
    environment,
    evaluate,
    plot_curves,
    seed_everything,
    select_device,
)

HISTORY_KEYS = ("train_hard_loss", "train_soft_loss", "train_acc", "test_loss", "test_acc")
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def resolve(config: Config) -> Config:
    """Fill in the defaults that depend on other flags, so that config.json says what ran."""
    distiller = DISTILLERS[config.distillation]
    teacher_checkpoint = config.teacher_checkpoint
    if teacher_checkpoint is None and distiller.needs_teacher:
        teacher_checkpoint = str(default_teacher_checkpoint(config.experiments_dir, config.dataset, config.teacher))
    return dataclasses.replace(
        config,
        beta=distiller.default_beta if config.beta is None else config.beta,
        experiment_name=config.experiment_name or experiment_name(config),
        teacher_checkpoint=teacher_checkpoint if distiller.needs_teacher else None,
    )


def check_same_run(saved: dict[str, Any], config: Config, path: Path) -> None:
    """A folder holds one experiment: resuming it with other flags would mix two runs."""
    current = dataclasses.asdict(config)
    changed = [
        f"--{key} {saved.get(key)!r} -> {value!r}"
        for key, value in current.items()
        if key not in RUNTIME_FIELDS and saved.get(key) != value
    ]
    if changed:
        raise UsageError(
            f"{path} holds a run with other flags ({'; '.join(changed)}); "
            "rerun with the same flags to resume it, or choose another --experiment_name"
        )


def load_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load ``{"weights": state_dict}`` (the original's format) with a one-line error on mismatch."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["weights"])
    except (RuntimeError, KeyError, TypeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        detail = " ".join(str(error).split())[:400]
        raise UsageError(f"{what} {path} does not fit the model ({type(error).__name__}: {detail})") from None


def feature_shape(model: nn.Module, layer: int, device: torch.device) -> tuple[int, ...]:
    """(C, H, W) of a stage, from one eval-mode forward pass (BatchNorm statistics untouched)."""
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))[layer].shape[1:])


class StopFlag:
    """Set by SIGUSR1/SIGTERM (preemption, a time limit): the loop stops after the current step."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum


def make_autocast(config: Config, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on GPUs that support it (``--amp auto``), float32 elsewhere."""
    if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class Trainer:
    """The state of one run (models, optimiser, history) and the steps that advance it."""

    def __init__(self, config: Config, run: RunDir, data: Optional[Dataset] = None) -> None:
        """``data`` replaces the data set named by the config (benchmarks use synthetic data)."""
        self.config = config
        self.run = run
        self.device = select_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.data = data if data is not None else load_dataset(config.dataset, config.data_dir, self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.autocast = make_autocast(config, self.device)

        self.student = build_model(config.student, self.data.num_classes).to(self.device)
        self.teacher: Optional[nn.Module] = None
        teacher_shape = student_shape = feature_shape(self.student, config.feature_layer, self.device)
        if DISTILLERS[config.distillation].needs_teacher:
            self.teacher = self._load_teacher()
            teacher_shape = feature_shape(self.teacher, config.feature_layer, self.device)
        self.distiller: Distiller = build_distiller(config, teacher_shape, student_shape).to(self.device)

        parameters = list(self.student.parameters()) + list(self.distiller.parameters())
        self.optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.elapsed = 0.0  # seconds of training, summed over resumed sessions

        self.student.to(memory_format=self.memory_format)
        self.student_step = torch.compile(self.student) if config.compile else self.student
        self.teacher_step = self.teacher
        if self.teacher is not None:
            self.teacher.to(memory_format=self.memory_format)
            self.teacher_step = torch.compile(self.teacher) if config.compile else self.teacher

    def _load_teacher(self) -> nn.Module:
        config = self.config
        path = Path(config.teacher_checkpoint)
        if not path.exists():
            raise UsageError(
                f"teacher checkpoint {path} not found; train the teacher first with: {teacher_command(config)} "
                f"(it is saved there by default), or pass --teacher_checkpoint"
            )
        teacher = build_model(config.teacher, self.data.num_classes)
        load_weights(teacher, path, f"--teacher_checkpoint ({config.teacher}, {self.data.num_classes} classes)")
        teacher.to(self.device).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher

    @property
    def epoch(self) -> int:
        return len(self.history["test_acc"])

    def state(self) -> dict[str, Any]:
        state = {
            "student": self.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.student.load_state_dict(state["student"])
        self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.elapsed = state["elapsed"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step; returns the cross-entropy, the soft loss and the number of
        correct predictions as device tensors (reading them would make the step wait)."""
        images = images.contiguous(memory_format=self.memory_format)
        with self.autocast():
            student_out = self.student_step(images)
            teacher_out = None
            if self.teacher_step is not None:
                with torch.no_grad():
                    teacher_out = self.teacher_step(images)
            soft = self.distiller.soft_loss(teacher_out, student_out)
            hard = F.cross_entropy(student_out[-1].float(), labels)
        loss = hard + self.config.beta * soft
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return hard.detach(), soft.detach(), (student_out[-1].detach().argmax(1) == labels).sum()

    def train_epoch(self, stop: StopFlag) -> dict[str, float]:
        """One pass over the training set; sums stay on the device until the epoch ends."""
        config = self.config
        self.student.train()
        self.distiller.train()
        zero = torch.zeros((), device=self.device)
        hard_sum, soft_sum, correct, count = zero, zero, zero, 0
        n_batches = math.ceil(len(self.data.train_labels) / config.batch_size)
        if config.max_batches:
            n_batches = min(n_batches, config.max_batches)
        batches = train_batches(self.data, config.batch_size, config.seed, self.epoch, config.max_batches)
        progress = tqdm(batches, total=n_batches, desc=f"epoch {self.epoch + 1}/{config.epochs}", leave=False,
                        disable=not sys.stderr.isatty(), file=sys.stderr)
        for images, labels in progress:
            hard, soft, right = self.step(images, labels)
            n = len(labels)
            hard_sum = hard_sum + hard * n
            soft_sum = soft_sum + soft * n
            correct = correct + right
            count += n
            if stop.signal is not None:
                raise Interrupted(
                    f"stopped by signal {signal.Signals(stop.signal).name} during epoch {self.epoch + 1}; "
                    f"{self.run.last} holds epoch {self.epoch}: rerun the same command to resume"
                )
        hard_loss, soft_loss = float(hard_sum) / count, float(soft_sum) / count
        if not (math.isfinite(hard_loss) and math.isfinite(soft_loss)):
            kept = f"{self.run.last} keeps the last good epoch ({self.epoch})" if self.epoch else "no epoch was saved"
            raise DivergedError(
                f"the loss diverged in epoch {self.epoch + 1} (cross-entropy {hard_loss}, distillation {soft_loss}); "
                f"{kept}; try a lower --lr or --beta"
            )
        return {"train_hard_loss": hard_loss, "train_soft_loss": soft_loss, "train_acc": 100.0 * float(correct) / count}

    def test(self) -> dict[str, float]:
        batches = (
            (images.contiguous(memory_format=self.memory_format), labels)
            for images, labels in eval_batches(self.data, self.config.eval_batch_size)
        )
        loss, accuracy = evaluate(self.student_step, batches, self.autocast)
        return {"test_loss": loss, "test_acc": accuracy}


def train(config: Config) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the run that ``config`` describes; its metrics."""
    config = resolve(config)
    run = RunDir(Path(config.experiments_dir) / config.experiment_name)
    if run.finished:
        metrics = run.read_json(run.metrics)
        print(f"{run.path} has finished already (best test accuracy {metrics['best_test_acc']:.2f}%); nothing to do")
        return metrics
    saved = run.read_json(run.config)
    if saved is not None and run.last.exists():  # without last.pt there is no epoch to lose
        check_same_run(saved["config"], config, run.path)

    trainer = Trainer(config, run)
    run.path.mkdir(parents=True, exist_ok=True)
    if run.last.exists():
        trainer.restore(run.last)
        print(f"resuming {run.path} after epoch {trainer.epoch} of {config.epochs}")
    else:
        atomic_write_json(run.config, {"config": dataclasses.asdict(config), "environment": environment()})
        what = config.student if trainer.teacher is None else f"{config.teacher} -> {config.student}"
        print(f"training {run.path} on {trainer.device} ({config.distillation}: {what})")

    best_path = run.best_checkpoint(config.student)
    with StopFlag().installed() as stop:
        while trainer.epoch < config.epochs:
            started = time.perf_counter()
            record = trainer.train_epoch(stop)
            record.update(trainer.test())
            trainer.scheduler.step()
            trainer.elapsed += time.perf_counter() - started
            is_best = trainer.epoch == 0 or record["test_acc"] > max(trainer.history["test_acc"])
            for key in HISTORY_KEYS:
                trainer.history[key].append(record[key])
            if is_best:
                atomic_torch_save(best_path, {"weights": trainer.student.state_dict()})
            atomic_torch_save(run.last, trainer.state())
            plot_curves(trainer.history, run.path)
            print(
                f"epoch {trainer.epoch}/{config.epochs}  cross-entropy {record['train_hard_loss']:.4f}  "
                f"distillation {record['train_soft_loss']:.4g}  train {record['train_acc']:.2f}%  "
                f"test {record['test_acc']:.2f}% (best {max(trainer.history['test_acc']):.2f}%)  "
                f"{time.perf_counter() - started:.1f}s",
                flush=True,
            )

    best_epoch = max(range(config.epochs), key=lambda i: trainer.history["test_acc"][i])
    metrics = {
        **trainer.history,
        "best_test_acc": trainer.history["test_acc"][best_epoch],
        "best_epoch": best_epoch + 1,
        "epochs": config.epochs,
        "wall_time_s": trainer.elapsed,
    }
    atomic_write_json(run.metrics, metrics)
    return metrics
