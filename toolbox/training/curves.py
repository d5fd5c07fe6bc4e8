"""Live curves: TensorBoard event files in every run folder, for ``tensorboard --logdir experiments``.

The run folder's own event files hold one point per epoch (``EPOCH_TAGS``: the training
cross-entropy, distillation loss and accuracy, the test loss and accuracy, the learning rate, the
epoch's seconds and images/s, of an epoch resumed mid-way this session's part of it) at step = the
epoch's number, under the same names for every method, so that the runs of a sweep compare in the
same charts, each named as its folder is. With ``--tensorboard_every N``, ``steps/`` holds the
cross-entropy and distillation loss of every N-th training step (``STEP_TAGS``) at step = training
steps since the run began: a TensorBoard run of its own, since its steps are not epochs.

The writer (rank 0) alone writes them. A step's losses stay on the device until the loop reads its
sums anyway (a progress line, a checkpoint, the epoch's end), so logging them never makes a step
wait for the GPU; under torchrun they are then averaged over the ranks' rows, as the epoch's are.

A resumed run continues its curves. Each session opens new event files that begin with
TensorBoard's purge mark (``SummaryWriter(purge_step=...)``) at the first epoch and step it trains:
TensorBoard drops whatever an earlier session wrote from there on, i.e. the part of a killed epoch
that last.pt does not hold and that is trained again, so no epoch or step is shown twice. The
events are flushed before every write of last.pt, so none that last.pt holds is missing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor

from toolbox.distributed import World
from toolbox.errors import UsageError
from toolbox.rundir import EVENT_FILE, RunDir

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

EPOCH_TAGS = {
    "train_hard_loss": "loss/train_cross_entropy",
    "train_soft_loss": "loss/train_distillation",
    "test_loss": "loss/test_cross_entropy",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "lr": "schedule/learning_rate",
    "epoch_s": "speed/epoch_seconds",
    "images_per_s": "speed/train_images_per_second",
}
"""An epoch's values (the keys of the loop's record) -> their scalar names."""
STEP_TAGS = ("step/train_cross_entropy", "step/train_distillation")
"""The scalar names of a step's cross-entropy and distillation loss."""


class Curves:
    """A session's TensorBoard scalars. Without writers (another rank than the writer, a benchmark)
    it writes nothing, but it still keeps the steps' losses: every rank takes part in their mean."""

    def __init__(
        self,
        every: int = 0,
        epochs: Optional[SummaryWriter] = None,
        steps: Optional[SummaryWriter] = None,
        printing_hook: Optional[Callable[[threading.ExceptHookArgs], object]] = None,
    ) -> None:
        """``printing_hook``: the writers were opened with the writer threads' failures left
        unprinted already (``open_curves``), and this is the hook that was there before."""
        self.every = every
        self.epoch_writer = epochs
        self.step_writer = steps
        self.printing_hook = printing_hook
        self.kept: list[tuple[int, int, Tensor]] = []  # (step, rows, [cross-entropy, distillation]), on the device

    def add_step(self, step: int, hard: Tensor, soft: Tensor, rows: int) -> None:
        """Keep the losses of training step ``step`` (1: the run's first) over this rank's ``rows``
        if it is one of every ``every``-th."""
        if self.every and step % self.every == 0:
            self.kept.append((step, rows, torch.stack((hard.float(), soft.float()))))

    def write_steps(self, world: World) -> None:
        """Read the kept losses in one go and hand them to the writer, each step's the mean over
        the rows of all ranks. Every rank calls it at the same points, with as many steps kept."""
        if not self.kept:
            return
        steps, rows, losses = zip(*self.kept)
        self.kept = []
        counts = torch.tensor(rows, dtype=torch.float64, device=losses[0].device)[:, None]
        sums = world.all_reduce_sum(torch.cat((torch.stack(losses).double() * counts, counts), dim=1)).tolist()
        if self.step_writer is not None:
            with naming_the_file(self.step_writer):
                for step, (hard, soft, count) in zip(steps, sums):
                    self.step_writer.add_scalar(STEP_TAGS[0], hard / count, step)
                    self.step_writer.add_scalar(STEP_TAGS[1], soft / count, step)

    def write_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """The scalars of epoch ``epoch`` (1: the first) from ``values`` (``EPOCH_TAGS``' keys)."""
        if self.epoch_writer is not None:
            with naming_the_file(self.epoch_writer):
                for key, tag in EPOCH_TAGS.items():
                    self.epoch_writer.add_scalar(tag, values[key], epoch)

    def writers(self) -> list[SummaryWriter]:
        return [writer for writer in (self.epoch_writer, self.step_writer) if writer is not None]

    def flush(self) -> None:
        """Into the event files: called before last.pt is written, so that what it holds is there."""
        for writer in self.writers():
            with naming_the_file(writer):
                writer.flush()

    def close(self) -> None:
        for writer in self.writers():
            with naming_the_file(writer):
                writer.close()

    def __enter__(self) -> Curves:
        if self.printing_hook is None:
            self.printing_hook = quiet_threads()
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], traceback: Any) -> None:
        try:
            if error is None:
                self.close()  # a failed write is the run's error
                return
            with contextlib.suppress(OSError):  # the error that stopped the run is the one to report (a full disk ...)
                self.close()
        finally:
            threading.excepthook = self.printing_hook


@contextlib.contextmanager
def naming_the_file(writer: SummaryWriter | Path) -> Iterator[None]:
    """A failed write of an event file (a full disk) as an OSError that names the file (or, for a
    writer being opened, its folder), for the one-line message of exit status 74: the writer's
    thread raises it without a name."""
    try:
        yield
    except OSError as error:
        if error.filename:
            raise
        where = (
            writer
            if isinstance(writer, Path)
            else getattr(writer.file_writer.event_writer, "_file_name", writer.get_logdir())
        )
        raise OSError(error.errno, error.strerror or str(error), str(where)) from None


def quiet_writer_threads(
    printing_hook: Callable[[threading.ExceptHookArgs], object], args: threading.ExceptHookArgs
) -> None:
    """``threading.excepthook`` while a run's curves are open: a failed write of TensorBoard's writer
    thread is left unprinted (the thread keeps the error, and the training's next call on the writer
    raises it, as one line); any other thread's error goes to ``printing_hook``, the hook before."""
    if not (type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError)):
        printing_hook(args)


def quiet_threads() -> Callable[[threading.ExceptHookArgs], object]:
    """Leave the writer threads' failed writes unprinted from now on (``quiet_writer_threads``); the
    hook that was there, to put back."""
    printing_hook = threading.excepthook
    threading.excepthook = functools.partial(quiet_writer_threads, printing_hook)
    return printing_hook


def curves_folder(folder: Path) -> Path:
    """``folder`` (the run folder or its steps/), made if needed, ready for a new event file:
    neither it nor an event file in it may be a symbolic link, which the writer would follow."""
    if folder.is_symlink():
        raise UsageError(
            f"{folder} is a symbolic link, and the project never writes through one; it was left as it is: "
            "remove the link, then rerun"
        )
    try:
        folder.mkdir(exist_ok=True)
    except FileExistsError:
        raise UsageError(
            f"{folder} is not a folder, and the run's curves go there; it was left as it is: move it away, then rerun"
        ) from None
    linked = sorted(entry for entry in folder.iterdir() if EVENT_FILE.fullmatch(entry.name) and entry.is_symlink())
    if linked:
        raise UsageError(
            f"{linked[0]} is a symbolic link, and the project never writes through one; it was left as it "
            "is: remove the link, then rerun"
        )
    return folder


def after_earlier_sessions(folders: list[Path]) -> None:
    """TensorBoard reads a folder's event files in the order of their names, which begin with the
    second the file was opened: a session that starts within the second of the newest file there (a
    run resumed at once, in the same process) waits for the next one, or its purge mark would come
    first. A clock more than two seconds behind the newest file is not waited for."""
    stamps = [
        int(match.group(1))
        for folder in folders
        for entry in os.scandir(folder)
        if (match := EVENT_FILE.fullmatch(entry.name))
    ]
    wait = max(stamps, default=0) + 1 - time.time()
    if 0 < wait <= 2:
        time.sleep(wait)


def open_curves(run: RunDir, every: int, epochs_done: int, steps_done: int, writer: bool) -> Curves:
    """The curves of a session that resumes after ``epochs_done`` epochs and ``steps_done``
    training steps (0, 0: a new run). In the writer's process: new event files, marked to drop what
    an earlier session wrote from the next epoch and step on."""
    if not writer:
        return Curves(every)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise UsageError(
            f"TensorBoard is not installed ({error}), and every run writes its curves with it: install "
            "requirements.txt (pip install -r requirements.txt), then rerun"
        ) from None
    epoch_folder, step_folder = curves_folder(run.path), curves_folder(run.steps) if every else None
    after_earlier_sessions([epoch_folder, *([step_folder] if step_folder else [])])
    printing_hook = quiet_threads()  # from the first write: a writer's thread can fail as soon as it starts
    opened: list[SummaryWriter] = []
    try:
        for folder, purge_step in ((epoch_folder, epochs_done + 1), (step_folder, steps_done + 1)):
            if folder is not None:
                with naming_the_file(folder):
                    opened.append(SummaryWriter(str(folder), purge_step=purge_step))
    except BaseException:
        for writer in opened:
            with contextlib.suppress(OSError):
                writer.close()
        threading.excepthook = printing_hook
        raise
    return Curves(every, opened[0], opened[1] if step_folder else None, printing_hook)
