"""The interface every method implements: ``Distiller``, built for a ``Setup``, called with a ``Step``.

A distiller is built for a ``Setup`` (the shapes of every output of both networks, the training
labels) and turns the teacher's and the student's outputs (``[stem, stage 1, ..., stage k, pooled,
logits]``) and the ``Step`` (labels, sample indices, epoch) into the soft loss; the training loop
computes ``ce_weight * cross-entropy + beta * soft_loss`` (plus what ``toolbox.methods.loss`` adds
to any method) and knows no method by name. A distiller's own modules (connectors, regressors,
embeddings, a memory bank) are trained and checkpointed with the student. A method may also read
the stages' maps before their last ReLU (``student_preact``, ``teacher_preact``), run the teacher
in training mode (``teacher_train_mode``), and train in phases (``phases``, ``trained_modules``:
``toolbox.methods.phases``). Each method is one file of this package, named by its
``--distillation`` name, and one line of the list in ``toolbox/methods/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import Tensor, nn

from toolbox.config.choices import IMAGE_SIZES
from toolbox.distributed import World
from toolbox.errors import UsageError
from toolbox.methods.phases import Phase
from toolbox.models import stage_shapes

if TYPE_CHECKING:
    from toolbox.config import Config

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Setup:
    """What a distiller is built for."""

    teacher_shapes: tuple[Shape, ...]  # per sample, of every output: stem, stages, pooled, logits
    student_shapes: tuple[Shape, ...]
    train_labels: Tensor  # of the whole training set, by sample index (CRD draws negatives from other classes)
    world: World = field(
        default_factory=World
    )  # the ranks training together (CRD's memory bank sees all their batches)
    teacher: nn.Module | None = None  # the trained teacher, read once (OFD's margins come from its BatchNorms)

    @classmethod
    def of(
        cls,
        teacher_out: Sequence[Tensor],
        student_out: Sequence[Tensor],
        train_labels: Tensor | None = None,
        teacher: nn.Module | None = None,
    ) -> Setup:
        """The setup of two networks' outputs on one batch (tests, benchmarks, notebooks)."""
        shapes = [tuple(tuple(out.shape[1:]) for out in outs) for outs in (teacher_out, student_out)]
        labels = train_labels if train_labels is not None else torch.zeros(0, dtype=torch.long)
        return cls(shapes[0], shapes[1], labels, teacher=teacher)


@dataclass(frozen=True)
class Step:
    """What a training step knows besides the outputs."""

    labels: Tensor
    indices: Tensor  # of the batch's samples in the training set
    epoch: int  # from 1, within the phase
    phase: str | None = None  # the preliminary phase's name (``Distiller.phases``); None in the run's --epochs


def stages(outputs: Sequence[Any]) -> Sequence[Any]:
    """The stages of an output list (or of its shapes): without the stem, the pooled features and the logits."""
    return outputs[1:-2]


def connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """A learnable map from the student's (C, H, W) stage to the teacher's, on the student side:
    nothing when they agree, a 1x1 convolution when only the widths differ, and where the sizes
    differ too, the convolution RepDistiller's regressor chooses by the size ratio (3x3 stride 2 to
    halve, a 4x4 transposed convolution to double, else a valid convolution that shrinks to fit)."""
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student_shape, teacher_shape
    if (s_h, s_w) == (t_h, t_w):
        return nn.Identity() if s_c == t_c else nn.Conv2d(s_c, t_c, kernel_size=1, bias=False)
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        return nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    if (2 * s_h, 2 * s_w) == (t_h, t_w):
        return nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    if s_h >= t_h and s_w >= t_w:
        return nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    raise UsageError(
        f"--feature_layer: the student's map {'x'.join(map(str, student_shape))} cannot be mapped onto the "
        f"teacher's {'x'.join(map(str, teacher_shape))}; choose another --feature_layer"
    )


class Distiller(nn.Module):
    """Base class: the soft loss between teacher and student outputs (zero when not distilling)."""

    needs_teacher = True
    reads_maps = True  # False: no connector is built (it would be trained and saved for nothing)
    defaults: dict[str, Any] = {
        "beta": 125.0,
        "ce_weight": 1.0,
        "feature_layer": 3,  # the original study's
        "kd_weight": 0.0,
        "logit_standardization": False,
        "optimizer": "sgd",
        "dot_delta": 0.075,
    }
    """Values of flags left unset (None) on the command line, where they depend on the method (the
    loss's additions and the optimiser are here so that a teacher's run never inherits a student's)."""
    flags: tuple[str, ...] = ("feature_layer", "loss", "beta")
    """The method's own flags: the others do not change what it computes. A run's name and its
    identity (resume, skip when finished, the notebooks' grouping) take these into account."""
    tag_flags: tuple[str, ...] = ()
    """The flags that ``run_tag`` spells out in the run's name; other flags that differ from their
    defaults are appended to the name as ``flag=value``."""
    student_preact = False
    teacher_preact = False
    """Whether the method reads that network's stages before their last ReLU (``forward(x, preact=True)``)."""
    min_rows = 1
    """The fewest samples a batch (each rank's part of it) may hold for the method's modules to train:
    2 where one normalises over the batch at a 1x1 map (ReviewKD's fusion of the pooled features)."""
    teacher_train_mode = False
    """Whether the teacher runs in training mode (BatchNorm on the batch's statistics) while the
    student trains: OFD's published code does so; the teacher is never trained either way."""

    @classmethod
    def run_tag(cls, config: Config) -> list[str]:
        """Folder names after the method's name, e.g. ``["B-32-8-8"]`` for ``tucker``."""
        return [str(getattr(config, flag)) for flag in cls.tag_flags]

    @classmethod
    def check(cls, config: Config) -> None:
        """Refuse a configuration the method cannot train, from the flags alone: ``resolve`` calls
        it, so runner.py refuses such a run before submitting anything. Here: ``--feature_layer``
        names a stage that both networks have, the loss's additions have what they need."""
        archs = [config.student, config.teacher] if cls.needs_teacher else [config.student]
        last = min(len(stage_shapes(arch, image_size=IMAGE_SIZES[config.dataset])) - 1 for arch in archs)
        if not 0 <= config.feature_layer <= last:
            raise UsageError(
                f"--feature_layer must be from 0 (the stem) to {last} for {' and '.join(archs)}; "
                f"got {config.feature_layer}"
            )
        if not cls.needs_teacher and (config.kd_weight or config.optimizer == "dot"):
            raise UsageError(
                f"--kd_weight and --optimizer dot need a teacher's loss; --distillation {config.distillation} "
                "trains without a teacher: leave them out"
            )
        if config.optimizer == "dot" and (config.dot_delta or 0.0) > config.momentum:
            raise UsageError(
                f"--dot_delta must be at most --momentum ({config.momentum:g}): the cross-entropy's momentum "
                f"is their difference; got {config.dot_delta:g}"
            )
        if config.logit_standardization and "logit_standardization" not in cls.flags:
            from toolbox.methods import DISTILLERS

            published = [name for name, method in DISTILLERS.items() if "logit_standardization" in method.flags]
            raise UsageError(
                f"--logit_standardization applies to {' and '.join(published)}, the methods it was "
                f"published for; --distillation {config.distillation} is not one of them: leave it out"
            )

    @classmethod
    def defaults_for(cls, config: Config) -> dict[str, Any]:
        """The method's defaults for this run (a method may choose some per architecture pair)."""
        return cls.defaults

    recipes: dict[str, dict[str, Any]] = {}
    """What a ``--recipe`` sets for this method's runs beyond the recipe's own values: the published
    settings of the recipe's source (mdistiller's configs/imagenet/*/<method>.yaml for 'imagenet').
    Read when the flags are parsed, so that the command line still overrides them."""

    @classmethod
    def standardization_defaults(cls, recipe: str, teacher: Optional[str], student: str) -> dict[str, Any]:
        """The temperature and weights a run with ``--logit_standardization`` takes unless they are
        given (Sun et al.'s published settings); only methods with that flag define them."""
        return {}

    def __init__(self, config: Config, setup: Setup) -> None:
        self.check(config)
        super().__init__()
        self.layer = config.feature_layer  # output 0 is the stem, k the k-th stage
        self.loss = config.loss
        self.teacher_shape = setup.teacher_shapes[self.layer]  # the distilled stage, (C, H, W)
        self.student_shape = setup.student_shapes[self.layer]
        self.connector = connector(self.student_shape, self.teacher_shape) if self.reads_maps else nn.Identity()

    def phases(self) -> tuple[Phase, ...]:
        """The phases trained before the run's --epochs, in order (``toolbox.methods.phases``); none by default."""
        return ()

    def trained_modules(self, student: nn.Module, phase: str | None) -> list[nn.Module]:
        """The modules that ``phase`` trains (None: the run's --epochs): in training mode, their
        parameters the optimiser's; the student's and the distiller's others run in eval mode, frozen."""
        return [student, self]

    def maps(self, teacher_out: list[Tensor], student_out: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The distilled stage of each network, the student's passed through the connector; the
        teacher's is a fixed target, detached even if a caller forgot ``torch.no_grad``."""
        return teacher_out[self.layer].detach(), self.connector(student_out[self.layer])

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        raise NotImplementedError
