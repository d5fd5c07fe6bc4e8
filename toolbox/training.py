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

from toolbox.composition import DistillationLoss
from toolbox.config import Config, milestones
from toolbox.curves import Curves, open_curves
from toolbox.data_loader import DataSource, load_dataset
from toolbox.datasets.sampling import share
from toolbox.distillation import Distiller, Setup, Step
from toolbox.distributed import World, join
from toolbox.errors import DivergedError, Interrupted, IOFailure, UsageError
from toolbox.methods import DISTILLERS, build_distiller
from toolbox.models import build_model, load_checkpoint
from toolbox.optimizers import SGD, make_optimizer
from toolbox.lastpt import HISTORY_KEYS, KEEP_LAST, read_last
from toolbox.phases import PHASE_RECORD, Phase, locate, set_modes, train_only
from toolbox.progress import Position, progress_line
from toolbox.rundir import RunDir, differences, file_digest, open_nofollow, resolve, teacher_command
from toolbox.speed import FullBatchCompiled, begin_step, optimizer_kernels, use_optimizer_kernels
from toolbox.stop import StopFlag, interruptible, stop_flag
from toolbox.utils import (
    atomic_torch_save,
    atomic_write_json,
    environment,
    evaluate,
    plot_curves,
    seed_everything,
    select_device,
)



def check_same_run(saved: dict[str, Any], config: Config, path: Path, named: bool) -> None:
    """A folder holds one experiment: returning or resuming it for other flags would report or mix
    two experiments as one. ``named``: the folder was given with --experiment_name."""
    changed = differences(saved, config)
    if changed:
        advice = ("leave out --experiment_name (runs are named after their flags) or choose another one for a separate run"
                  if named else "move that folder away to train these flags there")
        raise UsageError(f"{path} holds a run with other flags ({'; '.join(changed)}); rerun with its flags to use it, "
                         f"or {advice}")


def output_shapes(model: nn.Module, device: torch.device, image_size: int) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes of every output (stem, stages, pooled, logits) on the data set's images,
    from one eval-mode forward pass (BatchNorm statistics untouched)."""
    model.eval()
    with torch.no_grad():
        return tuple(tuple(out.shape[1:]) for out in model(torch.zeros(1, 3, image_size, image_size, device=device)))


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


def data_set(config: Config, device: torch.device) -> DataSource:
    """``--dataset`` from ``--data_dir``; a failed read or write there (a read-only data folder, a
    full disk) is one line naming the file, not a run's write."""
    try:
        return load_dataset(config.dataset, config.data_dir, device, workers=config.workers)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        raise IOFailure(f"{where}{error.strerror or error}, while preparing --dataset {config.dataset} in --data_dir "
                        f"{config.data_dir}; make that folder readable and writable (or pass another --data_dir), "
                        "then rerun") from None


def make_autocast(config: Config, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on GPUs that support it (``--amp auto``), float32 elsewhere."""
    if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class Learner(nn.Module):
    """The student and the distiller's trainable modules as one module, whose forward pass is
    what a step trains: one DDP (``World.wrap``) then averages all their gradients over the ranks."""

    def __init__(self, student: nn.Module, loss: DistillationLoss) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, images: torch.Tensor, teacher_out: Optional[list[torch.Tensor]],
                step: Step) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The student's outputs, the method's soft loss and the weighted distillation loss."""
        student_out = self.student(images, preact=self.loss.distiller.student_preact)
        return student_out, *self.loss(teacher_out, student_out, step)


class Trainer:
    """The state of one run (models, optimiser, history) and the steps that advance it."""

    def __init__(self, config: Config, run: RunDir, data: Optional[DataSource] = None, world: Optional[World] = None) -> None:
        """``data`` replaces the data set named by the config (benchmarks use synthetic data);
        ``world``: the ranks training together (default: this process alone, on --device)."""
        self.config = config
        self.run = run
        self.world = world or World(device=select_device(config.device))
        needs_teacher = DISTILLERS[config.distillation].needs_teacher
        if needs_teacher:
            check_teacher_exists(config)  # before the data: a CIFAR download should not come first
        self.device = self.world.device
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        set_deterministic(config.deterministic)
        self.data = data if data is not None else data_set(config, self.device)
        self.world.check_batches(len(self.data.train_labels), config.batch_size, config.max_batches)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.autocast = make_autocast(config, self.device)

        self.student = build_model(config.student, self.data.num_classes).to(self.device)
        self.teacher: Optional[nn.Module] = None
        teacher_shapes = student_shapes = output_shapes(self.student, self.device, self.data.image_size)
        if needs_teacher:
            self.teacher = self._load_teacher()
            teacher_shapes = output_shapes(self.teacher, self.device, self.data.image_size)
        setup = Setup(teacher_shapes, student_shapes, self.data.train_labels, self.world, self.teacher)
        self.distiller: Distiller = build_distiller(config, setup).to(self.device)
        self.feature_shapes = {"teacher": teacher_shapes[config.feature_layer], "student": student_shapes[config.feature_layer]}

        self.phases = self.distiller.phases()
        self.phase_history: list[dict[str, float]] = []  # a record per preliminary epoch done (toolbox.phases)
        self.optimizer, self.scheduler = self.phase_optimizer()
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.elapsed = 0.0  # seconds of training, summed over resumed sessions
        self.clock = time.perf_counter()  # when ``elapsed`` was last brought up to date
        self.position: Optional[Position] = None  # where the epoch to train next was saved, if within it
        self.position_saved = 0  # batches of the current epoch that last.pt holds (0: none)
        self.teacher_sha256: Optional[str] = None  # the teacher file's content, which a resumed run must keep
        self.curves = Curves()  # writes nothing: train() opens the run's (toolbox.curves)

        self.student.to(memory_format=self.memory_format)
        if config.sync_bn and self.world.distributed:  # after the optimiser: the conversion keeps the parameters
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.distiller = nn.SyncBatchNorm.convert_sync_batchnorm(self.distiller)
        first, end = share(0, min(config.batch_size, len(self.data.train_labels)), self.world.rank, self.world.size)
        full_rows = end - first  # this rank's rows of a full batch: the one shape --compile compiles for
        self.student_step = FullBatchCompiled(self.student, full_rows, config.compile_mode) if config.compile else self.student
        self.loss = DistillationLoss(config, self.distiller)
        self.learner = self.world.wrap(Learner(self.student_step, self.loss))
        self.teacher_step = self.teacher
        if self.teacher is not None:
            self.teacher.to(memory_format=self.memory_format)
            self.teacher_step = FullBatchCompiled(self.teacher, full_rows, config.compile_mode) if config.compile else self.teacher

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

    @property
    def steps_per_epoch(self) -> int:
        """Training steps of an epoch (of the global batch: every rank takes each one)."""
        steps = math.ceil(len(self.data.train_labels) / self.config.batch_size)
        return min(steps, self.config.max_batches) if self.config.max_batches else steps

    @property
    def steps_done(self) -> int:
        """Training steps since the run began, up to the saved position within an epoch."""
        return self.epoch * self.steps_per_epoch + (self.position.batch if self.position else 0)

    @property
    def phase(self) -> Optional[tuple[Phase, int]]:
        """The preliminary phase the run is in and its epoch to train next (from 1); None in the main epochs."""
        return locate(self.phases, len(self.phase_history))

    def phase_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser and schedule of the phase the run is in, over the parameters it trains (the
        others frozen): the run's in its --epochs, a constant learning rate in a preliminary phase."""
        config, located = self.config, self.phase
        trained = self.distiller.trained_modules(self.student, located and located[0].name)
        parameters = train_only([self.student, self.distiller], trained)
        if located:  # RepDistiller's initialisation: plain SGD at the phase's constant learning rate
            optimizer = SGD(parameters, lr=located[0].lr, momentum=config.momentum, weight_decay=config.weight_decay,
                            **optimizer_kernels(self.device))
            return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        optimizer = make_optimizer(config, parameters, self.world)
        return optimizer, make_scheduler(config, optimizer)

    def enter_phase(self) -> None:
        """Start the phase the run is in: its optimiser and schedule, and the learner wrapped anew
        (DDP averages the gradients of the parameters that are trainable when it wraps them, and
        wrapping gives every rank rank 0's parameters and buffers: the BatchNorm statistics of a
        module the phase freezes are then the same on every rank)."""
        self.optimizer, self.scheduler = self.phase_optimizer()
        self.learner = self.world.wrap(Learner(self.student_step, self.loss))

    def state(self, position: Optional[Position] = None) -> dict[str, Any]:
        """What last.pt holds: at an epoch's end, or within an epoch at ``position``."""
        state = {
            "config": dataclasses.asdict(self.config),  # what a resume checks, even if config.json is lost
            "student": self.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "phase_history": self.phase_history,
            "elapsed": self.elapsed,
            "teacher_sha256": self.teacher_sha256,
            "torch_rng": torch.get_rng_state(),
            "position": None if position is None else dataclasses.asdict(position),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``read_last``'s state; state dicts that do not fit this run's models (missing
        keys, other shapes, e.g. CRD's memory bank of another data set) are a one-line error."""
        self.phase_history = list(state.get("phase_history", []))
        if self.phases:  # the optimiser of the phase the run is in is the one saved
            self.enter_phase()
        if set(state["scheduler"]) != set(self.scheduler.state_dict()):
            raise UsageError(f"{self.run.last} does not fit this run: its 'scheduler' entry is not this run's "
                             f"schedule; {KEEP_LAST}")
        for key in ("student", "distiller", "optimizer"):
            try:
                getattr(self, key).load_state_dict(state[key])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
                detail = " ".join(str(error).split())[:200]
                raise UsageError(f"{self.run.last} does not fit this run: its {key!r} entry ({detail}); {KEEP_LAST}") from None
        use_optimizer_kernels(self.optimizer, self.device)
        momenta = ((parameter, entry.get("momentum_buffer")) for parameter, entry in self.optimizer.state.items())
        if any(buffer is not None and buffer.shape != parameter.shape for parameter, buffer in momenta):
            raise UsageError(f"{self.run.last} does not fit this run: its 'optimizer' entry holds momentum of other "
                             f"shapes than the parameters; {KEEP_LAST}")
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.elapsed = state["elapsed"]
        self.position = Position(**state["position"]) if state.get("position") else None
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step on the training samples ``indices``; returns the cross-entropy,
        the soft loss and the number of correct predictions as device tensors (reading them would
        make the step wait). ``weight`` scales the loss (``World.loss_weight``)."""
        images = images.contiguous(memory_format=self.memory_format)
        if self.config.compile:
            begin_step()
        located = self.phase
        phase, epoch = located if located else (None, self.epoch + 1)
        with self.autocast():
            teacher_out = None
            if self.teacher_step is not None:
                with torch.no_grad():
                    teacher_out = self.teacher_step(images, preact=self.distiller.teacher_preact)
            student_out, soft, distillation = self.learner(images, teacher_out, Step(labels, indices, epoch, phase and phase.name))
            hard = F.cross_entropy(student_out[-1].float(), labels)
        if phase:  # a preliminary phase trains with its own weights of the method's loss (toolbox.phases)
            self.optimizer.update(phase.ce_weight * hard, phase.beta * soft, weight)
        else:
            self.optimizer.update(self.config.ce_weight * hard, distillation, weight)  # gradients, then the step
        return hard.detach(), soft.detach(), (student_out[-1].detach().argmax(1) == labels).sum()

    def train_epoch(self, stop: StopFlag, say: Callable[[str], None] = print) -> dict[str, float]:
        """One pass over the training set, or the rest of the one a saved position stopped in; sums
        stay on the device except where a progress line (``say``) or a checkpoint reads them. Each
        rank sums its own samples (the writer from the saved sums on); ``at`` adds up the ranks'.
        Returns the epoch's training means and the images per second of this session's part of it."""
        config = self.config
        world = self.world
        located = self.phase
        phase, number, total = (*located, located[0].epochs) if located else (None, self.epoch + 1, config.epochs)
        set_modes([self.student, self.distiller], self.distiller.trained_modules(self.student, phase and phase.name))
        if self.teacher is not None:
            self.teacher.train(self.distiller.teacher_train_mode)
        named = f"{phase.name} " if phase else ""
        data_epoch = -len(self.phase_history) - 1 if phase else self.epoch  # toolbox.phases: main epochs keep their order
        done, self.position = self.position or Position(), None
        kept = done if world.is_writer else Position(done.batch)
        hard_sum, soft_sum, correct = (torch.tensor(value, device=self.device) for value in (kept.hard_sum, kept.soft_sum, kept.correct))
        count = kept.count
        samples = len(self.data.train_labels)
        n_batches = self.steps_per_epoch
        batches = self.data.train_batches(config.batch_size, config.seed, data_epoch, done.batch, config.max_batches,
                                          world.rank, world.size)
        progress = tqdm(batches, initial=done.batch, total=n_batches, desc=f"{named}epoch {number}/{total}",
                        leave=False, disable=not (sys.stderr.isatty() and world.is_writer), file=sys.stderr)

        def at(batch: int) -> Position:
            """The epoch's sums over all ranks after ``batch`` batches (reads the device; every rank calls it),
            and the kept steps' losses to the curves."""
            self.curves.write_steps(world)
            sums = torch.stack([hard_sum, soft_sum, correct.float()]).double().cpu()
            total = world.all_reduce_sum(torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64)])).tolist()
            return Position(batch, total[0], total[1], total[2], int(total[3]))

        started, first_count = time.perf_counter(), done.count
        for batch, (images, labels, indices) in enumerate(progress, done.batch + 1):
            n = len(labels)
            batch_rows = min(config.batch_size, samples - (batch - 1) * config.batch_size)
            hard, soft, right = self.step(images, labels, indices, world.loss_weight(n, batch_rows))
            hard_sum = hard_sum + hard * n
            soft_sum = soft_sum + soft * n
            correct = correct + right
            count += n
            if phase is None:  # the curves' steps are the main epochs'
                self.curves.add_step(self.epoch * n_batches + batch, hard, soft, n)
            if config.log_every and batch % config.log_every == 0:
                seconds = time.perf_counter() - started
                position = at(batch)
                say(named + progress_line(number, total, batch, n_batches, (position.count - first_count) / seconds,
                                          position, seconds / (batch - done.batch) * (n_batches - batch)))
            stopping = world.any(stop.signal is not None)  # every rank stops after the same step
            if stopping or (config.checkpoint_every and batch % config.checkpoint_every == 0 and batch < n_batches):
                self.save_position(at(batch))
            if stopping:  # all ranks leave together, once the writer has saved: a launcher that ends the
                world.barrier()  # others when one exits never cuts the writer off mid-save
            check_stop(stop, self.run, self.epoch, batch, stopping)
        final = at(n_batches)
        return {**final.means(), "images_per_s": (final.count - first_count) / (time.perf_counter() - started)}

    def train_phases(self, stop: StopFlag, say: Callable[[str], None]) -> None:
        """The preliminary phases' epochs left (``toolbox.phases``), each saved to last.pt when done;
        the main phase's optimiser is started after the last."""
        while (located := self.phase) is not None:
            phase, number = located
            check_stop(stop, self.run, self.epoch, stopping=self.world.any(stop.signal is not None))
            started = self.clock = time.perf_counter()
            record = self.train_epoch(stop, say)
            self.check_finite(record)
            self.account_time()
            self.phase_history.append({key: record[key] for key in PHASE_RECORD})  # what last.pt keeps of it
            if self.phase is None or self.phase[0] is not phase:
                self.enter_phase()
            if self.world.is_writer:
                atomic_torch_save(self.run.last, self.state())
            self.position_saved = 0
            say(f"{phase.name} epoch {number}/{phase.epochs}  cross-entropy {record['train_hard_loss']:.4f}  "
                f"distillation {record['train_soft_loss']:.4g}  train {record['train_acc']:.2f}%  "
                f"{time.perf_counter() - started:.1f}s")

    def save_position(self, position: Position) -> None:
        """last.pt within an epoch, once its state is checked finite (``check_finite``); the writer's."""
        self.check_finite(position.means())
        self.account_time()
        self.curves.flush()
        if self.world.is_writer:
            atomic_torch_save(self.run.last, self.state(position))
        self.position_saved = position.batch

    def account_time(self) -> None:
        """Add the time since the last call (or the epoch's start) to ``elapsed``."""
        now = time.perf_counter()
        self.elapsed += now - self.clock
        self.clock = now

    def check_finite(self, record: dict[str, float]) -> None:
        """Divergence is a non-finite training or test loss or a non-finite weight; it stops the
        run before anything is saved, so last.pt and the best checkpoint only ever hold finite states."""
        losses = {key: value for key, value in record.items() if "loss" in key}
        finite = all(math.isfinite(value) for value in losses.values()) and all_finite(self.student, self.distiller)
        if not self.world.any(not finite):  # decided together: no rank saves what another found diverged
            return
        kept = f"{self.run.last} keeps the last good epoch ({self.epoch})" if self.epoch else "no epoch was saved"
        if self.position_saved:
            kept = f"{self.run.last} keeps the last good state (batch {self.position_saved} of epoch {self.epoch + 1})"
        shown = ", ".join(f"{key} {value:.4g}" for key, value in losses.items())
        raise DivergedError(f"the run diverged in epoch {self.epoch + 1} ({shown}, or a weight is NaN or infinite); "
                            f"{kept}; try a lower --lr or --beta")

    def test(self) -> dict[str, float]:
        """Each rank evaluates its share of the test set with rank 0's BatchNorm statistics; the
        sums are added up, so every rank reports the same loss and accuracy."""
        self.world.broadcast_buffers(self.student)
        batches = (
            (images.contiguous(memory_format=self.memory_format), labels)
            for images, labels in self.data.eval_batches(self.config.eval_batch_size, self.world.rank, self.world.size)
        )
        # the eager student, compiled or not: no graph for each test batch size and for eval mode
        loss, accuracy = evaluate(self.student, batches, self.autocast, self.world.all_reduce_sum)
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


def check_stop(stop: StopFlag, run: RunDir, epoch: int, batch: Optional[int] = None, stopping: Optional[bool] = None) -> None:
    """Leave through ``Interrupted`` (exit 75, the job requeues) once a stop signal has arrived
    (``stopping``: the ranks' agreed answer, here or on another rank); ``batch``: the epoch's
    position was saved after that many batches."""
    if stop.signal is not None if stopping is None else stopping:
        kept = f"{run.last} holds epoch {epoch}" if run.last.exists() else "no epoch has been saved yet"
        if batch is not None:
            kept = f"{run.last} holds epoch {epoch + 1} up to batch {batch}"
        raise Interrupted(f"stopped by signal {stop.name or 'on another rank'} during epoch {epoch + 1}; {kept}: rerun "
                          "the same command to resume")


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


class ConsoleLog:
    """Prints a run's lines and appends them to its ``train.log``, so that a run trained directly
    keeps what it printed, as a scheduler's job log would (progress bars stay on the terminal).
    As a context manager it also records the error that stops a run that has a log (the entry point
    prints it): a failed start-up leaves no train.log behind. A finished run's folder is left as it
    is: nothing is appended once metrics.json exists."""

    def __init__(self, run: RunDir, writer: bool = True) -> None:
        """``writer``: this process speaks for the run (under torchrun rank 0; the others keep quiet)."""
        self.run = run
        self.writer = writer

    def record(self, line: str) -> None:
        if self.run.finished or not self.writer:
            return
        with os.fdopen(open_nofollow(self.run.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def __call__(self, line: str) -> None:
        if self.writer:
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


def finished_metrics(run: RunDir, config: Config, named: bool) -> dict[str, Any]:
    """A finished run's metrics, once its config.json shows it was trained with these flags."""
    saved = run.saved_config()
    if saved is None:
        raise UsageError(f"{run.path} has finished but has no config.json, so the flags it was trained with cannot be "
                         "checked; restore its config.json, or choose another --experiment_name")
    check_same_run(saved, config, run.path, named)
    metrics = run.read_json(run.metrics)
    best = metrics.get("best_test_acc")
    if not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best):
        raise UsageError(f"{run.metrics} has no numeric 'best_test_acc'; it was left as it is: restore it, or move it "
                         "away and rerun: it is written again from last.pt")
    print(f"{run.path} has finished already (best test accuracy {best:.2f}%); nothing to do")
    return metrics


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
