"""Every feature-map method at its default flags against the original study's formulas, on the
feature maps of real (briefly trained) networks.

The references are written here from the original's tucker_distillation.py
(github.com/ignatiusmf/tucker-distillation), not from our code: tensorly's ``tucker`` at its
defaults (HOOI, SVD initialisation, n_iter_max=100, tol=1e-4), ``multi_mode_dot`` with the
transposed factors, ``tucker_to_tensor``, and ``F.l1_loss`` between row-normalised flattenings,
all in float64. The distillers run as training runs them, on float32 maps: loss within 1e-3 and
gradient (with respect to the student's map) at a cosine of at least 0.99. The decomposition
itself in float64: within 1e-6 and 0.9999.

The batch mode kept whole (``BATCH_SIZE``) is rotated by tensorly; the row normalisation of the
core makes the loss depend on that rotation, and the smallest eigenvalues of the batch Gram matrix
of real maps (about 1e-5 of the largest) make it sensitive to precision: random maps would hide
both.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from tensorly.decomposition import tucker as tensorly_tucker
from torch import Tensor

from toolbox.config import parse_config
from toolbox.config.choices import parse_ranks
from toolbox.data_loader import load_dataset, train_batches
from toolbox.distillation import Step, distiller_for
from toolbox.models import build_model
from toolbox.tucker import project, recompose, tucker

TEACHER, STUDENT = "ResNetBaby", "ResNetBaby"  # different weights; the smallest network keeps this file quick
MAP_BATCH = 512  # the study's batch size
LOSS_TOLERANCE, GRADIENT_COSINE = 1e-3, 0.99  # the distillers, on float32 maps
FLOAT64_TOLERANCE, FLOAT64_COSINE = 1e-6, 0.9999  # the decomposition, in float64

# (feature layer, batch, ranks): the study's ranks on a full batch and on a last, smaller one; two
# truncated modes (tensorly's HOOI) on layer3, and at the default ranks on layer2 (32x16x16: height
# and width truncated). Their batches are smaller to keep tensorly's float64 references quick.
DECOMPOSITIONS = [
    (3, MAP_BATCH, "BATCH_SIZE,32,8,8"),
    (3, MAP_BATCH, "BATCH_SIZE,8,8,8"),
    (3, 100, "BATCH_SIZE,32,8,8"),
    (3, 256, "BATCH_SIZE,16,4,8"),
    (2, 128, "BATCH_SIZE,32,8,8"),
]
METHODS = [("tucker", None), *(("tucker_recomp", target) for target in ("teacher", "student", "both"))]


Maps = dict[int, tuple[Tensor, Tensor]]
Decomposition = tuple[Tensor, list[Tensor]]


def train_briefly(name: str, data, steps: int, seed: int) -> torch.nn.Module:
    """A model trained on digits for a few dozen SGD steps: its maps have the structure of a
    trained network's (a few dominant directions, a long tail), which random weights lack."""
    torch.manual_seed(seed)
    model = build_model(name, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for images, labels, _ in train_batches(data, 64, seed, epoch=0, max_batches=steps):
        optimizer.zero_grad()
        F.cross_entropy(model(images)[-1], labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def maps() -> Maps:
    """Layer -> (teacher map, student map) of one batch of 512 training images, float32."""
    data = load_dataset("digits", "unused", "cpu")  # digits is built offline, from scikit-learn
    teacher, student = train_briefly(TEACHER, data, 30, seed=0), train_briefly(STUDENT, data, 15, seed=1)
    images, _, _ = next(train_batches(data, MAP_BATCH, seed=2, epoch=0))
    with torch.no_grad():
        teacher_out, student_out = teacher(images), student(images)
    return {layer: (teacher_out[layer], student_out[layer]) for layer in (2, 3)}


@pytest.fixture(scope="module")
def original(maps: Maps) -> Callable[[int, int, str], Decomposition]:
    """tensorly's tucker of the teacher's map at its defaults, in float64, by (layer, batch, ranks);
    each computed once (they take seconds). ``BATCH_SIZE`` is the batch's size."""
    cache: dict[tuple[int, int, str], Decomposition] = {}

    def decomposition(layer: int, batch: int, ranks: str) -> Decomposition:
        if (layer, batch, ranks) not in cache:
            concrete = [batch if rank == "BATCH_SIZE" else int(rank) for rank in ranks.split(",")]
            with tl.backend_context("pytorch"):
                core, factors = tensorly_tucker(maps[layer][0][:batch].double(), rank=concrete)
            cache[layer, batch, ranks] = core, list(factors)
        return cache[layer, batch, ranks]

    return decomposition


def FT(x: Tensor) -> Tensor:
    """The original's flattening with row-wise L2 normalisation."""
    return F.normalize(x.reshape(x.size(0), -1))


def original_loss(
    method: str, target: Optional[str], teacher: Tensor, student: Tensor, decomposition: Optional[Decomposition]
) -> Tensor:
    """The original's tucker_distillation, tucker_recomp_distillation and feature_map_distillation
    soft losses (without BETA), in float64."""
    teacher, student = teacher.double(), student.double()
    if method == "featuremap":
        return F.l1_loss(FT(teacher), FT(student))
    core, factors = decomposition
    with tl.backend_context("pytorch"):
        student_core = tl.tenalg.multi_mode_dot(student, [f.T for f in factors], modes=[0, 1, 2, 3])
        if method == "tucker":
            return F.l1_loss(FT(core), FT(student_core))
        if target in ("teacher", "both"):
            teacher = tl.tucker_to_tensor((core, factors))
        if target in ("student", "both"):
            student = tl.tucker_to_tensor((student_core, factors))
    return F.l1_loss(FT(teacher), FT(student))


def loss_and_gradient(compute, student: Tensor) -> tuple[float, Tensor]:
    student = student.detach().clone().requires_grad_()
    loss = compute(student)
    loss.backward()
    return loss.item(), student.grad.double().flatten()


def assert_close(ours: tuple[float, Tensor], reference: tuple[float, Tensor], tolerance: float, cosine: float) -> None:
    (value, gradient), (expected, expected_gradient) = ours, reference
    assert abs(value - expected) <= tolerance * abs(expected), (value, expected)
    assert F.cosine_similarity(gradient, expected_gradient, dim=0).item() >= cosine


def outputs(feature_map: Tensor, layer: int) -> list[Tensor]:
    """Network outputs [stem, layer1, layer2, layer3, pooled, logits] with only ``layer`` filled."""
    return [feature_map if index == layer else torch.empty(0) for index in range(6)]


def distiller_case(
    maps: Maps,
    decomposition: Optional[Decomposition],
    method: str,
    target: Optional[str],
    layer: int,
    batch: int,
    ranks: Optional[str],
) -> None:
    """The distiller as training calls it (float32, channels-last maps) against the original."""
    teacher, student = (m[:batch].contiguous(memory_format=torch.channels_last) for m in maps[layer])
    flags = ["--distillation", method, "--feature_layer", str(layer)]
    flags += ["--ranks", ranks] if ranks else []
    flags += ["--recomp_target", target] if target else []
    distiller = distiller_for(parse_config(flags), outputs(teacher, layer), outputs(student, layer))
    step = Step(torch.zeros(batch, dtype=torch.long), torch.arange(batch), epoch=1)  # not read by these methods
    ours = loss_and_gradient(lambda s: distiller.soft_loss(outputs(teacher, layer), outputs(s, layer), step), student)
    reference = loss_and_gradient(lambda s: original_loss(method, target, teacher, s, decomposition), student)
    assert_close(ours, reference, LOSS_TOLERANCE, GRADIENT_COSINE)


@pytest.mark.parametrize("layer, batch", [(3, MAP_BATCH), (3, 100), (2, 128)])
def test_featuremap_is_the_originals(maps: Maps, layer: int, batch: int) -> None:
    distiller_case(maps, None, "featuremap", None, layer, batch, None)


@pytest.mark.parametrize("method, target", METHODS)
@pytest.mark.parametrize("layer, batch, ranks", DECOMPOSITIONS)
def test_tucker_methods_at_default_flags_are_the_originals(
    maps: Maps, original, method: str, target: Optional[str], layer: int, batch: int, ranks: str
) -> None:
    distiller_case(maps, original(layer, batch, ranks), method, target, layer, batch, ranks)


@pytest.mark.parametrize("layer, batch, ranks", DECOMPOSITIONS)
def test_float64_decomposition_is_the_originals(maps: Maps, original, layer: int, batch: int, ranks: str) -> None:
    """Our decomposition and projection in float64: the original's core loss and gradient, and its
    reconstruction of the teacher's map."""
    teacher, student = (m[:batch].double() for m in maps[layer])
    core, factors = tucker(teacher, parse_ranks(ranks))
    reference = original(layer, batch, ranks)
    ours = loss_and_gradient(lambda s: F.l1_loss(FT(core), FT(project(s, factors))), student)
    assert_close(
        ours,
        loss_and_gradient(lambda s: original_loss("tucker", None, teacher, s, reference), student),
        FLOAT64_TOLERANCE,
        FLOAT64_COSINE,
    )
    with tl.backend_context("pytorch"):
        expected = tl.tucker_to_tensor(reference)
    assert torch.linalg.vector_norm(
        recompose(core, factors) - expected
    ) <= FLOAT64_TOLERANCE * torch.linalg.vector_norm(expected)


def test_the_maps_are_ill_conditioned_like_real_ones(maps: Maps) -> None:
    """What makes the precision matter: the batch Gram matrix of the projected layer3 map spans
    more than 1e4 (ReLU'd Gaussian maps of this shape: about 2e3)."""
    teacher = maps[3][0].double()
    _, factors = tucker(teacher, parse_ranks("BATCH_SIZE,32,8,8"), core="per_sample")
    projected = project(teacher, factors).reshape(MAP_BATCH, -1)
    eigenvalues = torch.linalg.eigvalsh(projected @ projected.T)
    assert eigenvalues[-1] / eigenvalues[0] > 1e4
