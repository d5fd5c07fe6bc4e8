"""--compile and the optimiser's kernels change the speed of a step, never what it computes: compiled
training reaches eager training's weights, compiles each model once for the whole run (the epoch's
last, smaller batch and the evaluation run eagerly), and the fused and foreach SGD kernels give the
default update within float rounding."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from toolbox.config import Config, parse_config
from toolbox.data_loader import CIFAR_MEAN_STD, Dataset
from toolbox.errors import UsageError
from toolbox.models import build_model
from toolbox.rundir import RunDir, resolve
from toolbox.stop import StopFlag
from toolbox.training import Trainer
from toolbox.training.resume import restore, snapshot
from toolbox.training.speed import FullBatchCompiled, optimizer_kernels

MODEL, TEACHER = "ResNetBaby", "resnet8"  # of different classes: dynamo keeps one cache per forward function
CLASSES = 10
TRAIN_SAMPLES, BATCH = 40, 16  # batches of 16, 16 and 8: the last one smaller
SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}  # the defaults' kind of update, a larger step


def tiny_data() -> Dataset:
    """Random CIFAR-shaped images: what is checked does not depend on the pixels."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TRAIN_SAMPLES + 24, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, CLASSES, (TRAIN_SAMPLES + 24,), generator=generator)
    mean, std = ((torch.tensor(values) * 255).view(1, 3, 1, 1) for values in CIFAR_MEAN_STD["cifar10"])
    return Dataset(
        images[:TRAIN_SAMPLES],
        labels[:TRAIN_SAMPLES],
        images[TRAIN_SAMPLES:],
        labels[TRAIN_SAMPLES:],
        mean,
        std,
        CLASSES,
    )


def kd_trainer(folder: Path, data: Dataset, *flags: str) -> Trainer:
    """A kd run of ResNetBaby from a random resnet8 teacher, on the CPU: both models take part."""
    teacher = folder / "teacher.pth"
    if not teacher.exists():
        torch.manual_seed(1)
        torch.save({"weights": build_model(TEACHER, CLASSES).state_dict()}, teacher)
    config = parse_config(
        [
            "--dataset",
            "cifar10",
            "--distillation",
            "kd",
            "--teacher",
            TEACHER,
            "--student",
            MODEL,
            "--teacher_checkpoint",
            str(teacher),
            "--batch_size",
            str(BATCH),
            "--lr",
            str(SGD["lr"]),
            "--device",
            "cpu",
            "--amp",
            "off",
            *flags,
        ]
    )
    return Trainer(resolve(config), RunDir(folder / "run"), data)


def train_epochs(trainer: Trainer, epochs: int) -> None:
    """Whole epochs as ``train`` runs them: training, then the test set."""
    for _ in range(epochs):
        trainer.train_epoch(StopFlag(), say=lambda line: None)
        trainer.test()
        trainer.history["test_acc"].append(0.0)  # the next epoch's data order


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """No compiled code or counts left from before, none left behind for the next test."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_training_reaches_eager_weights_compiling_each_model_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_dynamo: None
) -> None:
    """The trainer's wiring under --compile: the teacher's and the student's graphs each captured
    once, the last batch and the test set run eagerly on the same parameters, BatchNorm statistics
    written back. Captured by dynamo and AOTAutograd as inductor's are, but run by eager kernels
    (``aot_eager``): inductor's C++ compilation of these networks takes minutes on two cores (the
    next test compiles a small network with it)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    data = tiny_data()
    eager = kd_trainer(tmp_path, data)
    train_epochs(eager, 2)

    compiled = kd_trainer(tmp_path, data, "--compile")
    with torch._dynamo.config.patch(error_on_recompile=True):  # any second compilation of a model fails the test
        train_epochs(compiled, 2)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the teacher's forward, the student's step

    expected, got = eager.student.state_dict(), compiled.student.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-8, msg=name)


def test_inductor_steps_match_eager_and_a_smaller_batch_does_not_recompile(fresh_dynamo: None) -> None:
    """A small network through ``FullBatchCompiled`` and inductor, as --compile trains: full batches
    compiled, the smaller last batch of each epoch eager, without a second compilation; the weights
    after two epochs are eager training's within float32 rounding. Inductor writes scalar C++ here
    (``vec_isa_ok`` off), which compiles in half the time of its vectorised code on two cores."""
    torch.manual_seed(0)
    eager = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, CLASSES),
    )
    twin = copy.deepcopy(eager)
    compiled = FullBatchCompiled(twin, rows=8, mode=None)
    generator = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(rows, 3, 8, 8, generator=generator), torch.randint(0, CLASSES, (rows,), generator=generator))
        for rows in (8, 8, 4)
    ]
    optimizers = [
        torch.optim.SGD(model.parameters(), **SGD, **optimizer_kernels(torch.device("cpu"))) for model in (eager, twin)
    ]
    with torch._dynamo.config.patch(error_on_recompile=True), torch._inductor.config.patch({"cpp.vec_isa_ok": False}):
        for _ in range(2):
            for images, labels in batches:
                for model, optimizer in zip((eager, compiled), optimizers):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(images), labels).backward()
                    optimizer.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for (name, expected), got in zip(eager.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)


def sgd_steps(device: torch.device, **kernels: bool) -> list[torch.Tensor]:
    """A few SGD steps with momentum and weight decay from the same start; the final parameters."""
    torch.manual_seed(0)
    model = build_model(MODEL, CLASSES).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), **SGD, **kernels)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        images = torch.randn(4, 3, 32, 32, generator=generator).to(device)
        labels = torch.randint(0, CLASSES, (4,), generator=generator).to(device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images)[-1], labels).backward()
        optimizer.step()
    return [parameter.detach().cpu() for parameter in model.parameters()]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_optimizer_kernels_give_the_default_update(device: str) -> None:
    """The fused kernel (CUDA's choice) and foreach (the CPU's) against torch's per-parameter loop."""
    device = torch.device(device)
    reference = sgd_steps(device, foreach=False, fused=False)
    for kernels in ({"fused": True, "foreach": False}, {"fused": False, "foreach": True}, optimizer_kernels(device)):
        for got, expected in zip(sgd_steps(device, **kernels), reference):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=str(kernels))


def test_a_resumed_run_uses_its_own_devices_kernels(tmp_path: Path) -> None:
    """A last.pt saved on a GPU holds fused=True in its optimiser's groups; resumed on the CPU, the
    CPU's kernels are used, not the saved ones."""
    trainer = kd_trainer(tmp_path, tiny_data())
    assert all(group["foreach"] and not group["fused"] for group in trainer.optimizer.param_groups)
    state = snapshot(trainer)
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=True, foreach=False)
    restore(trainer, state)
    assert [(group["fused"], group["foreach"]) for group in trainer.optimizer.param_groups] == [(False, True)]


def test_compile_mode_needs_compile() -> None:
    with pytest.raises(UsageError, match="--compile_mode reduce-overhead needs --compile"):
        dataclasses.replace(Config(), compile_mode="reduce-overhead").validate()
    dataclasses.replace(Config(), compile=True, compile_mode="reduce-overhead").validate()
