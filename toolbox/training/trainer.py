"""The Trainer: the state of one run (models, optimiser, history, position) and the steps, epochs and
preliminary phases that advance it; ``fit`` trains every epoch left, in one place.

Per-step metrics are summed on the device and read only where a progress line, a checkpoint or
the epoch's end needs them, so a step never waits for the GPU. After every epoch, and within an
epoch every ``--checkpoint_every`` steps and where a stop signal arrives, last.pt is written
(``toolbox.training.resume``). Under torchrun every rank runs the same steps on its share of each
batch; the world (``toolbox.distributed``) adds up their sums and agrees on stop and divergence.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from toolbox.config import Config
from toolbox.data_loader import DataSource
from toolbox.datasets.sampling import share
from toolbox.distillation import Distiller, Setup, Step, build_distiller
from toolbox.distributed import World
from toolbox.errors import DivergedError, UsageError
from toolbox.methods import DISTILLERS
from toolbox.methods.loss import DistillationLoss
from toolbox.methods.phases import PHASE_RECORD, Phase, locate, set_modes, train_only
from toolbox.models import build_model, load_checkpoint
from toolbox.rundir import RunDir
from toolbox.stop import StopFlag
from toolbox.training.console import epoch_line, progress_line
from toolbox.training.curves import Curves
from toolbox.training.optimizers import SGD, make_optimizer
from toolbox.training.prepare import (
    all_finite,
    check_teacher_exists,
    data_set,
    make_autocast,
    make_scheduler,
    output_shapes,
    set_deterministic,
)
from toolbox.training.resume import HISTORY_KEYS, Position, check_stop, snapshot
from toolbox.training.speed import FullBatchCompiled, begin_step, optimizer_kernels
from toolbox.utils import atomic_torch_save, evaluate, plot_curves, seed_everything, select_device


class Learner(nn.Module):
    """The student and the distiller's trainable modules as one module, whose forward pass is
    what a step trains: one DDP (``World.wrap``) then averages all their gradients over the ranks."""

    def __init__(self, student: nn.Module, loss: DistillationLoss) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(
        self, images: torch.Tensor, teacher_out: Optional[list[torch.Tensor]], step: Step
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The student's outputs, the method's soft loss and the weighted distillation loss."""
        student_out = self.student(images, preact=self.loss.distiller.student_preact)
        return student_out, *self.loss(teacher_out, student_out, step)


class Trainer:
    """The state of one run (models, optimiser, history) and the steps that advance it."""

    def __init__(
        self, config: Config, run: RunDir, data: Optional[DataSource] = None, world: Optional[World] = None
    ) -> None:
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
        fewest = self.world.fewest_rows(len(self.data.train_labels), config.batch_size, config.max_batches)
        if fewest < self.distiller.min_rows:
            raise UsageError(
                f"--distillation {config.distillation} trains on batches of at least {self.distiller.min_rows} "
                f"samples{' per rank' if self.world.distributed else ''}, and --batch_size {config.batch_size} leaves "
                f"{fewest} in the epoch's last batch of {len(self.data.train_labels)} training images: pass another "
                "--batch_size"
            )
        self.feature_shapes = {
            "teacher": teacher_shapes[config.feature_layer],
            "student": student_shapes[config.feature_layer],
        }

        self.phases = self.distiller.phases()
        self.phase_history: list[dict[str, float]] = []  # a record per preliminary epoch done (toolbox.methods.phases)
        self.optimizer, self.scheduler = self.phase_optimizer()
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.elapsed = 0.0  # seconds of training, summed over resumed sessions
        self.clock = time.perf_counter()  # when ``elapsed`` was last brought up to date
        self.position: Optional[Position] = None  # where the epoch to train next was saved, if within it
        self.position_saved = 0  # batches of the current epoch that last.pt holds (0: none)
        self.teacher_sha256: Optional[str] = None  # the teacher file's content, which a resumed run must keep
        self.curves = Curves()  # writes nothing: train() opens the run's (toolbox.training.curves)

        self.student.to(memory_format=self.memory_format)
        if config.sync_bn and self.world.distributed:  # after the optimiser: the conversion keeps the parameters
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.distiller = nn.SyncBatchNorm.convert_sync_batchnorm(self.distiller)
        first, end = share(0, min(config.batch_size, len(self.data.train_labels)), self.world.rank, self.world.size)
        full_rows = end - first  # this rank's rows of a full batch: the one shape --compile compiles for
        self.student_step = (
            FullBatchCompiled(self.student, full_rows, config.compile_mode) if config.compile else self.student
        )
        self.loss = DistillationLoss(config, self.distiller)
        self.learner = self.world.wrap(Learner(self.student_step, self.loss))
        self.teacher_step = self.teacher
        if self.teacher is not None:
            self.teacher.to(memory_format=self.memory_format)
            self.teacher_step = (
                FullBatchCompiled(self.teacher, full_rows, config.compile_mode) if config.compile else self.teacher
            )

    def _load_teacher(self) -> nn.Module:
        config = self.config
        path = Path(config.teacher_checkpoint)
        teacher = build_model(config.teacher, self.data.num_classes)
        load_checkpoint(teacher, path, "--teacher_checkpoint")
        if not all_finite(teacher):
            raise UsageError(
                f"--teacher_checkpoint {path} holds NaN or infinite weights (a diverged teacher); "
                "retrain the teacher or pass another checkpoint"
            )
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

    def where(self) -> str:
        """Where the run stands, for the line a resumed run starts with (``epoch 3 of 8, at batch 5 of
        epoch 4``; in a preliminary phase, its epochs)."""
        located = self.phase
        if located:
            phase, number = located
            done, ahead = f"{phase.name} epoch {number - 1} of {phase.epochs}", f"{phase.name} epoch {number}"
        else:
            done, ahead = f"epoch {self.epoch} of {self.config.epochs}", f"epoch {self.epoch + 1}"
        return done + (f", at batch {self.position.batch} of {ahead}" if self.position else "")

    def check_stop(self, stop: StopFlag, batch: Optional[int] = None, stopping: Optional[bool] = None) -> None:
        """``resume.check_stop`` with the epoch being trained and the last one saved named as the run
        counts them (``init epoch 2`` in RepDistiller's initialisation phase). ``stopping``: the ranks'
        agreed answer; all ranks then leave together, once the writer has saved, between epochs as
        within one: a launcher that ends the others when one exits never cuts the writer off mid-save,
        and no rank tears its connections down while another still uses them."""
        if stopping:
            self.world.barrier()
        located = self.phase
        if located:
            phase, number = located
            current = f"{phase.name} epoch {number}"
            done = f"{phase.name} epoch {number - 1}" if number > 1 else "the epochs before it"
        else:
            current = f"epoch {self.epoch + 1}"
            done = (
                f"epoch {self.epoch}" if self.epoch else f"its {self.phases[-1].name} phase" if self.phases else "none"
            )
        check_stop(stop, self.run, current, done, batch, stopping)

    def phase_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser and schedule of the phase the run is in, over the parameters it trains (the
        others frozen): the run's in its --epochs, a constant learning rate in a preliminary phase."""
        config, located = self.config, self.phase
        trained = self.distiller.trained_modules(self.student, located and located[0].name)
        parameters = train_only([self.student, self.distiller], trained)
        if located:  # RepDistiller's initialisation: plain SGD at the phase's constant learning rate
            optimizer = SGD(
                parameters,
                lr=located[0].lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                **optimizer_kernels(self.device),
            )
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

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, weight: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
            student_out, soft, distillation = self.learner(
                images, teacher_out, Step(labels, indices, epoch, phase and phase.name)
            )
            hard = F.cross_entropy(student_out[-1].float(), labels)
        if phase:  # a preliminary phase trains with its own weights of the method's loss (toolbox.methods.phases)
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
        data_epoch = (
            -len(self.phase_history) - 1 if phase else self.epoch
        )  # toolbox.methods.phases: main epochs keep their order
        done, self.position = self.position or Position(), None
        kept = done if world.is_writer else Position(done.batch)
        hard_sum, soft_sum, correct = (
            torch.tensor(value, device=self.device) for value in (kept.hard_sum, kept.soft_sum, kept.correct)
        )
        count = kept.count
        samples = len(self.data.train_labels)
        n_batches = self.steps_per_epoch
        batches = self.data.train_batches(
            config.batch_size, config.seed, data_epoch, done.batch, config.max_batches, world.rank, world.size
        )
        progress = tqdm(
            batches,
            initial=done.batch,
            total=n_batches,
            desc=f"{named}epoch {number}/{total}",
            leave=False,
            disable=not (sys.stderr.isatty() and world.is_writer),
            file=sys.stderr,
        )

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
                say(
                    named
                    + progress_line(
                        number,
                        total,
                        batch,
                        n_batches,
                        (position.count - first_count) / seconds,
                        position.means(),
                        seconds / (batch - done.batch) * (n_batches - batch),
                    )
                )
            stopping = world.any(stop.signal is not None)  # every rank stops after the same step
            if stopping or (config.checkpoint_every and batch % config.checkpoint_every == 0 and batch < n_batches):
                self.save_position(at(batch))
            self.check_stop(stop, batch, stopping)
        final = at(n_batches)
        if phase is None and self.data.reads_files:  # its test reads files too: a bad one must not cost the epoch
            self.save_position(final)
        return {**final.means(), "images_per_s": (final.count - first_count) / (time.perf_counter() - started)}

    def fit(self, stop: StopFlag, say: Callable[[str], None]) -> None:
        """Every epoch left: the preliminary phases' (``toolbox.methods.phases``), then the run's
        --epochs, each trained, checked finite, saved to last.pt and logged; a stop signal leaves
        between two steps (``Interrupted``, after saving where it stopped)."""
        while (located := self.phase) is not None:
            phase, number = located
            record = self.run_epoch(stop, say)
            self.phase_history.append({key: record[key] for key in PHASE_RECORD})  # what last.pt keeps of it
            if self.phase is None or self.phase[0] is not phase:
                self.enter_phase()  # the next phase's optimiser, or the main one's
            self.save_epoch(best=False)
            say(epoch_line(f"{phase.name} epoch {number}/{phase.epochs}", record, None, record["epoch_s"]))
        while self.epoch < self.config.epochs:
            lr = self.optimizer.param_groups[0]["lr"]  # the epoch's: the scheduler steps after it
            record = self.run_epoch(stop, say, tested=True)
            self.scheduler.step()
            best = self.epoch == 0 or record["test_acc"] > max(self.history["test_acc"])
            for key in HISTORY_KEYS:
                self.history[key].append(record[key])
            self.curves.write_epoch(self.epoch, {**record, "lr": lr})
            self.curves.flush()  # before last.pt: an epoch it holds is never missing from the curves
            self.save_epoch(best)
            say(
                epoch_line(
                    f"epoch {self.epoch}/{self.config.epochs}", record, max(self.history["test_acc"]), record["epoch_s"]
                )
            )

    def run_epoch(self, stop: StopFlag, say: Callable[[str], None], tested: bool = False) -> dict[str, float]:
        """One epoch of the phase the run is in (tested: the test set after it), checked finite; its
        record, with its seconds (``epoch_s``)."""
        self.check_stop(stop, stopping=self.world.any(stop.signal is not None))
        started = self.clock = time.perf_counter()
        record = self.train_epoch(stop, say)
        if tested:
            record.update(self.test())
        self.check_finite(record)
        self.account_time()
        return {**record, "epoch_s": time.perf_counter() - started}

    def save_epoch(self, best: bool) -> None:
        """last.pt at an epoch's end (the writer's), with the best weights and the plots after a tested epoch."""
        if self.world.is_writer:
            if best:
                atomic_torch_save(self.run.best_checkpoint(self.config.student), {"weights": self.student.state_dict()})
            atomic_torch_save(self.run.last, snapshot(self))
            if self.history["test_acc"]:
                plot_curves(self.history, self.run.path)
        self.position_saved = 0

    def save_position(self, position: Position) -> None:
        """last.pt within an epoch, once its state is checked finite (``check_finite``); the writer's."""
        self.check_finite(position.means())
        self.account_time()
        self.curves.flush()
        if self.world.is_writer:
            atomic_torch_save(self.run.last, snapshot(self, position))
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
        raise DivergedError(
            f"the run diverged in epoch {self.epoch + 1} ({shown}, or a weight is NaN or infinite); "
            f"{kept}; try a lower --lr or --beta"
        )

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
