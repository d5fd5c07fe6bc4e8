"""Where a run is within an epoch: the position a mid-epoch last.pt records, and progress lines.

An ImageNet epoch is hours long, so a run saves within it (``--checkpoint_every``, and where a
stop signal arrives) and says how it goes (``--log_every``). A saved position is the number of
batches done and the epoch's partial sums of the training metrics; the resumed epoch starts at
that batch with those sums, and ends as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Position:
    """An epoch's batches done, and the sums over them of cross-entropy x batch size, soft loss x
    batch size and correct predictions, with the number of samples."""

    batch: int = 0
    hard_sum: float = 0.0
    soft_sum: float = 0.0
    correct: float = 0.0
    count: int = 0

    def means(self) -> dict[str, float]:
        """The epoch's training metrics so far, as the history records them."""
        count = max(self.count, 1)
        return {"train_hard_loss": self.hard_sum / count, "train_soft_loss": self.soft_sum / count,
                "train_acc": 100.0 * self.correct / count}


def position_problem(entry: Any) -> Optional[str]:
    """What makes a last.pt's ``position`` entry unusable, or None (None itself: an epoch's end)."""
    if entry is None:
        return None
    names = {item.name for item in dataclasses.fields(Position)}
    if not isinstance(entry, dict) or set(entry) != names:
        return f"its 'position' entry is not a dict of {', '.join(sorted(names))}"
    counts_ok = all(isinstance(entry[key], int) and not isinstance(entry[key], bool) and entry[key] >= 0 for key in ("batch", "count"))
    sums_ok = all(isinstance(entry[key], float) and math.isfinite(entry[key]) for key in ("hard_sum", "soft_sum", "correct"))
    return None if counts_ok and sums_ok else "its 'position' entry holds other than counts and finite sums"


def format_duration(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds)."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def progress_line(epoch: int, epochs: int, batch: int, steps: int, images_per_s: float, position: Position, eta_s: float) -> str:
    """One plain line for logs (tqdm draws a bar on a terminal only)."""
    means = position.means()
    return (f"epoch {epoch}/{epochs}  step {batch}/{steps}  {images_per_s:.0f} images/s  "
            f"cross-entropy {means['train_hard_loss']:.4f}  distillation {means['train_soft_loss']:.4g}  "
            f"train {means['train_acc']:.2f}%  ETA {format_duration(eta_s)}")
