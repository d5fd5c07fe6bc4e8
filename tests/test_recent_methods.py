"""The field's newer methods against float64 references written here from their authors' code: NKD
(yzd-v/cls_KD's ``nkd.py``), TTM and WTTM (zkxufo/TTM's ``distiller_zoo/ttm.py`` and ``wttm.py``), ICKD
(ADLab-AutoDrive/ICKD's ``distiller_zoo/ICKD.py``). As in ``tests/test_baselines.py`` the distillers
compute in float32 on float32 outputs, the references in float64 on the same values; gradients against
the float64 computation's (or the formula's derivative) on a trained pair's outputs; the published
settings as defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.conftest import REAL_BATCH
from tests.test_baselines import assert_close, assert_matches, build, f64, pair_outputs, step
from toolbox.config import Config, parse_config
from toolbox.distillation import Step
from toolbox.rundir import experiment_name, resolve


def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max()
    return shifted - np.log(np.exp(shifted).sum())


def ref_nkd(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray, temperature: float, gamma: float) -> float:
    """Per sample, -p[y] log q[y] (teacher p and student q at T 1), plus gamma T^2 times the cross-entropy
    between the non-target classes' distributions (each a softmax of the other logits at T); the mean over
    the batch."""
    total = 0.0
    for z_t, z_s, y in zip(teacher, student, labels):
        total -= np.exp(ref_log_softmax(z_t))[y] * ref_log_softmax(z_s)[y]
        rest_t, rest_s = np.delete(z_t, y) / temperature, np.delete(z_s, y) / temperature
        total -= gamma * temperature**2 * (np.exp(ref_log_softmax(rest_t)) * ref_log_softmax(rest_s)).sum()
    return total / len(labels)


def ref_nkd_gradient(
    teacher: np.ndarray, student: np.ndarray, labels: np.ndarray, temperature: float, gamma: float
) -> np.ndarray:
    """The derivative of ``ref_nkd`` by the student's logits: p[y] (q - onehot(y)) from the target term,
    and gamma T (q' - p') over the other classes from the non-target one (q', p' their distributions at T)."""
    gradient = np.zeros_like(student)
    for row, (z_t, z_s, y) in enumerate(zip(teacher, student, labels)):
        gradient[row] = np.exp(ref_log_softmax(z_t))[y] * np.exp(ref_log_softmax(z_s))
        gradient[row, y] -= np.exp(ref_log_softmax(z_t))[y]
        rest = np.arange(len(z_s)) != y
        q_rest, p_rest = (np.exp(ref_log_softmax(z[rest] / temperature)) for z in (z_s, z_t))
        gradient[row, rest] += gamma * temperature * (q_rest - p_rest)
    return gradient / len(labels)


@pytest.mark.golden("nkd")
@pytest.mark.parametrize("temperature, gamma", [(3.0, 3.5), (1.0, 1.5)])  # CIFAR-100's, ImageNet's
def test_nkd_matches_its_reference(temperature: float, gamma: float) -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4")
    distiller = build("nkd", teacher, student, nkd_temperature=temperature, nkd_gamma=gamma)
    expected = ref_nkd(f64(teacher[-1]), f64(student[-1]), step().labels.numpy(), temperature, gamma)
    assert_matches(distiller, teacher, student, expected)


def test_nkds_gradient_on_a_trained_pair_is_the_formulas(
    real_outputs: tuple[list[Tensor], list[Tensor], Tensor],
) -> None:
    """Only the student's logits get a gradient (the teacher's are a fixed target), the formula's."""
    teacher, student, labels = real_outputs
    distiller = build("nkd", teacher, student, "ResNet20", "ResNetBaby")
    student = [out.clone().requires_grad_() for out in student]
    loss = distiller.soft_loss(teacher, student, Step(labels, torch.arange(REAL_BATCH), epoch=1))
    arguments = (f64(teacher[-1]), f64(student[-1]), labels.numpy(), 3.0, 3.5)
    assert_close(loss, ref_nkd(*arguments))
    loss.backward()
    assert all(out.grad is None for out in student[:-1])
    np.testing.assert_allclose(student[-1].grad.double().numpy(), ref_nkd_gradient(*arguments), rtol=1e-4, atol=1e-7)


def test_nkds_published_settings_are_its_defaults() -> None:
    config = resolve(Config(distillation="nkd"))
    assert (config.beta, config.ce_weight, config.nkd_temperature, config.nkd_gamma) == (1.0, 1.0, 3.0, 3.5)
    assert config.experiment_name == "cifar100/ResNet112-ResNet56/nkd/seed0"
    imagenet = parse_config(
        ["--distillation", "nkd", "--recipe", "imagenet", "--dataset", "imagenet", "--teacher", "resnet34"]
        + ["--student", "resnet18"]
    )
    assert (imagenet.nkd_temperature, imagenet.nkd_gamma) == (1.0, 1.5)
    assert resolve(imagenet).experiment_name == "imagenet/resnet34-resnet18/nkd/recipe=imagenet/seed0"
    named = resolve(Config(distillation="nkd", nkd_gamma=2.0))
    assert named.experiment_name == experiment_name(named) == "cifar100/ResNet112-ResNet56/nkd/nkd_gamma=2/seed0"


def ref_transformed_kl(teacher: np.ndarray, student: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: KL(t || q) with t the teacher's softmax to the power gamma, renormalised, and q the
    student's softmax (T 1); and the renormalisation's sum."""
    divergences, sums = [], []
    for z_t, z_s in zip(teacher, student):
        powered = np.exp(ref_log_softmax(z_t)) ** gamma
        target = powered / powered.sum()
        terms = np.where(target > 0, target * (np.log(np.where(target > 0, target, 1)) - ref_log_softmax(z_s)), 0)
        divergences.append(terms.sum())
        sums.append(powered.sum())
    return np.array(divergences), np.array(sums)


def ref_ttm(teacher: np.ndarray, student: np.ndarray, gamma: float, weighted: bool) -> float:
    """TTM: the batch's mean KL; WTTM: the mean of each sample's sum times its KL."""
    divergences, sums = ref_transformed_kl(teacher, student, gamma)
    return float(np.mean(sums * divergences if weighted else divergences))


def ref_ttm_gradient(teacher: np.ndarray, student: np.ndarray, gamma: float, weighted: bool) -> np.ndarray:
    """The derivative by the student's logits: (q - t) per sample (times its sum for WTTM), over the batch size."""
    gradient = np.zeros_like(student)
    for row, (z_t, z_s) in enumerate(zip(teacher, student)):
        powered = np.exp(ref_log_softmax(z_t)) ** gamma
        gradient[row] = (np.exp(ref_log_softmax(z_s)) - powered / powered.sum()) * (powered.sum() if weighted else 1)
    return gradient / len(student)


@pytest.mark.golden("ttm", "wttm")
@pytest.mark.parametrize("method, weighted", [("ttm", False), ("wttm", True)])
@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_ttm_and_wttm_match_their_references(method: str, weighted: bool, gamma: float) -> None:
    teacher, student = pair_outputs("resnet32x4", "resnet8x4")
    distiller = build(method, teacher, student, ttm_gamma=gamma)
    assert_matches(distiller, teacher, student, ref_ttm(f64(teacher[-1]), f64(student[-1]), gamma, weighted))


@pytest.mark.parametrize("method, weighted, gamma", [("ttm", False, 0.1), ("wttm", True, 0.2)])
def test_ttm_and_wttms_gradients_on_a_trained_pair_are_the_formulas(
    real_outputs: tuple[list[Tensor], list[Tensor], Tensor], method: str, weighted: bool, gamma: float
) -> None:
    teacher, student, labels = real_outputs
    distiller = build(method, teacher, student, "ResNet20", "ResNetBaby")
    student = [out.clone().requires_grad_() for out in student]
    loss = distiller.soft_loss(teacher, student, Step(labels, torch.arange(REAL_BATCH), epoch=1))
    # float32 as the authors compute it: the KL of a cross-entropy and an entropy close to it keeps 4 digits
    assert_close(loss, ref_ttm(f64(teacher[-1]), f64(student[-1]), gamma, weighted), rtol=1e-4)
    loss.backward()
    assert all(out.grad is None for out in student[:-1])
    expected = ref_ttm_gradient(f64(teacher[-1]), f64(student[-1]), gamma, weighted)
    # q - t of close distributions: float32's absolute error, within 1e-4 of the largest entry
    np.testing.assert_allclose(student[-1].grad.double().numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_ttm_and_wttms_published_settings_are_their_defaults() -> None:
    ttm, wttm = resolve(Config(distillation="ttm")), resolve(Config(distillation="wttm"))
    assert (ttm.beta, ttm.ce_weight, ttm.ttm_gamma) == (45.0, 1.0, 0.1)
    assert (wttm.beta, wttm.ce_weight, wttm.ttm_gamma) == (4.0, 1.0, 0.2)
    assert ttm.experiment_name == "cifar100/ResNet112-ResNet56/ttm/seed0"
    assert resolve(Config(distillation="wttm", ttm_gamma=0.1)).experiment_name == (
        "cifar100/ResNet112-ResNet56/wttm/ttm_gamma=0.1/seed0"
    )


def ref_ickd(teacher: np.ndarray, student: np.ndarray, weight: np.ndarray) -> float:
    """The student's (B, C, H, W) map through the 1x1 convolution ``weight`` and a fresh BatchNorm in
    training mode (batch statistics, biased variance, eps 1e-5); per sample the (C, C) Gram matrix of
    each network's channels, rows over their L2 norms; the squared difference summed, over C times B."""
    embedded = np.einsum("oc,bchw->bohw", weight, student)
    mean, variance = embedded.mean(axis=(0, 2, 3), keepdims=True), embedded.var(axis=(0, 2, 3), keepdims=True)
    embedded = (embedded - mean) / np.sqrt(variance + 1e-5)

    def correlations(maps: np.ndarray) -> np.ndarray:
        flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
        gram = flat @ flat.transpose(0, 2, 1)
        return gram / np.maximum(np.linalg.norm(gram, axis=2, keepdims=True), 1e-12)

    rows, channels = embedded.shape[:2]
    return float(((correlations(embedded) - correlations(teacher)) ** 2).sum() / (channels * rows))


@pytest.mark.golden("ickd")
@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
def test_ickd_matches_its_reference(teacher_name: str, student_name: str) -> None:
    """Same channels, and a student of other channels and a smaller last stage (the Gram is over positions)."""
    teacher, student = pair_outputs(teacher_name, student_name)
    distiller = build("ickd", teacher, student, teacher_name, student_name)
    weight = distiller.embed[0].weight.detach().double().numpy()[:, :, 0, 0]
    assert_matches(distiller, teacher, student, ref_ickd(f64(teacher[-3]), f64(student[-3]), weight))


def test_ickds_gradient_on_a_trained_pair_is_the_float64_ones(
    real_outputs: tuple[list[Tensor], list[Tensor], Tensor],
) -> None:
    """The gradient reaches the student's last stage and the embedding, as in float64."""
    teacher, student, labels = real_outputs
    distiller = build("ickd", teacher, student, "ResNet20", "ResNetBaby")
    at = Step(labels, torch.arange(REAL_BATCH), epoch=1)
    student32 = [out.clone().requires_grad_() for out in student]
    weight = distiller.embed[0].weight.detach().double().numpy()[:, :, 0, 0]
    loss = distiller.soft_loss(teacher, student32, at)
    assert_close(loss, ref_ickd(f64(teacher[-3]), f64(student[-3]), weight), rtol=1e-5)
    loss.backward()
    assert [index for index, out in enumerate(student32) if out.grad is not None] == [len(student) - 3]
    distiller.double()
    student64 = student[-3].double().requires_grad_()
    distiller.compare([teacher[-3].double()], [student64], at).backward()
    cosine = F.cosine_similarity(student32[-3].grad.flatten().double(), student64.grad.flatten(), dim=0)
    assert cosine.item() >= 0.99999 and distiller.embed[0].weight.grad is not None


def test_ickds_published_weight_is_its_default() -> None:
    config = resolve(Config(distillation="ickd"))
    assert (config.beta, config.ce_weight) == (4.0, 1.0)
    assert config.experiment_name == "cifar100/ResNet112-ResNet56/ickd/seed0"
