"""RepDistiller's two-phase baselines: AB, FT and FSP, each with its initialisation phase.

RepDistiller's ``train_student.py`` trains these after an initialisation (``helper/pretrain.py``,
``--init_epochs 30``) that optimises the distillation loss alone, then trains as usual with the
published weights (``scripts/run_cifar_distill.sh``). Here the initialisation is the preliminary
phase ``init`` (``toolbox.phases``: its epochs come before ``--epochs``, with their own SGD at a
constant learning rate, the modules it does not train frozen in eval mode):

* AB, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"
  (Heo et al., AAAI 2019): ``init`` trains the student's stem and stages (RepDistiller's
  ``get_feat_modules()``) and the connectors on the activation-boundary loss between the
  pre-activation maps; the main phase trains the student with the cross-entropy alone (``-b 1``
  weighs a loss that RepDistiller sets to 0 there), the connectors frozen.
* FT, "Paraphrasing Complex Network: Network Compression via Factor Transfer" (Kim et al.,
  NeurIPS 2018): ``init`` trains the paraphraser (an autoencoder of the teacher's last stage) on its
  reconstruction, at lr 0.01 for the ResNet and WRN students as RepDistiller; the main phase
  trains the student and the translator on the factor-transfer loss (``-b 200``), the paraphraser
  frozen.
* FSP, "A Gift from Knowledge Distillation" (Yim et al., CVPR 2017): ``init`` trains the student's
  stem and stages on the distance between the two networks' FSP (Gram) matrices of consecutive
  activated maps; the main phase trains the student with the cross-entropy alone (``-b 50``
  weighs a loss that RepDistiller sets to 0 there).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.baselines import BaselineDistiller, StageWiseDistiller, attention_map, conv_regressor, match_spatial
from toolbox.choices import IMAGE_SIZES
from toolbox.config import Config
from toolbox.distillation import Distiller, Setup, Step, stages
from toolbox.errors import UsageError
from toolbox.models import stage_shapes
from toolbox.nets.common import feature_modules
from toolbox.phases import Phase

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
        """RepDistiller's ``opt.learning_rate``: the run's (0.01 for MobileNetV2 and ShuffleNet students with --recipe crd)."""
        return config.lr

    def phases(self) -> tuple[Phase, ...]:
        return (Phase(INIT, self.init_epochs, self.init_lr),) if self.init_epochs else ()

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        if step.phase is None and not self.main_loss:
            return student_out[-1].new_zeros((), dtype=torch.float32)
        return super().soft_loss(teacher_out, student_out, step)


# --- AB -------------------------------------------------------------------------------------------------

AB_MARGIN = 1.0  # RepDistiller's ABLoss(margin=1.0)


def ab_connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """RepDistiller's ``Connector``: nothing where width and height agree, else ``ConvReg`` without
    its ReLU (the convolution its size ratio calls for, then BatchNorm)."""
    if tuple(student_shape[:2]) == tuple(teacher_shape[:2]):
        return nn.Identity()
    return nn.Sequential(conv_regressor(student_shape, teacher_shape), nn.BatchNorm2d(teacher_shape[0]))


def activation_boundary(source: Tensor, target: Tensor, margin: float = AB_MARGIN) -> Tensor:
    """RepDistiller's ``criterion_alternative_l2``: a squared hinge pushing the student's
    pre-activation below -margin where the teacher's neuron is off and above +margin where it is
    on; summed."""
    loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0))
            + (source - margin) ** 2 * ((source <= margin) & (target > 0)))
    return loss.abs().sum()


class ABDistiller(InitialisedDistiller, StageWiseDistiller):
    """AB on every stage's pre-activation map: stage i of n weighs 2^(i-n), each stage's sum is
    divided by the batch size and scaled by 3/1000, as RepDistiller's ``ABLoss``. Trained: in
    ``init`` the connectors and the student but its head; afterwards the student."""

    student_preact = teacher_preact = True
    main_loss = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}  # -b 1, on a main-phase loss of 0
    flags = ("init_epochs",)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        pairs = zip(stages(setup.student_shapes), stages(setup.teacher_shapes))
        self.connectors = nn.ModuleList(ab_connector(s, t) for s, t in pairs)

    def trained_modules(self, student: nn.Module, phase: str | None) -> list[nn.Module]:
        return [*feature_modules(student), self.connectors] if phase == INIT else [student]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        count, batch = len(student), len(student[0])
        total = student[0].new_zeros(())
        for index, (s, t, connector) in enumerate(zip(student, teacher, self.connectors)):
            total = total + 2.0 ** (index - count + 1) * activation_boundary(connector(s), t) / batch / 1000 * 3
        return total


# --- FT -------------------------------------------------------------------------------------------------

FT_FACTOR_RATE = 0.5  # RepDistiller's Paraphraser / Translator k
FT_INIT_LR = 0.01
FT_SMALL_LR_STUDENTS = frozenset({"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                  "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2"})
"""The students RepDistiller's ``pretrain.init`` trains FT's paraphraser for at lr 0.01."""


def conv_layers(widths: Sequence[int], batch_norm: bool, transposed: bool = False) -> nn.Sequential:
    """3x3 stride-1 (transposed) convolutions between consecutive ``widths``, each followed by
    BatchNorm (if ``batch_norm``) and LeakyReLU(0.1): RepDistiller's paraphraser and translator."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers.append(conv(width_in, width_out, 3, 1, 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class FTDistiller(InitialisedDistiller):
    """FT on the last stage's maps: the paraphraser's encoder (no BatchNorm, as RepDistiller builds
    it) gives the teacher's factor, the translator (with BatchNorm) the student's; the loss is the
    mean absolute difference of their normalised spatial attention (the channel mean of the squared
    factor), the larger factor average-pooled to the other's size. In ``init`` the paraphraser
    learns to reconstruct the teacher's map through its decoder (mean squared error)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 200.0}  # -b 200 (CE weight 1)
    flags = ("beta", "init_epochs")

    @classmethod
    def init_lr_for(cls, config: Config) -> float:
        return FT_INIT_LR if config.student in FT_SMALL_LR_STUDENTS else config.lr

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        teacher_width, student_width = stages(setup.teacher_shapes)[-1][0], stages(setup.student_shapes)[-1][0]
        factor = int(teacher_width * FT_FACTOR_RATE)
        self.paraphraser = nn.ModuleDict({
            "encoder": conv_layers((teacher_width, teacher_width, factor, factor), batch_norm=False),
            "decoder": conv_layers((factor, factor, teacher_width, teacher_width), batch_norm=False, transposed=True),
        })
        self.translator = conv_layers((student_width, student_width, factor, factor), batch_norm=True)

    def trained_modules(self, student: nn.Module, phase: str | None) -> list[nn.Module]:
        return [self.paraphraser] if phase == INIT else [student, self.translator]

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [stages(outputs)[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        factor_t = self.paraphraser["encoder"](teacher[0])
        if step.phase == INIT:
            return F.mse_loss(self.paraphraser["decoder"](factor_t), teacher[0])
        factor_s, factor_t = match_spatial(self.translator(student[0]), factor_t)
        return (attention_map(factor_s) - attention_map(factor_t)).abs().mean()


# --- FSP ------------------------------------------------------------------------------------------------

def fsp_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """The FSP matrix of each pair of consecutive maps, (B, C_next, C): the mean over positions of
    the products of their channels, the larger map average-pooled to the other's size first."""
    matrices = []
    for bottom, top in zip(maps[:-1], maps[1:]):
        top, bottom = match_spatial(top, bottom)
        matrices.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / bottom[0, 0].numel())
    return matrices


class FSPDistiller(InitialisedDistiller):
    """FSP on the stem's and every stage's activated maps (RepDistiller's ``feat[:-1]``): the sum
    over consecutive pairs of the mean squared difference of the two networks' FSP matrices,
    which needs the same widths in both. Trained: in ``init`` the student but its head; afterwards
    the student."""

    main_loss = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 50.0}  # -b 50, on a main-phase loss of 0
    flags = ("init_epochs",)

    @classmethod
    def check(cls, config: Config) -> None:
        super().check(config)
        size = IMAGE_SIZES[config.dataset]
        widths = {arch: [shape[0] for shape in stage_shapes(arch, image_size=size)] for arch in (config.teacher, config.student)}
        if widths[config.teacher] != widths[config.student]:
            listed = "; ".join(f"{arch} has {', '.join(map(str, channels))}" for arch, channels in widths.items())
            raise UsageError(f"--distillation fsp compares FSP matrices entry by entry, so it needs the same widths in "
                             f"teacher and student at the stem and every stage; {listed}")

    def trained_modules(self, student: nn.Module, phase: str | None) -> list[nn.Module]:
        return feature_modules(student) if phase == INIT else [student]

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return outputs[:-2]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        pairs = zip(fsp_matrices(student), fsp_matrices(teacher))
        return sum((s - t).pow(2).mean() for s, t in pairs)
