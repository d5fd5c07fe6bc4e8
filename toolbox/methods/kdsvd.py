"""``--distillation kdsvd``: KD using SVD (Lee, Kim & Song, ECCV 2018), as mdistiller's
``distillers/KDSVD.py`` computes it with its CIFAR-100 config."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.methods.base import Distiller, Step
from toolbox.methods.bases import StageWiseDistiller, match_spatial

KDSVD_K = 1  # mdistiller's cfg.py KDSVD.K: singular vectors kept of the teacher's maps (the student's: K + 3)


RBF_WIDTH = 8.0  # the denominator of mdistiller's Gaussian kernel


def finite(x: Tensor) -> Tensor:
    """NaN and infinities set to 0 (mdistiller's ``removenan``)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class RightSingularVectors(torch.autograd.Function):
    """The first ``n`` right singular vectors of each matrix of a batch (B, M, W), M >= W, with the
    exact derivative of those vectors alone: through the eigenvectors of X^T X, the gradient of v_j
    is sum over i != j of v_i (v_i^T dA v_j) / (s_j^2 - s_i^2) for the used j only. torch's SVD
    backward forms that quotient for every pair, so two equal singular values that no loss uses (the
    zeros of a rank-deficient map) make every gradient NaN; here they do not, and wherever torch's
    gradient is finite the two agree."""

    @staticmethod
    def forward(ctx: Any, matrices: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` vectors (W x n), and all the singular values (without a gradient)."""
        _, values, right = torch.linalg.svd(matrices, full_matrices=False)
        vectors = right.transpose(1, 2)
        ctx.save_for_backward(matrices, vectors, values)
        ctx.mark_non_differentiable(values)
        return vectors[:, :, :n], values

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor, None]:
        matrices, vectors, values = ctx.saved_tensors
        n = grad.shape[2]
        squares = values.pow(2)
        gaps = squares[:, None, :n] - squares[:, :, None]  # (B, W, n): s_j^2 - s_i^2
        off_diagonal = ~torch.eye(squares.shape[1], n, dtype=torch.bool, device=grad.device)
        weights = torch.where(
            off_diagonal, (vectors.transpose(1, 2) @ grad) / torch.where(off_diagonal, gaps, 1.0), 0.0
        )
        grad_gram = vectors @ weights @ vectors[:, :, :n].transpose(1, 2)
        return matrices @ (grad_gram + grad_gram.transpose(1, 2)), None


def leading_singular_vectors(feature: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """mdistiller's ``svd``: each sample's (C, H, W) map as a (C*H) x W matrix; its first ``n``
    singular values (L2-normalised over the ``n``; without a gradient: only the teacher's are used)
    and right singular vectors (W x n, fewer where W < n; as ``RightSingularVectors``)."""
    batch, channels, height, width = feature.shape
    vectors, values = RightSingularVectors.apply(feature.reshape(batch, channels * height, width), n)
    return F.normalize(finite(values)[:, :n], dim=1), F.normalize(finite(vectors), dim=1)


def aligned(student: Tensor, teacher: Tensor) -> Tensor:
    """mdistiller's ``align_rsv``: for each teacher vector, the student vector of the largest
    absolute cosine with it, its sign flipped to agree (ties: their sum)."""
    cosine = student.transpose(1, 2) @ teacher
    largest = cosine.abs().amax(1, keepdim=True)
    return student @ torch.where(cosine.abs() == largest, torch.sign(cosine), torch.zeros_like(cosine))


class KDSVDDistiller(StageWiseDistiller):
    """KD using SVD (Lee, Kim & Song, ECCV 2018), as mdistiller computes it: at every stage, the
    teacher's leading right singular vector and the student's best-aligned one of its first four,
    both scaled by the teacher's normalised singular value; then, for each pair of consecutive
    stages, the squared differences between the two networks' Gaussian-kernel similarities
    exp(-(v_i - u_j)^2 / 8) of every entry of one stage's vector with every entry of the last's,
    summed (NaN terms dropped) and divided by the batch size.

    Where a stage's maps differ in width (where mdistiller fails: vgg13 -> MobileNetV2's last stage),
    the larger map is first average-pooled to the other's size, as AT and NST do; pairs of equal
    sizes compute exactly mdistiller's loss. SVD runs in float64: a singular vector whose singular
    value lies close to the next one's amplifies float32's rounding (9e-7 of the loss on digits' maps)."""

    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}  # KDSVD.LOSS.FEAT_WEIGHT; CE_WEIGHT 1
    flags = ("beta",)
    precision = torch.float64

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        total = student[0].new_zeros(())
        previous: tuple[Tensor, Tensor] | None = None
        for s, t in zip(student, teacher):
            s, t = match_spatial(s, t)
            t_values, t_vectors = leading_singular_vectors(t, KDSVD_K)
            _, s_vectors = leading_singular_vectors(s, KDSVD_K + 3)
            scale = t_values.unsqueeze(1)
            current = (aligned(s_vectors, t_vectors) * scale, t_vectors * scale)
            if previous is not None:
                s_kernel, t_kernel = (
                    torch.exp(-(now.unsqueeze(2) - before.unsqueeze(1)).pow(2) / RBF_WIDTH)
                    for now, before in zip(current, previous)
                )
                total = total + finite((s_kernel - t_kernel.detach()).pow(2)).sum()
            previous = current
        return total / len(student[0])
