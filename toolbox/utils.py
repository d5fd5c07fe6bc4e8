"""Small shared pieces: atomic writes, seeding, device choice, evaluation and the two plots."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.errors import NotRegular, UsageError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` then rename it onto ``path``: readers (and a run killed
    half-way) see the old file or the new one, never a torn one. A failure is an OSError naming
    ``path`` (not the temporary) and the OS's reason."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    create_temporary(temporary)
    try:
        try:
            write(temporary)
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            if error.errno == errno.EISDIR:  # a folder in the way is bad input, not a failed write
                raise NotRegular(path, "a folder") from None
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        except (
            RuntimeError
        ) as error:  # torch.save reports a failed write this way ("unexpected pos ..."), without the reason
            if shutil.disk_usage(path.parent).free < 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise OSError(errno.EIO, f"writing failed ({' '.join(str(error).split())[:120]})", str(path)) from None
    finally:
        temporary.unlink(missing_ok=True)


def create_temporary(temporary: Path) -> None:
    """Create the temporary file afresh, never through a symbolic link planted at its name (which
    would have the write go to the file it points to); a stale one of a killed write is replaced."""
    for attempt in range(2):
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            return
        except FileExistsError:
            if attempt or temporary.is_symlink():
                raise UsageError(
                    f"{temporary} is in the way (a symbolic link or a file being written); it was left "
                    "as it is: remove it, then rerun"
                ) from None
            temporary.unlink()


def atomic_write_json(path: Path, data: Any) -> None:
    """Strict JSON (a NaN is an error, never written), atomically."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def markdown_cell(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, None blank."""
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A GitHub Markdown table of ready-made cells; ``right[i]`` right-aligns column ``i``."""
    align = [right[i] if i < len(right) else False for i in range(len(header))]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if r else "---" for r in align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an unavailable device is a clear error, not a crash later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    autocast: Callable,
    reduce: Callable[[Tensor], Tensor] = lambda sums: sums,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in percent; sums stay on the device until the end, where
    ``reduce`` adds up the (loss, correct, count) sums of the ranks that share the test set."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in batches:
        with autocast():
            logits = model(images)[-1]
        loss_sum = loss_sum + F.cross_entropy(logits.float(), labels, reduction="sum")
        correct = correct + (logits.argmax(1) == labels).sum()
        count += len(labels)
    loss_sum, correct, count = reduce(
        torch.tensor([float(loss_sum), float(correct), count], dtype=torch.float64)
    ).tolist()
    return loss_sum / count, 100.0 * correct / count


def plot_curves(history: dict[str, list[float]], folder: Path) -> None:
    """``Loss.png`` (log scale; train dotted, test solid; the distillation loss only for a run that
    has one) and ``Accuracy.png`` (a line and a mark at the best test accuracy, named in the
    legend), drawn as the original study drew them."""
    from matplotlib.figure import Figure  # loaded when a run first plots; no pyplot: no backend, no display

    epochs = range(1, len(history["test_acc"]) + 1)

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    axes.plot(epochs, history["train_hard_loss"], ":", label="train cross-entropy")
    if any(history["train_soft_loss"]):
        axes.plot(epochs, history["train_soft_loss"], ":", label="train distillation loss")
    axes.plot(epochs, history["test_loss"], "-", label="test cross-entropy")
    axes.set(xlabel="epoch", ylabel="loss", yscale="log", title="Loss")
    axes.legend()
    figure.tight_layout()
    atomic_write(folder / "Loss.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))

    best = int(np.argmax(history["test_acc"]))
    best_acc = history["test_acc"][best]
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    axes.plot(epochs, history["train_acc"], ":", label="train")
    axes.plot(epochs, history["test_acc"], "-", label="test")
    axes.axhline(best_acc, color="grey", linewidth=0.8)  # the legend labels it: a label by the line left the frame
    axes.plot(best + 1, best_acc, "o", color="grey", label=f"best {best_acc:.2f}% (epoch {best + 1})")
    axes.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    axes.legend(loc="lower right")
    figure.tight_layout()
    atomic_write(folder / "Accuracy.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def environment() -> dict[str, Any]:
    """Library versions and the git commit, saved with each run so results can be traced."""
    import tensorly

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "torch": torch.__version__,
        "tensorly": tensorly.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": commit,
    }
