"""The shared bases of the field's methods: a published loss on selected outputs
(``BaselineDistiller``), one paired stage by stage (``StageWiseDistiller``), one with RepDistiller's
initialisation phase (``InitialisedDistiller``), and the helpers several of them use.

Each method computes what its published code computes (RepDistiller's ``distiller_zoo`` and
``train_student.py``, mdistiller's ``distillers``); its ``beta`` default is the weight of its
published CIFAR-100 runs, and its soft loss the unweighted published loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.config.choices import IMAGE_SIZES
from toolbox.errors import UsageError
from toolbox.methods.base import Distiller, Setup, Step, connector, stages
from toolbox.methods.phases import Phase
from toolbox.models import stage_shapes


class BaselineDistiller(Distiller):
    """A published loss on the outputs that ``select`` picks from each network, computed in float32
    (``precision``) outside autocast (Gram matrices, pairwise distances and logarithms of
    similarities lose too much in bf16), the teacher's detached: it is a fixed target. The loss is
    returned in float32."""

    reads_maps = False
    precision = torch.float32

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        """The outputs the method compares, from ``[stem, stage 1, ..., stage k, pooled, logits]``."""
        raise NotImplementedError

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        """The loss between the selected outputs (float32 ones in training)."""
        raise NotImplementedError

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        teacher = [out.detach().to(self.precision) for out in self.select(teacher_out)]
        student = [out.to(self.precision) for out in self.select(student_out)]
        with torch.autocast(student[0].device.type, enabled=False):
            return self.compare(teacher, student, step).float()


class StageWiseDistiller(BaselineDistiller):
    """A loss that pairs stage i of the student with stage i of the teacher, at every stage.
    RepDistiller zips the two lists and silently drops the deeper network's last stages; we refuse
    pairs whose stage counts differ."""

    @classmethod
    def check(cls, config: Config) -> None:
        super().check(config)
        size = IMAGE_SIZES[config.dataset]
        teacher, student = (len(stage_shapes(arch, image_size=size)) - 1 for arch in (config.teacher, config.student))
        if teacher != student:
            raise UsageError(
                f"--distillation {config.distillation} needs the same number of stages in teacher and "
                f"student; {config.teacher} has {teacher}, {config.student} has {student}"
            )

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return stages(outputs)


INIT = "init"
"""The name of RepDistiller's initialisation phase (logs, ``Step.phase``)."""


class InitialisedDistiller(BaselineDistiller):
    """A method with RepDistiller's initialisation phase of ``--init_epochs`` (none at 0), at the
    run's initial learning rate (``init_lr``); ``main_loss`` False: the main phase trains with the
    cross-entropy alone."""

    main_loss = True

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.init_epochs = config.init_epochs
        self.init_lr = self.init_lr_for(config)

    @classmethod
    def init_lr_for(cls, config: Config) -> float:
        """RepDistiller's ``opt.learning_rate``: the run's (0.01 for MobileNetV2 and ShuffleNet students with
        --recipe crd)."""
        return config.lr

    def phases(self) -> tuple[Phase, ...]:
        return (Phase(INIT, self.init_epochs, self.init_lr),) if self.init_epochs else ()

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        if step.phase is None and not self.main_loss:
            return student_out[-1].new_zeros((), dtype=torch.float32)
        return super().soft_loss(teacher_out, student_out, step)


def match_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the map with the larger height to the other's size, as RepDistiller's AT and
    VID do (they pool to (H, H); every CIFAR network's maps are square)."""
    if student.shape[2] > teacher.shape[2]:
        student = F.adaptive_avg_pool2d(student, teacher.shape[2:])
    elif student.shape[2] < teacher.shape[2]:
        teacher = F.adaptive_avg_pool2d(teacher, student.shape[2:])
    return student, teacher


def conv_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """RepDistiller's ``ConvReg`` convolution from the student's (C, H, W) map to the teacher's:
    the ``connector``'s choice by the size ratio, with a bias, and at equal sizes a 1x1 with a bias."""
    if tuple(student_shape[1:]) == tuple(teacher_shape[1:]):  # ConvReg's valid convolution is 1x1 there
        return nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
    return connector(student_shape, teacher_shape)


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko and Komodakis' spatial attention: the mean over channels of the squared map,
    flattened and L2-normalised per sample."""
    return F.normalize(feature.pow(2).mean(1).flatten(1))
