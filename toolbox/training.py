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
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from toolbox.config import Config, milestones
from toolbox.data_loader import IMAGE_SIZE, Dataset, eval_batches, load_dataset, train_batches
from toolbox.distillation import Distiller, Setup, Step
from toolbox.errors import DivergedError, Interrupted, UsageError
from toolbox.methods import DISTILLERS, build_distiller
from toolbox.models import build_model, load_checkpoint
from toolbox.rundir import RunDir, differences, file_digest, resolve, teacher_command
from toolbox.stop import StopFlag, stop_flag
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


def check_same_run(saved: dict[str, Any], config: Config, path: Path) -> None:
    """A folder holds one experiment: returning or resuming it for other flags would report or mix
    two experiments as one."""
    changed = differences(saved, config)
    if changed:
        raise UsageError(
            f"{path} holds a run with other flags ({'; '.join(changed)}); rerun with its flags to use it, or leave "
            "out --experiment_name (runs are named after their flags) or choose another one for a separate run"
        )


def output_shapes(model: nn.Module, device: torch.device) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes of every output (stem, stages, pooled, logits), from one eval-mode forward
    pass (BatchNorm statistics untouched)."""
    model.eval()
    with torch.no_grad():
        return tuple(tuple(out.shape[1:]) for out in model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)))


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: cosine annealing over the run (the original's), or x``lr_decay``
    after each epoch in ``lr_milestones`` (RepDistiller's: the lr of epoch 151 is the first decayed)."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(config.lr_milestones), gamma=config.lr_decay)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)


def set_deterministic(on: bool) -> None:
    """Deterministic algorithms (an error where torch has none) and cuDNN without autotuning."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


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
        needs_teacher = DISTILLERS[config.distillation].needs_teacher
        if needs_teacher:
            check_teacher_exists(config)  # before the data: a CIFAR download should not come first
        self.device = select_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        set_deterministic(config.deterministic)
        self.data = data if data is not None else load_dataset(config.dataset, config.data_dir, self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.autocast = make_autocast(config, self.device)

        self.student = build_model(config.student, self.data.num_classes).to(self.device)
        self.teacher: Optional[nn.Module] = None
        teacher_shapes = student_shapes = output_shapes(self.student, self.device)
        if needs_teacher:
            self.teacher = self._load_teacher()
            teacher_shapes = output_shapes(self.teacher, self.device)
        setup = Setup(teacher_shapes, student_shapes, self.data.train_labels)
        self.distiller: Distiller = build_distiller(config, setup).to(self.device)
        self.feature_shapes = {"teacher": teacher_shapes[config.feature_layer], "student": student_shapes[config.feature_layer]}

        parameters = list(self.student.parameters()) + list(self.distiller.parameters())
        self.optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.scheduler = make_scheduler(config, self.optimizer)
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.elapsed = 0.0  # seconds of training, summed over resumed sessions
        self.teacher_sha256: Optional[str] = None  # the teacher file's content, which a resumed run must keep

        self.student.to(memory_format=self.memory_format)
        self.student_step = torch.compile(self.student) if config.compile else self.student
        self.teacher_step = self.teacher
        if self.teacher is not None:
            self.teacher.to(memory_format=self.memory_format)
            self.teacher_step = torch.compile(self.teacher) if config.compile else self.teacher

    def _load_teacher(self) -> nn.Module:
        config = self.config
        path = Path(config.teacher_checkpoint)
        teacher = build_model(config.teacher, self.data.num_classes)
        load_checkpoint(teacher, path, "--teacher_checkpoint")
        if not all_finite(teacher):
            raise UsageError(f"--teacher_checkpoint {path} holds NaN or infinite weights (a diverged teacher); "
                             "retrain the teacher or pass another checkpoint")
        teacher.to(self.device).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher

    @property
    def epoch(self) -> int:
        return len(self.history["test_acc"])

    def state(self) -> dict[str, Any]:
        state = {
            "config": dataclasses.asdict(self.config),  # what a resume checks, even if config.json is lost
            "student": self.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "elapsed": self.elapsed,
            "teacher_sha256": self.teacher_sha256,
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.elapsed = state["elapsed"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step on the training samples ``indices``; returns the cross-entropy,
        the soft loss and the number of correct predictions as device tensors (reading them would
        make the step wait)."""
        images = images.contiguous(memory_format=self.memory_format)
        with self.autocast():
            student_out = self.student_step(images)
            teacher_out = None
            if self.teacher_step is not None:
                with torch.no_grad():
                    teacher_out = self.teacher_step(images)
            soft = self.distiller.soft_loss(teacher_out, student_out, Step(labels, indices, self.epoch + 1))
            hard = F.cross_entropy(student_out[-1].float(), labels)
        loss = self.config.ce_weight * hard + self.config.beta * soft
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
        for images, labels, indices in progress:
            hard, soft, right = self.step(images, labels, indices)
            n = len(labels)
            hard_sum = hard_sum + hard * n
            soft_sum = soft_sum + soft * n
            correct = correct + right
            count += n
            check_stop(stop, self.run, self.epoch)
        hard_loss, soft_loss = float(hard_sum) / count, float(soft_sum) / count
        return {"train_hard_loss": hard_loss, "train_soft_loss": soft_loss, "train_acc": 100.0 * float(correct) / count}

    def check_finite(self, record: dict[str, float]) -> None:
        """Divergence is a non-finite training or test loss or a non-finite weight; it stops the
        run before anything is saved, so last.pt and the best checkpoint only ever hold finite states."""
        losses = {key: value for key, value in record.items() if "loss" in key}
        if all(math.isfinite(value) for value in losses.values()) and all_finite(self.student, self.distiller):
            return
        kept = f"{self.run.last} keeps the last good epoch ({self.epoch})" if self.epoch else "no epoch was saved"
        shown = ", ".join(f"{key} {value:.4g}" for key, value in losses.items())
        raise DivergedError(f"the run diverged in epoch {self.epoch + 1} ({shown}, or a weight is NaN or infinite); "
                            f"{kept}; try a lower --lr or --beta")

    def test(self) -> dict[str, float]:
        batches = (
            (images.contiguous(memory_format=self.memory_format), labels)
            for images, labels in eval_batches(self.data, self.config.eval_batch_size)
        )
        loss, accuracy = evaluate(self.student_step, batches, self.autocast)
        return {"test_loss": loss, "test_acc": accuracy}


def check_teacher_exists(config: Config) -> None:
    """A missing teacher is an error that says how to train it."""
    if not Path(config.teacher_checkpoint).exists():
        raise UsageError(
            f"teacher checkpoint {config.teacher_checkpoint} not found; train the teacher first with: "
            f"{teacher_command(config)} (it is saved there by default), or pass --teacher_checkpoint"
        )


def all_finite(*modules: nn.Module) -> bool:
    """Every floating-point parameter and buffer (BatchNorm statistics too) is finite."""
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())  # one device sync, not one per tensor


def check_stop(stop: StopFlag, run: RunDir, epoch: int) -> None:
    """Leave through ``Interrupted`` (exit 75, the job requeues) once a stop signal has arrived."""
    if stop.signal is not None:
        raise Interrupted(f"stopped by signal {stop.name} during epoch {epoch + 1}; {run.last} holds epoch {epoch}: "
                          "rerun the same command to resume")


def read_last(run: RunDir, device: torch.device) -> Optional[dict[str, Any]]:
    """The run's resumable state, or None when it has none; unreadable is a one-line error."""
    if not run.last.exists():
        return None
    try:
        state = torch.load(run.last, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "student" not in state:
            raise ValueError("not a last.pt of this project")
        return state
    except Exception as error:  # a damaged pickle fails in many ways (KeyError, UnpicklingError, EOFError, ...)
        detail = " ".join(str(error).split())[:200]
        raise UsageError(f"{run.last} is unreadable ({type(error).__name__}: {detail}); it was left as it is: move it "
                         f"away to restart this run from epoch 0, or restore it") from None


def evaluate_checkpoint(config: Config) -> dict[str, float]:
    """Test loss and accuracy of the ``--evaluate`` checkpoint as a ``--student`` on ``--dataset``:
    check a downloaded teacher before distilling from it."""
    device = select_device(config.device)
    data = load_dataset(config.dataset, config.data_dir, device)
    model = build_model(config.student, data.num_classes)
    load_checkpoint(model, Path(config.evaluate), "--evaluate")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    batches = ((images.contiguous(memory_format=memory_format), labels)
               for images, labels in eval_batches(data, config.eval_batch_size))
    loss, accuracy = evaluate(model, batches, make_autocast(config, device))
    return {"test_loss": loss, "test_acc": accuracy}


class ConsoleLog:
    """Prints a run's lines and appends them to its ``train.log``, so that a run trained directly
    keeps what it printed, as a scheduler's job log would (progress bars stay on the terminal).
    As a context manager it also records the error that stops a run that has a log (the entry point
    prints it): a failed start-up leaves no train.log behind. A finished run's folder is left as it
    is: nothing is appended once metrics.json exists."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def record(self, line: str) -> None:
        if self.run.finished:
            return
        with open(self.run.log, "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.record(line)

    def __enter__(self) -> ConsoleLog:
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], traceback: Any) -> None:
        if error is not None and self.run.log.exists():
            shown = str(error) if isinstance(error, (UsageError, DivergedError, Interrupted)) else f"{kind.__name__}: {error}"
            with contextlib.suppress(OSError):  # the error may be that this disk is full
                self.record(f"error: {shown}")


def final_line(metrics: dict[str, Any]) -> str:
    return (f"best test accuracy {metrics['best_test_acc']:.2f}% (epoch {metrics['best_epoch']}), "
            f"{metrics['wall_time_s']:.0f}s of training")


def finished_metrics(run: RunDir, config: Config) -> dict[str, Any]:
    """A finished run's metrics, once its config.json shows it was trained with these flags."""
    saved = run.saved_config()
    if saved is None:
        raise UsageError(f"{run.path} has finished but has no config.json, so the flags it was trained with cannot be "
                         "checked; restore its config.json, or choose another --experiment_name")
    check_same_run(saved, config, run.path)
    metrics = run.read_json(run.metrics)
    print(f"{run.path} has finished already; nothing to do")
    return metrics


def train(config: Config) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the run that ``config`` describes; its metrics.
    The run's folder is locked for the whole call: a second process on it fails at once."""
    config = resolve(config)
    run = RunDir(Path(config.experiments_dir) / config.experiment_name)
    run.create()
    with run.locked(), stop_flag() as stop, ConsoleLog(run) as log:
        run.remove_stale_temporaries()
        if run.finished:
            metrics = finished_metrics(run, config)
            log(final_line(metrics))
            return metrics
        state = read_last(run, torch.device("cpu"))
        saved = state.get("config") if state else None
        if state is not None and saved is None:
            saved = run.saved_config()
            if saved is None:
                raise UsageError(f"{run.last} does not record its flags and {run.config} is missing, so resuming cannot be "
                                 "checked; move last.pt away to restart the run from epoch 0")
        if saved is not None:
            check_same_run(saved, config, run.path)

        trainer = Trainer(config, run)
        if trainer.teacher is not None:
            trainer.teacher_sha256 = file_digest(Path(config.teacher_checkpoint))
        if state is not None:
            if state.get("teacher_sha256") != trainer.teacher_sha256:
                raise UsageError(f"--teacher_checkpoint {config.teacher_checkpoint} is not the teacher {run.path} was "
                                 "trained with (its content differs); pass that teacher's file to resume, or choose "
                                 "another --experiment_name for a run with this teacher")
            trainer.restore(state)
            log(f"resuming {run.path} after epoch {trainer.epoch} of {config.epochs}")
        else:
            what = config.student if trainer.teacher is None else f"{config.teacher} -> {config.student}"
            log(f"training {run.path} on {trainer.device} ({config.distillation}: {what})")
        try:  # keep the environment the run started in; an unreadable config.json is rewritten from last.pt
            previous = run.read_json(run.config) if state is not None else None
        except UsageError:
            previous = None
        atomic_write_json(run.config, {  # the flags as they are now (a moved teacher's new path)
            "config": dataclasses.asdict(config),
            "environment": (previous or {}).get("environment") or environment(),
            "teacher_sha256": trainer.teacher_sha256,
            "feature_shapes": trainer.feature_shapes,  # the distilled maps, (C, H, W), for the notebooks
        })
        check_stop(stop, run, trainer.epoch)

        best_path = run.best_checkpoint(config.student)
        while trainer.epoch < config.epochs:
            started = time.perf_counter()
            record = trainer.train_epoch(stop)
            record.update(trainer.test())
            trainer.check_finite(record)
            trainer.scheduler.step()
            trainer.elapsed += time.perf_counter() - started
            is_best = trainer.epoch == 0 or record["test_acc"] > max(trainer.history["test_acc"])
            for key in HISTORY_KEYS:
                trainer.history[key].append(record[key])
            if is_best:
                atomic_torch_save(best_path, {"weights": trainer.student.state_dict()})
            atomic_torch_save(run.last, trainer.state())
            plot_curves(trainer.history, run.path)
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
        }
        log(final_line(metrics))  # before metrics.json, which closes the log
        atomic_write_json(run.metrics, metrics)
        return metrics
