"""The ImageNet architectures: torchvision's ResNets compute what torchvision computes and keep its
state-dict keys (its weight files load with ``load_checkpoint``); MobileNetV1 has mdistiller's
keys and features; every model returns [stem, stage 1..4, pooled, logits] with mdistiller's
ImageNet feature shapes. Shapes are traced on the meta device (no arithmetic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from toolbox.models import load_checkpoint
from toolbox.nets.imagenet import IMAGENET_MODELS, MobileNetV1

RESNETS = ("resnet18", "resnet34", "resnet50")
NUM_CLASSES = 10

# (C, H, W) of stem, stage 1..4 and the pooled width on 224x224 images: mdistiller's
# get_stage_channels() ([256, 512, 1024, 2048] for ResNet-50, [128, 256, 512, 1024] for
# MobileNetV1) at strides 4/8/16/32, the stems at stride 2.
BASIC = ((64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)), 512
FEATURES_224 = {
    "resnet18": BASIC,
    "resnet34": BASIC,
    "resnet50": (((64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)), 2048),
    "MobileNetV1": (((32, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)), 1024),
}

# mdistiller's MobileNetV1: model.0 = conv, BN (6 entries); model.1..13 = depthwise conv, BN,
# pointwise conv, BN (12 entries each); fc (2): 164 entries. (key, shape) spot checks at 1000
# classes, in state-dict order where listed first and last.
MOBILENET_V1_ENTRIES = 164
MOBILENET_V1_KEYS = {
    "model.0.0.weight": (32, 3, 3, 3),
    "model.0.1.num_batches_tracked": (),
    "model.1.0.weight": (32, 1, 3, 3),
    "model.1.1.running_var": (32,),
    "model.1.3.weight": (64, 32, 1, 1),
    "model.2.0.weight": (64, 1, 3, 3),
    "model.6.3.weight": (512, 256, 1, 1),
    "model.12.3.weight": (1024, 512, 1, 1),
    "model.13.4.running_mean": (1024,),
    "fc.weight": (1000, 1024),
    "fc.bias": (1000,),
}
MOBILENET_V1_PARAMS = 4_231_976  # MobileNet-1.0-224's 4.2M (the paper's), all parameters, BN affine included


def meta_model(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    with torch.device("meta"):
        return IMAGENET_MODELS[name](num_classes)


def randomized(model: nn.Module) -> nn.Module:
    """Every parameter and BatchNorm statistic random (variances positive), so that eval mode
    exercises every weight of every layer."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                noise = torch.rand(value.shape, generator=generator, dtype=value.dtype)
                value.copy_(0.75 + 0.5 * noise if key.endswith("running_var") else 0.2 * noise)
    return model


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_logits_are_torchvisions(name: str) -> None:
    ours = randomized(IMAGENET_MODELS[name](NUM_CLASSES).double()).eval()
    reference = getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES).double().eval()
    reference.load_state_dict(ours.state_dict())
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = ours(images)
        expected = reference(images)
    assert len(outputs) == ours.stages + 3
    torch.testing.assert_close(outputs[-1], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_keys_are_torchvisions(name: str) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    ours = meta_model(name, 1000)
    assert [(key, value.shape) for key, value in ours.state_dict().items()] == [
        (key, value.shape) for key, value in reference.state_dict().items()
    ]


def test_torchvision_weight_file_loads(tmp_path: Path) -> None:
    """A bare state dict, as ``ResNet34_Weights.IMAGENET1K_V1``'s file is."""
    reference = torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(reference.state_dict(), path)
    ours = IMAGENET_MODELS["resnet34"](1000)
    load_checkpoint(ours, path, "--teacher_checkpoint")
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_mobilenet_v1_keys_are_mdistillers() -> None:
    state = meta_model("MobileNetV1", 1000).state_dict()
    keys = list(state)
    assert len(keys) == MOBILENET_V1_ENTRIES
    assert (keys[0], keys[-2], keys[-1]) == ("model.0.0.weight", "fc.weight", "fc.bias")
    assert {key: tuple(state[key].shape) for key in MOBILENET_V1_KEYS} == MOBILENET_V1_KEYS
    assert (
        sum(value.numel() for key, value in state.items() if "running" not in key and "tracked" not in key)
        == MOBILENET_V1_PARAMS
    )


def test_mobilenet_v1_features_are_mdistillers() -> None:
    """mdistiller's forward, written against our modules: its feature i is
    ``model[end_i][:-1](model[start_i:end_i](relu(feature i-1)))`` activated; pooled and logits
    follow from the last."""
    model = randomized(MobileNetV1(NUM_CLASSES).double()).eval()
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = model(images)
        expected, x = [model.model[0](images)], model.model[0](images)
        for start, end in ((1, 3), (4, 5), (6, 11), (12, 13)):
            preact = model.model[end][:-1](model.model[start:end](x))
            x = torch.relu(preact)
            expected.append(x)
        pooled = x.mean(dim=(2, 3))
        expected += [pooled, model.fc(pooled)]
    assert len(outputs) == len(expected)
    for ours, theirs in zip(outputs, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FEATURES_224)
def test_feature_shapes_at_224(name: str) -> None:
    model = meta_model(name)
    outputs = model(torch.empty(2, 3, 224, 224, device="meta"))
    stages, pooled = FEATURES_224[name]
    assert model.stages == len(stages) - 1 == 4
    assert [tuple(out.shape[1:]) for out in outputs[:-2]] == list(stages)
    assert tuple(outputs[-2].shape) == (2, pooled) and tuple(outputs[-1].shape) == (2, NUM_CLASSES)
