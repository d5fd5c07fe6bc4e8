"""CRD (toolbox.methods.crd) against a float64 reference written here from RepDistiller's formulas; its
sampler of negatives; where its gradients go; its checkpointed state."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from toolbox.config import Config
from toolbox.distillation import Distiller, Setup, Step
from toolbox.errors import UsageError
from toolbox.methods.crd import CRDDistiller

STUDENT_DIM, TEACHER_DIM = 24, 40  # the pooled features' widths


def config(**flags) -> Config:
    """A crd config with the method's defaults filled in (what the registry's with_defaults does)."""
    base = Config(distillation="crd", **flags)
    own = {name: value for name, value in CRDDistiller.defaults.items() if getattr(base, name) is None}
    return dataclasses.replace(base, **own)


def outputs(batch: int, pooled: int, seed: int, grad: bool = False) -> list[torch.Tensor]:
    """Fake outputs [stem, layer1, layer2, layer3, pooled, logits]; CRD reads the pooled features."""
    generator = torch.Generator().manual_seed(seed)
    feat = torch.randn(batch, pooled, generator=generator).relu().requires_grad_(grad)
    logits = torch.randn(batch, 10, generator=generator)
    return [torch.empty(batch, 0), torch.empty(batch, 0), torch.empty(batch, 0), torch.empty(batch, 0), feat, logits]


def labels_of(n: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))


def distiller(labels: torch.Tensor, seed: int = 0, batch: int = 8, **flags) -> CRDDistiller:
    torch.manual_seed(seed)
    setup = Setup.of(outputs(batch, TEACHER_DIM, 0), outputs(batch, STUDENT_DIM, 0), labels)
    return CRDDistiller(config(**flags), setup)


def step_for(labels: torch.Tensor, indices: torch.Tensor, epoch: int = 1) -> Step:
    return Step(labels=labels[indices], indices=indices, epoch=epoch)


# --- float64 reference, from RepDistiller's crd/criterion.py and crd/memory.py ------------------------
def reference(f_s, f_t, state: dict, indices, contrast, temperature: float, momentum: float):
    """The loss, Z and the updated memories, in float64: Embed = Linear + L2 normalisation;
    out = exp(bmm(memory[idx], v) / T), the student's embedding against the teacher's memory and
    vice versa; Z = mean * N when unset; ContrastLoss with Pn = 1/N, eps 1e-7; then each memory's
    rows at the positives move towards the embeddings with momentum and are renormalised."""
    d = {name: tensor if tensor.dtype == torch.float64 else tensor.double() for name, tensor in state.items()}
    n = d["memory_s"].shape[0]

    def embed(x, name):
        y = x.double() @ d[f"{name}.weight"].T + d[f"{name}.bias"]
        return y / y.pow(2).sum(1, keepdim=True).sqrt()

    v_s, v_t = embed(f_s, "embed_s"), embed(f_t, "embed_t")
    batch, width = contrast.shape
    rows_t = d["memory_t"][contrast.flatten()].view(batch, width, -1)  # RepDistiller's weight_v2
    rows_s = d["memory_s"][contrast.flatten()].view(batch, width, -1)  # weight_v1
    out_s = torch.exp(torch.bmm(rows_t, v_s[:, :, None])[:, :, 0] / temperature)  # out_v1
    out_t = torch.exp(torch.bmm(rows_s, v_t[:, :, None])[:, :, 0] / temperature)  # out_v2
    z = d["z"].detach().clone()  # a constant: RepDistiller reads it with .item()
    if z[0] < 0:
        z[0] = out_s.detach().mean() * n
    if z[1] < 0:
        z[1] = out_t.detach().mean() * n

    def contrast_loss(x):
        m = x.shape[1] - 1
        pn = 1.0 / n
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + m * pn + 1e-7))
        log_d0 = torch.log((m * pn) / (x[:, 1:] + m * pn + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / len(x)

    loss = contrast_loss(out_s / z[0]) + contrast_loss(out_t / z[1])
    memories = {}
    for name, v in (("memory_s", v_s), ("memory_t", v_t)):
        memory = d[name].clone()
        rows = memory[indices] * momentum + v * (1 - momentum)
        memory[indices] = rows / rows.pow(2).sum(1, keepdim=True).sqrt()
        memories[name] = memory
    return loss, z, memories


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "n, classes, negatives, batch, dim, momentum", [(500, 10, 64, 16, 32, 0.5), (6000, 100, 4096, 16, 128, 0.3)]
)
@pytest.mark.golden("crd")
def test_the_loss_z_and_the_memory_update_match_the_float64_reference(
    n, classes, negatives, batch, dim, momentum
) -> None:
    labels = labels_of(n, classes)
    crd = distiller(labels, batch=batch, crd_negatives=negatives, crd_dim=dim, crd_momentum=momentum)
    temperature = crd.temperature
    generator = torch.Generator().manual_seed(1)
    for step in range(3):  # the first step sets Z, the later ones keep it and see updated memories
        indices = torch.randperm(n, generator=generator)[:batch]
        f_s, f_t = outputs(batch, STUDENT_DIM, 10 + step)[-2], outputs(batch, TEACHER_DIM, 20 + step)[-2]
        before = {name: tensor.clone() for name, tensor in crd.state_dict().items()}
        rng = torch.get_rng_state()
        contrast = crd.draw(indices)
        torch.set_rng_state(rng)  # soft_loss draws the same contrast set again
        loss = crd.soft_loss(
            outputs(batch, TEACHER_DIM, 20 + step), outputs(batch, STUDENT_DIM, 10 + step), step_for(labels, indices)
        )
        want_loss, want_z, want_memories = reference(f_s, f_t, before, indices, contrast, temperature, momentum)
        assert loss.dtype == torch.float32 and loss.shape == ()
        assert relative(loss, want_loss) <= 1e-6
        assert relative(crd.z, want_z) <= 1e-6
        if step > 0:
            assert torch.equal(crd.z, before["z"])  # Z is estimated once
        for name, memory in want_memories.items():
            assert relative(getattr(crd, name), memory) <= 1e-6
            untouched = torch.ones(n, dtype=torch.bool)
            untouched[indices] = False
            assert torch.equal(getattr(crd, name)[untouched], before[name][untouched])
            assert torch.allclose(getattr(crd, name)[indices].norm(dim=1), torch.ones(batch), atol=1e-6)


def test_an_explicit_contrast_set_gives_the_reference_loss() -> None:
    """The seam the golden test relies on, used directly: contrast_loss with hand-made indices."""
    labels = labels_of(200, 5)
    crd = distiller(labels, crd_negatives=12, crd_dim=16)
    indices = torch.tensor([3, 7, 11, 150])
    contrast = torch.cat([indices[:, None], torch.randint(200, (4, 12), generator=torch.Generator().manual_seed(2))], 1)
    f_s, f_t = torch.randn(4, STUDENT_DIM), torch.randn(4, TEACHER_DIM)
    before = {name: tensor.clone() for name, tensor in crd.state_dict().items()}
    loss = crd.contrast_loss(f_s, f_t, indices, contrast)
    want, _, _ = reference(f_s, f_t, before, indices, contrast, crd.temperature, crd.momentum)
    assert relative(loss, want) <= 1e-6


def test_the_defaults_and_flags() -> None:
    assert CRDDistiller.defaults == {**Distiller.defaults, "beta": 0.8}
    assert CRDDistiller.defaults["ce_weight"] == 1.0
    assert CRDDistiller.flags == ("beta", "crd_dim", "crd_negatives", "crd_temperature", "crd_momentum")
    assert CRDDistiller.tag_flags == () and not CRDDistiller.reads_maps and CRDDistiller.needs_teacher
    crd = distiller(labels_of(100, 4))
    assert (crd.negatives, crd.temperature, crd.momentum, crd.embed_s.out_features) == (16384, 0.07, 0.5, 128)
    stdv = 1 / math.sqrt(128 / 3)
    assert float(crd.memory_s.abs().max()) <= stdv and float(crd.memory_t.abs().max()) <= stdv


# --- the sampler -----------------------------------------------------------------------------------
def check_rows(crd: CRDDistiller, labels: torch.Tensor, indices: torch.Tensor, contrast: torch.Tensor) -> None:
    assert contrast.shape == (len(indices), crd.negatives + 1) and contrast.dtype == torch.long
    assert torch.equal(contrast[:, 0], indices)  # 'exact': the positive is the sample itself
    negatives = contrast[:, 1:]
    assert bool(((negatives >= 0) & (negatives < len(labels))).all())
    assert bool((labels[negatives] != labels[indices][:, None]).all())


def test_negatives_come_from_other_classes_without_replacement() -> None:
    labels = labels_of(1000, 10)
    crd = distiller(labels, crd_negatives=300)
    assert crd.mode == "exact"
    indices = torch.randperm(1000)[:64]
    contrast = crd.draw(indices)
    check_rows(crd, labels, indices, contrast)
    for row in contrast[:, 1:]:
        assert len(row.unique()) == crd.negatives


def test_k_equal_to_the_other_samples_takes_each_of_them_once() -> None:
    labels = torch.arange(30) % 3  # 20 samples of other classes for every sample
    crd = distiller(labels, crd_negatives=20)
    indices = torch.arange(30)
    contrast = crd.draw(indices)
    check_rows(crd, labels, indices, contrast)
    for i, row in enumerate(contrast[:, 1:]):
        assert torch.equal(row.sort().values, (labels != labels[i]).nonzero()[:, 0])


def test_negatives_are_drawn_with_replacement_when_k_exceeds_the_other_samples() -> None:
    labels = torch.arange(40) % 4  # 30 others per sample, K = 64
    crd = distiller(labels, crd_negatives=64)
    assert crd.mode == "replace"
    indices = torch.arange(40)
    contrast = crd.draw(indices)
    check_rows(crd, labels, indices, contrast)
    for i, row in enumerate(contrast[:, 1:]):  # 64 draws among 30 repeat; all 30 appear over 40 rows
        assert len(row.unique()) < 64
    assert all(
        set(contrast[labels[indices] == c, 1:].unique().tolist()) == set((labels != c).nonzero()[:, 0].tolist())
        for c in range(4)
    )


@pytest.mark.parametrize(
    "dataset, mode", [("cifar100", "exact"), ("imagenet", "replace"), ("tiny-imagenet", "replace")]
)
def test_on_imagenet_negatives_are_drawn_with_replacement_whatever_k(dataset: str, mode: str) -> None:
    """mdistiller's ImageNet and Tiny ImageNet samplers draw with replacement even where a class
    leaves K others; RepDistiller's CIFAR-100 one does not."""
    labels = labels_of(1000, 10)
    crd = distiller(labels, crd_negatives=300, dataset=dataset)  # about 900 others per class
    assert crd.mode == mode
    indices = torch.arange(64)
    contrast = crd.draw(indices)
    check_rows(crd, labels, indices, contrast)
    repeats = [len(row.unique()) < 300 for row in contrast[:, 1:]]  # 300 draws among ~900 all but surely repeat
    assert all(repeats) if mode == "replace" else not any(repeats)


def test_imbalanced_classes_choose_replacement_per_class() -> None:
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    crd = distiller(labels, crd_negatives=20)  # class 0 has 10 others (replace), class 1 has 30 (exact)
    assert crd.mode == "mixed"
    indices = torch.arange(40)
    contrast = crd.draw(indices)
    check_rows(crd, labels, indices, contrast)
    for i, row in enumerate(contrast[:, 1:]):
        if labels[i] == 1:
            assert len(row.unique()) == 20
        else:
            assert len(row.unique()) <= 10


def test_the_draws_are_uniform_over_the_other_samples() -> None:
    labels = torch.arange(30) % 3
    for negatives in (5, 50):  # without replacement, with replacement
        crd = distiller(labels, crd_negatives=negatives)
        indices = torch.zeros(4000, dtype=torch.long)  # sample 0, class 0: the others are the 20 of classes 1, 2
        counts = torch.bincount(crd.draw(indices)[:, 1:].flatten(), minlength=30)[labels != 0].double()
        expected = 4000 * negatives / 20
        assert float((counts - expected).abs().max()) < 6 * math.sqrt(expected)  # within 6 sigma


def test_the_draws_follow_torchs_global_generator() -> None:
    crd = distiller(labels_of(300, 7), crd_negatives=50)
    indices = torch.arange(10)
    torch.manual_seed(5)
    first = crd.draw(indices)
    torch.manual_seed(5)
    assert torch.equal(crd.draw(indices), first)
    assert not torch.equal(crd.draw(indices), first)


def test_a_single_class_or_no_labels_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        distiller(torch.zeros(20, dtype=torch.long))
    with pytest.raises(UsageError):
        distiller(torch.zeros(0, dtype=torch.long))


# --- gradients, precision, state --------------------------------------------------------------------
def test_gradients_reach_the_student_and_both_embeddings_never_the_teacher() -> None:
    labels = labels_of(300, 5)
    crd = distiller(labels, crd_negatives=40, crd_dim=16)
    indices = torch.arange(8)
    for _ in range(2):  # the second step sees updated memories (out-of-place: backward still works)
        teacher, student = outputs(8, TEACHER_DIM, 1, grad=True), outputs(8, STUDENT_DIM, 2, grad=True)
        crd.zero_grad()
        crd.soft_loss(teacher, student, step_for(labels, indices)).backward()
        assert student[-2].grad is not None and float(student[-2].grad.abs().sum()) > 0
        assert teacher[-2].grad is None
        for parameter in (crd.embed_s.weight, crd.embed_s.bias, crd.embed_t.weight, crd.embed_t.bias):
            assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    embeddings = {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}
    assert {name for name, _ in crd.named_parameters()} == embeddings
    assert not any(buffer.requires_grad for buffer in crd.buffers())


def test_bf16_autocast_changes_nothing() -> None:
    labels = labels_of(300, 5)
    indices = torch.arange(8)
    losses = []
    for enabled in (False, True):
        crd = distiller(labels, crd_negatives=40, crd_dim=16)
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss = crd.soft_loss(outputs(8, TEACHER_DIM, 1), outputs(8, STUDENT_DIM, 2), step_for(labels, indices))
        losses.append(loss)
    assert losses[1].dtype == torch.float32 and torch.equal(losses[0], losses[1])


def test_the_state_dict_holds_the_memories_and_z_and_resumes_the_same_loss() -> None:
    labels = labels_of(400, 8)
    crd = distiller(labels, crd_negatives=60, crd_dim=16)
    state = crd.state_dict()
    assert set(state) == {
        "embed_s.weight",
        "embed_s.bias",
        "embed_t.weight",
        "embed_t.bias",
        "memory_s",
        "memory_t",
        "z",
    }
    assert state["memory_s"].shape == state["memory_t"].shape == (400, 16) and state["z"].shape == (2,)
    assert bool((state["z"] < 0).all())  # not estimated before the first batch
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):
        crd.soft_loss(
            outputs(8, TEACHER_DIM, 1),
            outputs(8, STUDENT_DIM, 2),
            step_for(labels, torch.randperm(400, generator=generator)[:8]),
        )
    assert bool((crd.z > 0).all())
    saved = {name: tensor.clone() for name, tensor in crd.state_dict().items()}
    rng = torch.get_rng_state()
    indices = torch.randperm(400, generator=generator)[:8]
    teacher, student = outputs(8, TEACHER_DIM, 5), outputs(8, STUDENT_DIM, 6)
    expected = crd.soft_loss(teacher, student, step_for(labels, indices))

    fresh = distiller(labels, seed=99, crd_negatives=60, crd_dim=16)  # other embeddings and memories
    assert not torch.equal(fresh.memory_s, saved["memory_s"])
    fresh.load_state_dict(saved)
    torch.set_rng_state(rng)
    assert torch.equal(fresh.soft_loss(teacher, student, step_for(labels, indices)), expected)
    for name in ("memory_s", "memory_t", "z"):
        assert torch.equal(getattr(fresh, name), getattr(crd, name))


@pytest.mark.golden("crd")
def test_the_gradients_match_the_float64_reference() -> None:
    labels = labels_of(2000, 20)
    crd = distiller(labels, crd_negatives=512, crd_dim=32)
    indices = torch.randperm(2000, generator=torch.Generator().manual_seed(3))[:16]
    contrast = crd.draw(indices)
    f_s, f_t = torch.randn(16, STUDENT_DIM).requires_grad_(True), torch.randn(16, TEACHER_DIM)
    state = {
        name: tensor.detach().double().requires_grad_(name.startswith("embed"))
        for name, tensor in crd.state_dict().items()
    }
    f_s64 = f_s.detach().double().requires_grad_(True)
    want, _, _ = reference(f_s64, f_t, state, indices, contrast, crd.temperature, crd.momentum)
    want.backward()
    crd.contrast_loss(f_s, f_t, indices, contrast).backward()
    assert relative(f_s.grad, f_s64.grad) <= 1e-5
    for name, parameter in crd.named_parameters():
        assert relative(parameter.grad, state[name].grad) <= 1e-5
