"""The field's distillation baselines, behind the ``Distiller`` interface of ``toolbox.distillation``.

Each computes what the published code computes: FitNet, AT, SP, PKT, RKD and VID as RepDistiller
(the CRD paper's benchmark, ``distiller_zoo`` and ``train_student.py``) computes them, DKD as
mdistiller does. Each method's ``beta`` default is the weight of its published CIFAR-100 runs
(RepDistiller's ``-b``, mdistiller's configs), and its soft loss is the unweighted published loss.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.choices import IMAGE_SIZES
from toolbox.config import Config
from toolbox.distillation import Distiller, Setup, Step, connector, stages
from toolbox.errors import UsageError
from toolbox.logit_settings import DKD_BETA, DKD_DEFAULT_BETA
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
            raise UsageError(f"--distillation {config.distillation} needs the same number of stages in teacher and "
                             f"student; {config.teacher} has {teacher}, {config.student} has {student}")

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return stages(outputs)


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


class FitNetDistiller(BaselineDistiller):
    """FitNets (Romero et al., 2015): the student's hint-layer map, through a trained regressor
    (RepDistiller's ConvReg: a convolution chosen by the size ratio, BatchNorm, ReLU), regressed
    onto the teacher's map by mean squared error."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 100.0, "feature_layer": 2}
    flags = ("feature_layer", "beta")

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        conv = conv_regressor(self.student_shape, self.teacher_shape)
        self.regressor = nn.Sequential(conv, nn.BatchNorm2d(self.teacher_shape[0]), nn.ReLU())

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[self.layer]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return F.mse_loss(self.regressor(student[0]), teacher[0])


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko and Komodakis' spatial attention: the mean over channels of the squared map,
    flattened and L2-normalised per sample."""
    return F.normalize(feature.pow(2).mean(1).flatten(1))


class AttentionDistiller(StageWiseDistiller):
    """Attention Transfer (Zagoruyko & Komodakis, 2017): at every stage, the mean squared
    difference between the two networks' normalised attention maps, summed over the stages."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1000.0}
    flags = ("beta",)

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        pairs = (match_spatial(s, t) for s, t in zip(student, teacher))
        return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in pairs)


def similarity_matrix(feature: Tensor) -> Tensor:
    """The batch's Gram matrix of flattened maps, each row L2-normalised."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.T)


class SimilarityDistiller(BaselineDistiller):
    """Similarity-Preserving KD (Tung & Mori, 2019): the squared Frobenius distance between the
    row-normalised batch similarity matrices of the last stage's maps, divided by the squared
    batch size."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 3000.0}
    flags = ("beta",)
    precision = torch.float64  # a small difference of near-equal normalised Gram matrices: float32 keeps ~1e-5 of it

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [stages(outputs)[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return (similarity_matrix(teacher[0]) - similarity_matrix(student[0])).pow(2).sum() / len(student[0]) ** 2


PKT_EPS = 1e-7  # RepDistiller's cosine_similarity_loss


def pkt_probabilities(feature: Tensor) -> Tensor:
    """Each sample's cosine similarities to the batch, mapped to [0, 1] and normalised to sum 1.
    At an all-zero feature the gradient is the formula's derivative there (that of x / (|x| + eps):
    I / eps), where RepDistiller's, through the square root of the zero sum of squares, is NaN."""
    unit = feature / (torch.linalg.vector_norm(feature, dim=1, keepdim=True) + PKT_EPS)
    unit = unit.masked_fill(unit.isnan(), 0.0)  # as published: NaN features count as zero
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


class PKTDistiller(BaselineDistiller):
    """Probabilistic Knowledge Transfer (Passalis & Tefas, 2018): KL divergence between the
    teacher's and the student's conditional distributions of cosine similarities among the batch's
    pooled features, averaged over the batch-by-batch entries."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 30000.0}
    flags = ("beta",)
    precision = torch.float64  # logarithms of ratios of near-equal probabilities: float32 keeps ~1e-4 of the loss

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-2]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        target, model = pkt_probabilities(teacher[0]), pkt_probabilities(student[0])
        return (target * torch.log((target + PKT_EPS) / (model + PKT_EPS))).mean()


def rkd_distances(feature: Tensor) -> Tensor:
    """Pairwise Euclidean distances (squares clamped at 1e-12, a zero diagonal) divided by their
    mean over the pairs at positive distance; all zeros where there is no pair (a one-sample batch),
    whose mean RepDistiller's 0/0 makes NaN."""
    squares = feature.pow(2).sum(1)
    distances = (squares[:, None] + squares[None, :] - 2 * feature @ feature.T).clamp(min=1e-12).sqrt()
    distances = distances.masked_fill(torch.eye(len(feature), dtype=torch.bool, device=feature.device), 0.0)
    mean = distances.sum() / (distances > 0).sum().clamp(min=1)  # the mean of d[d > 0], without a device sync
    return distances / torch.where(mean > 0, mean, torch.ones_like(mean))


def rkd_angles(feature: Tensor) -> Tensor:
    """Cosines of the angles at every sample between the directions to every pair of samples."""
    directions = F.normalize(feature[None, :, :] - feature[:, None, :], dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


class RKDDistiller(BaselineDistiller):
    """Relational KD (Park et al., 2019): smooth-L1 losses between the two networks' normalised
    pairwise distances (weighted by ``--rkd_distance``) and triplet angles (``--rkd_angle``) of the
    batch's pooled features. A batch of one sample (the last of an epoch can be) has no pair and no
    triplet: both terms are 0 for that step, where RepDistiller's distance term is NaN."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}
    flags = ("beta", "rkd_distance", "rkd_angle")
    # distances of samples close together far from the origin, from |a|^2 + |b|^2 - 2 a.b: float32 kept
    # 1e-4 of the loss and 7e-3 of the gradient on a briefly trained MobileNetV2's pooled features
    precision = torch.float64

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.distance_weight = config.rkd_distance
        self.angle_weight = config.rkd_angle

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-2]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        t, s = teacher[0].flatten(1), student[0].flatten(1)
        distance = F.smooth_l1_loss(rkd_distances(s), rkd_distances(t))
        angle = F.smooth_l1_loss(rkd_angles(s), rkd_angles(t))
        return self.distance_weight * distance + self.angle_weight * angle


class VIDStage(nn.Module):
    """One stage of VID: a 1x1-convolution regressor predicts the mean of a Gaussian over the
    teacher's map from the student's, with a trained variance per channel; the loss is its
    negative log-likelihood per entry, less the constant."""

    init_variance = 5.0
    eps = 1e-5

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
        )
        # softplus(log_scale) + eps starts at the initial variance
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), math.log(math.expm1(self.init_variance - self.eps))))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = match_spatial(student, teacher)
        variance = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((self.regressor(student) - teacher).pow(2) / variance + variance.log())).mean()


class VIDDistiller(StageWiseDistiller):
    """Variational Information Distillation (Ahn et al., 2019): at every stage, the Gaussian
    negative log-likelihood of the teacher's map given the student's (``VIDStage``), summed over
    the stages."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}
    flags = ("beta",)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        pairs = zip(stages(setup.student_shapes), stages(setup.teacher_shapes))
        self.per_stage = nn.ModuleList(VIDStage(s[0], t[0]) for s, t in pairs)

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        return sum(stage(s, t) for stage, s, t in zip(self.per_stage, student, teacher))


class DKDDistiller(BaselineDistiller):
    """Decoupled KD (Zhao et al., 2022): ``--dkd_alpha`` times the target-class KD (binary
    target-versus-rest distributions) plus ``--dkd_beta`` times the non-target-class KD (the
    distributions over the other classes), each a KL divergence at ``--kd_temperature`` scaled by
    T^2 and averaged over the batch; the weight rises linearly over the first ``--dkd_warmup``
    epochs (none at 0)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0, "dkd_beta": DKD_DEFAULT_BETA}
    flags = ("beta", "kd_temperature", "dkd_alpha", "dkd_beta", "dkd_warmup", "logit_standardization")

    @classmethod
    def defaults_for(cls, config: Config) -> dict[str, Any]:
        return {**cls.defaults, "dkd_beta": DKD_BETA.get((config.teacher, config.student), DKD_DEFAULT_BETA)}

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.temperature = config.kd_temperature
        self.tckd_weight = config.dkd_alpha
        self.nckd_weight = config.dkd_beta
        self.warmup = config.dkd_warmup

    def select(self, outputs: Sequence[Tensor]) -> Sequence[Tensor]:
        return [outputs[-1]]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        t_logits, s_logits = teacher[0] / self.temperature, student[0] / self.temperature
        target = F.one_hot(step.labels, s_logits.shape[1]).bool()

        def target_vs_rest(probabilities: Tensor) -> Tensor:
            return torch.stack([(probabilities * target).sum(1), (probabilities * ~target).sum(1)], dim=1)

        tckd = F.kl_div(target_vs_rest(F.softmax(s_logits, 1)).log(), target_vs_rest(F.softmax(t_logits, 1)), reduction="sum")
        # mdistiller's trick: subtracting 1000 from the target logit leaves a softmax over the other classes
        other_t = F.softmax(t_logits - 1000.0 * target, dim=1)
        other_s = F.log_softmax(s_logits - 1000.0 * target, dim=1)
        nckd = F.kl_div(other_s, other_t, reduction="sum")
        loss = (self.tckd_weight * tckd + self.nckd_weight * nckd) * self.temperature**2 / len(step.labels)
        return loss * (min(step.epoch / self.warmup, 1.0) if self.warmup else 1.0)
