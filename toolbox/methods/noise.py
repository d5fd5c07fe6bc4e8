"""``--distillation noise``: the original's noise-injection variant (its ``test_noise.py``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.config.naming import format_value
from toolbox.methods.base import Distiller, Setup, Step
from toolbox.methods.featuremap import normalized_distance


class NoiseDistiller(Distiller):
    """Gaussian noise is added to the student's map, a small generation module (3x3 conv, ReLU, 3x3
    conv) turns it back into a feature map, and that is pulled towards the teacher's map. The
    generation module is trained with the student (the original never gave it to the optimiser)."""

    flags = (*Distiller.flags, "noise_std")
    tag_flags = ("noise_std",)

    @classmethod
    def run_tag(cls, config: Config) -> list[str]:
        return [f"std{format_value(config.noise_std)}"]

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        channels = self.teacher_shape[0]
        self.noise_std = config.noise_std
        self.generator = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        teacher_map, student_map = self.maps(teacher_out, student_out)
        noisy = student_map + self.noise_std * torch.randn_like(student_map)
        return normalized_distance(self.generator(noisy), teacher_map, self.loss)
