"""The CIFAR ResNets of the original study.

A 3x3 stem to 16 channels, three stages of basic blocks (16/32/64 channels, strides 1/2/2), 1x1
convolution shortcuts where the shape changes, global average pooling and a linear head. The module
names are the original's state-dict keys, so its checkpoints (``{"weights": state_dict}``) load as
they are. ``forward`` returns ``[stem, layer1, layer2, layer3, pooled, logits]`` (RepDistiller's
feature list plus the logits): output ``k`` is stage ``k``, ``[-2]`` the pooled features, ``[-1]``
the logits. The distillers pick what they need, and nothing has to hook into the model.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected by a 1x1 conv when needed)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with ``blocks[i]`` basic blocks in stage ``i``."""

    def __init__(self, blocks: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        stages = []
        for count, planes, stride in zip(blocks, STAGE_WIDTHS, STAGE_STRIDES):
            layers = []
            for block_stride in [stride] + [1] * (count - 1):
                layers.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        layer1 = self.layer1(stem)
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        pooled = F.adaptive_avg_pool2d(layer3, 1).flatten(1)  # the original's 8x8 average pool
        return [stem, layer1, layer2, layer3, pooled, self.linear(pooled)]


def _resnet(blocks: tuple[int, int, int]) -> Callable[[int], ResNet]:
    return lambda num_classes: ResNet(blocks, num_classes)


# Depth = 6 * blocks + 2. ResNet112 is the original study's name for its teacher (110 layers deep).
MODELS: dict[str, Callable[[int], ResNet]] = {
    "ResNet112": _resnet((18, 18, 18)),
    "ResNet110": _resnet((18, 18, 18)),
    "ResNet56": _resnet((9, 9, 9)),
    "ResNet32": _resnet((5, 5, 5)),
    "ResNet20": _resnet((3, 3, 3)),
    "ResNetBaby": _resnet((1, 1, 1)),
}


def build_model(name: str, num_classes: int) -> ResNet:
    """A fresh model by its registry name."""
    return MODELS[name](num_classes)
