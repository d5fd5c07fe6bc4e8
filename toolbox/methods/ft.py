"""``--distillation ft``: "Paraphrasing Complex Network: Network Compression via Factor Transfer" (Kim et
al., NeurIPS 2018), as RepDistiller computes it, with its initialisation phase.

The initialisation (``toolbox.methods.phases``, ``--init_epochs``) trains the paraphraser (an
autoencoder of the teacher's last stage) on its reconstruction, at lr 0.01 for the ResNet and WRN
students as RepDistiller; the main phase trains the student and the translator on the
factor-transfer loss (``-b 200``), the paraphraser frozen.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step, stages
from toolbox.methods.bases import INIT, InitialisedDistiller, attention_map, match_spatial

FT_FACTOR_RATE = 0.5  # RepDistiller's Paraphraser / Translator k


FT_INIT_LR = 0.01


FT_SMALL_LR_STUDENTS = frozenset(
    {
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet8x4",
        "resnet32x4",
        "wrn_16_2",
        "wrn_40_1",
        "wrn_40_2",
    }
)
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
        self.paraphraser = nn.ModuleDict(
            {
                "encoder": conv_layers((teacher_width, teacher_width, factor, factor), batch_norm=False),
                "decoder": conv_layers(
                    (factor, factor, teacher_width, teacher_width), batch_norm=False, transposed=True
                ),
            }
        )
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
