"""The CIFAR ResNets keep the original's shapes and state-dict keys."""

from __future__ import annotations

import pytest
import torch

from toolbox.models import MODELS, build_model

BLOCKS = {"ResNet112": 18, "ResNet110": 18, "ResNet56": 9, "ResNet32": 5, "ResNet20": 3, "ResNetBaby": 1}


@pytest.mark.parametrize("name", ["ResNet56", "ResNet20", "ResNetBaby"])
def test_forward_returns_the_three_stages_and_the_logits(name: str) -> None:
    model = build_model(name, num_classes=100).eval()
    stem, layer1, layer2, layer3, pooled, logits = model(torch.randn(2, 3, 32, 32))
    assert stem.shape == (2, 16, 32, 32) and pooled.shape == (2, 64)
    assert layer1.shape == (2, 16, 32, 32) and layer2.shape == (2, 32, 16, 16)
    assert layer3.shape == (2, 64, 8, 8) and logits.shape == (2, 100)


@pytest.mark.parametrize("name", list(MODELS))
def test_depth_is_six_times_blocks_plus_two(name: str) -> None:
    model = build_model(name, 10)
    convs = [k for k, v in model.state_dict().items() if v.ndim == 4 and "shortcut" not in k]
    assert len(convs) + 1 == 6 * BLOCKS[name] + 2  # 3x3 convolutions plus the linear head


def test_state_dict_keys_are_the_originals() -> None:
    keys = set(build_model("ResNet20", 100).state_dict())
    expected = {
        "conv1.weight", "bn1.weight", "bn1.running_mean",
        "layer1.0.conv1.weight", "layer1.0.bn1.bias", "layer1.2.conv2.weight", "layer1.2.bn2.num_batches_tracked",
        "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight", "layer2.0.shortcut.1.running_var",
        "layer3.0.shortcut.0.weight", "layer3.2.bn2.weight", "linear.weight", "linear.bias",
    }
    assert expected <= keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)  # identity where shapes agree
    assert not any(k.endswith("conv1.bias") or k.endswith("conv2.bias") for k in keys)  # bias-free
    assert build_model("ResNet20", 100).state_dict()["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
