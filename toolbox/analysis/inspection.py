"""What the Tucker decomposition keeps of a trained network's distilled feature maps.

The computations behind ``analyzer_tucker_distillation.ipynb``. They work on one batch of maps
(B, C, H, W) decomposed as a whole, as the training loop decomposes each batch of the teacher's
maps, with the batch mode kept whole; a "channel" sweep truncates the channel mode only (the
original's ``BATCH_SIZE,r,8,8``), a "spatial" sweep both spatial modes. Errors are those of
``toolbox.tucker`` on the maps' own dtype (float32, as in training); spectra and subspaces are
computed in float64, so that they can be checked against numpy and scipy.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.config.choices import BACKENDS, HOOI_MAX_SWEEPS, MODE_NAMES
from toolbox.data_loader import Dataset, eval_batches
from toolbox.errors import UsageError
from toolbox.models import build_model, load_checkpoint
from toolbox.rundir import RunDir, default_teacher_checkpoint
from toolbox.tucker import Factors, Ranks, recompose, relative_error, tucker

SWEEPS = ("channel", "spatial")
SWEEP_VALUES = {"relative_error": "relative reconstruction error", "energy_kept": "fraction of the energy kept"}


def load_network(arch: str, checkpoint: str | Path, num_classes: int, device: torch.device | str) -> nn.Module:
    """A trained network in eval mode from a ``{"weights": state_dict}`` file."""
    path = Path(checkpoint)
    if not path.exists():
        raise UsageError(
            f"checkpoint {path} not found: train that network first, or point the notebook's parameters at its "
            ".pth file"
        )
    model = build_model(arch, num_classes)
    load_checkpoint(model, path, f"{arch} checkpoint")
    return model.to(device).eval()


def teacher_checkpoint(
    experiments_dir: str | Path, dataset: str, teacher: str, student_checkpoint: Optional[str | Path] = None
) -> Path:
    """The teacher a student's run distilled from (its config.json), else the plain run of
    ``teacher`` at the default flags."""
    if student_checkpoint:
        saved = RunDir(Path(student_checkpoint).parent).saved_config()
        if saved and saved.get("teacher_checkpoint"):
            return Path(saved["teacher_checkpoint"])
    return default_teacher_checkpoint(Config(dataset=dataset, teacher=teacher, experiments_dir=str(experiments_dir)))


def evaluation_images(dataset: Dataset, count: int) -> Tensor:
    """The first ``count`` test images, normalised as for evaluation: a fixed, reproducible batch."""
    return next(eval_batches(dataset, count))[0]


@torch.no_grad()
def feature_maps(model: nn.Module, images: Tensor, feature_layer: int) -> Tensor:
    """The distilled stage's maps (B, C, H, W), float32 on the CPU."""
    return model(images)[feature_layer].float().cpu().contiguous()


def sweep_ranks(shape: Sequence[int], sweep: str, rank: int) -> Ranks:
    """Ranks truncating the channel mode (``channel``) or both spatial modes (``spatial``) of a
    (B, C, H, W) batch to ``rank``, every other mode kept whole."""
    _, channels, height, width = shape
    if sweep == "channel":
        return (None, rank, height, width)
    if sweep == "spatial":
        return (None, channels, rank, rank)
    raise UsageError(f"sweep must be one of {', '.join(SWEEPS)}; got {sweep!r}")


def default_sweep(size: int) -> list[int]:
    """Powers of two up to a mode's size, three quarters of it, and the size itself: a
    log-spaced view that includes a quarter, half and three quarters of 64 channels."""
    return sorted(({2**k for k in range(size.bit_length())} | {3 * size // 4, size}) - {0})


def decompose(x: Tensor, ranks: Ranks, backend: str = "fast", n_iter: int = HOOI_MAX_SWEEPS) -> tuple[Tensor, Factors]:
    """``toolbox.tucker.tucker``, without tensorly's warning that the whole batch rank exceeds the
    rank of a projected unfolding: it then keeps fewer batch components, which loses nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        return tucker(x, ranks, backend=backend, n_iter=n_iter)


def energy_kept(x: Tensor, core: Tensor) -> float:
    """||core||^2 / ||x||^2: with orthonormal factors, the fraction of the map's energy that the
    decomposition keeps, which is 1 - (relative error)^2."""
    return float(torch.linalg.vector_norm(core.double()) ** 2 / torch.linalg.vector_norm(x.double()) ** 2)


def rank_sweep(
    x: Tensor, sweep: str, ranks: Optional[Sequence[int]] = None, backends: Sequence[str] = BACKENDS, n_iter: int = 0
) -> pd.DataFrame:
    """For each rank and backend: relative reconstruction error, energy kept and seconds taken.
    ``ranks`` default to ``default_sweep`` of the swept mode; ``n_iter`` HOOI sweeps refine the
    fast backend (they matter for the spatial sweep, which truncates two modes)."""
    mode = 1 if sweep == "channel" else 2
    rows = []
    for rank in ranks or default_sweep(x.shape[mode]):
        truncation = sweep_ranks(x.shape, sweep, rank)
        for backend in backends:
            started = time.perf_counter()
            core, factors = decompose(x, truncation, backend, n_iter)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "sweep": sweep,
                    "rank": rank,
                    "backend": backend,
                    "relative_error": relative_error(x, recompose(core, factors)),
                    "energy_kept": energy_kept(x, core),
                    "seconds": seconds,
                }
            )
    return pd.DataFrame(rows)


def compare_backends(table: pd.DataFrame) -> pd.DataFrame:
    """A rank sweep with the backends side by side: errors, their difference, seconds."""
    wide = table.pivot_table(index=["sweep", "rank"], columns="backend", values=["relative_error", "seconds"])
    wide.columns = [f"{value} ({backend})" for value, backend in wide.columns]
    if set(BACKENDS) <= set(table["backend"]):
        wide["error difference (fast - tensorly)"] = wide["relative_error (fast)"] - wide["relative_error (tensorly)"]
    return wide


def unfold(x: Tensor, mode: int) -> Tensor:
    """The mode-``mode`` unfolding: that mode's fibres as columns, (size, product of the others)."""
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def mode_spectra(x: Tensor) -> dict[str, np.ndarray]:
    """Singular values of each mode's unfolding, largest first (float64): how fast they fall says
    how much truncating that mode loses."""
    return {name: torch.linalg.svdvals(unfold(x.double(), mode)).numpy() for mode, name in enumerate(MODE_NAMES)}


def channel_subspace(x: Tensor, rank: int) -> Tensor:
    """An orthonormal basis (C, rank) of the leading channel subspace of a batch of maps: the
    channel factor that the tucker method projects on (float64)."""
    _, factors = tucker(
        x.double(), sweep_ranks(x.shape, "channel", rank), core="per_sample"
    )  # a subspace: no rotations
    return factors[1] if factors[1] is not None else torch.eye(x.shape[1], dtype=torch.float64)


def random_subspace(dimension: int, rank: int, seed: int = 0) -> Tensor:
    """An orthonormal basis of a uniformly random ``rank``-dimensional subspace: the angles of a
    subspace unrelated to the teacher's, for reference."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dimension, rank, generator=generator, dtype=torch.float64))
    return basis


def principal_angles(a: Tensor, b: Tensor) -> np.ndarray:
    """Principal angles in radians, smallest first, between the spans of two orthonormal bases.
    Small angles come from sines rather than cosines (as in ``scipy.linalg.subspace_angles``):
    arccos loses half the digits near zero."""
    a, b = a.double(), b.double()
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    cross = a.T @ b
    cosines = torch.linalg.svdvals(cross).clamp(max=1)  # largest first, so smallest angle first
    sines = torch.linalg.svdvals(b - a @ cross).flip(0).clamp(max=1)  # smallest first
    return torch.where(cosines**2 < 0.5, torch.arccos(cosines), torch.arcsin(sines)).numpy()


def subspace_angles(maps: dict[str, Tensor], rank: int, seed: int = 0) -> pd.DataFrame:
    """Principal angles (degrees) between the first network's rank-``rank`` channel subspace and
    each other network's, and a random subspace's as the level of chance."""
    (reference_name, reference), *others = maps.items()
    basis = channel_subspace(reference, rank)
    bases = {name: channel_subspace(x, rank) for name, x in others}
    bases["random subspace"] = random_subspace(basis.shape[0], rank, seed)
    return pd.DataFrame(
        [
            {"reference": reference_name, "compared": name, "index": index + 1, "angle_deg": float(np.degrees(angle))}
            for name, other in bases.items()
            for index, angle in enumerate(principal_angles(basis, other))
        ]
    )


def plot_rank_sweeps(table: pd.DataFrame, value: str = "relative_error") -> Figure:
    """``value`` against rank, one panel per sweep, a line per backend (fast solid, tensorly
    dashed, so that coinciding curves stay visible)."""
    sweeps = list(dict.fromkeys(table["sweep"]))
    figure, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for style, (backend, line) in zip(("o-", "x--"), table[table["sweep"] == sweep].groupby("backend", sort=False)):
            ax.plot(line["rank"], line[value], style, label=backend)
        ax.set(xlabel=f"{sweep} rank", ylabel=SWEEP_VALUES[value], title=f"{sweep} sweep")
        ax.legend()
    figure.tight_layout()
    return figure


def plot_spectra(maps: dict[str, Tensor]) -> Figure:
    """Each mode's singular values over its largest, log scale, a line per network."""
    figure, axes = plt.subplots(1, len(MODE_NAMES), figsize=(16, 3.6))
    for name, x in maps.items():
        for ax, (mode, values) in zip(axes, mode_spectra(x).items()):
            ax.semilogy(np.arange(1, len(values) + 1), values / values[0], ".-", label=name)
            ax.set(title=f"{mode} mode", xlabel="index", ylabel="singular value / largest")
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_subspace_angles(angles: pd.DataFrame, ax: Optional[Axes] = None) -> Axes:
    """Principal angles against their index, a line per compared subspace."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    for name, line in angles.groupby("compared", sort=False):
        ax.plot(
            line["index"],
            line["angle_deg"],
            marker=".",
            linestyle=":" if name == "random subspace" else "-",
            label=name,
        )
    reference = angles["reference"].iloc[0]
    ax.set(
        xlabel="index",
        ylabel="principal angle (degrees)",
        ylim=(0, 90),
        title=f"Channel subspace of {reference} against others",
    )
    ax.legend(fontsize="small")
    return ax


def _show(ax: Axes, image: Tensor, title: str, limit: float) -> AxesImage:
    """One map on a symmetric colour scale (zero is white), the same for a whole row."""
    limit = max(limit, 1e-12)  # a dead channel is all zeros
    shown = ax.imshow(image.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize="small")
    ax.set_axis_off()
    return shown


def plot_maps(maps: dict[str, Tensor], image: int = 0, channels: int = 8) -> Figure:
    """The first ``channels`` channels of one image's maps, a row per network, each row on one
    colour scale (its colour bar at the right)."""
    figure, axes = plt.subplots(
        len(maps), channels, figsize=(1.6 * channels + 1, 1.9 * len(maps)), squeeze=False, layout="constrained"
    )
    for row, (name, x) in zip(axes, maps.items()):
        limit = float(x[image, :channels].abs().max())
        for channel, ax in enumerate(row):
            shown = _show(
                ax, x[image, channel], f"{name}\nchannel {channel}" if channel == 0 else f"channel {channel}", limit
            )
        figure.colorbar(shown, ax=row, shrink=0.8)
    return figure


def channel_errors(x: Tensor, approximation: Tensor, image: int) -> Tensor:
    """Relative reconstruction error of each channel of one image's map, (C,)."""
    return torch.linalg.vector_norm(x[image] - approximation[image], dim=(1, 2)) / torch.linalg.vector_norm(
        x[image], dim=(1, 2)
    )


def plot_reconstructions(
    x: Tensor, ranks: Sequence[int], image: int = 0, channels: Sequence[int] = (0, 1, 2, 3)
) -> Figure:
    """A few channels of one image's map beside their reconstructions from channel-rank
    truncations of the whole batch (fast backend): each column's title gives the relative error
    of the whole batch, each map's the relative error of that channel of that image. A row per
    channel, on one colour scale (its colour bar at the right)."""
    approximations = {rank: recompose(*decompose(x, sweep_ranks(x.shape, "channel", rank))) for rank in ranks}
    figure, axes = plt.subplots(
        len(channels),
        1 + len(ranks),
        figsize=(2.2 * (1 + len(ranks)) + 1, 2.3 * len(channels)),
        squeeze=False,
        layout="constrained",
    )
    for index, (row, channel) in enumerate(zip(axes, channels)):
        limit = float(x[image, channel].abs().max())
        shown = _show(
            row[0], x[image, channel], f"map\nchannel {channel}" if index == 0 else f"channel {channel}", limit
        )
        for ax, (rank, approximation) in zip(row[1:], approximations.items()):
            error = f"map error {float(channel_errors(x, approximation, image)[channel]):.3f}"
            header = f"rank {rank}\nbatch error {relative_error(x, approximation):.3f}\n" if index == 0 else ""
            _show(ax, approximation[image, channel], header + error, limit)
        figure.colorbar(shown, ax=row, shrink=0.8)
    return figure
