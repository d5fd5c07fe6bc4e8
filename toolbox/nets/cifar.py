"""CIFAR architectures: the original study's ResNets and the field's ResNets, wide ResNets and VGGs.

The registry that names them is ``toolbox.models``; the field's small mobile networks are in
``toolbox.nets.mobile``. ``forward(x, preact=False)`` returns ``[stem, stage 1, ..., stage k,
pooled, logits]`` (``toolbox.nets.common``): RepDistiller's feature list (``is_feat=True``) plus the
logits, with ``preact`` its ``preact=True`` list. The module names are the originals' state-dict keys.

*The original study's ResNets* (``ResNet``): a 3x3 stem to 16 channels, three stages of basic blocks
(16/32/64 channels, strides 1/2/2), 1x1 convolution shortcuts where the shape changes, global
average pooling and a linear head, with the original's key names (``shortcut``, ``linear``).

*The field's* (the CRD paper's RepDistiller and DKD's mdistiller): ``CifarResNet`` (``resnet8`` ...
``resnet110``, ``resnet8x4``, ``resnet32x4``), ``BottleneckResNet`` (``ResNet50``), ``WideResNet``
and ``VGG`` (the BatchNorm variants). They compute what those repositories' definitions compute
(same layers, order, strides, padding and bias flags).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.nets.common import PreactBlock, stem_and_stages
from toolbox.nets.mobile import normal_by_fan_out

# The original study's ResNets (and the field's 16-wide resnets)
STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


class TwoConvolutions(PreactBlock):
    """Two 3x3 convolutions with BatchNorm, the body of every CIFAR basic block; ``projection`` is
    the 1x1 convolution + BatchNorm a residual needs where the shape changes (None elsewhere)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    @staticmethod
    def projection(in_planes: int, planes: int, stride: int) -> Optional[nn.Sequential]:
        if stride == 1 and in_planes == planes:
            return None
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def body(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class BasicBlock(TwoConvolutions):
    """The original study's block: its residual is ``shortcut`` (an empty Sequential where the
    shape is kept), as in its checkpoints."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__(in_planes, planes, stride)
        self.shortcut = self.projection(in_planes, planes, stride) or nn.Sequential()

    def preactivation(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class ResNet(nn.Module):
    """CIFAR ResNet with ``blocks[i]`` basic blocks in stage ``i``."""

    stages = 3
    head_modules = ("linear",)

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

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats, out = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3), preact)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)  # the original's 8x8 average pool
        return feats + [pooled, self.linear(pooled)]


def _he_normal_fan_out(model: nn.Module) -> None:
    """torchvision-style init (RepDistiller's resnet.py, resnetv2.py): He-normal convolutions
    (fan-out), unit BatchNorm; linear layers keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# The field's CIFAR ResNets (RepDistiller's and mdistiller's resnet.py)


class ResidualBlock(TwoConvolutions):
    """Basic block with RepDistiller's key names: ``conv1``/``bn1``/``conv2``/``bn2`` and, where
    the shape changes, a ``downsample`` 1x1 convolution + BatchNorm."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__(in_planes, planes, stride)
        self.downsample = self.projection(in_planes, planes, stride)

    def preactivation(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.downsample is None else self.downsample(x))


class CifarResNet(nn.Module):
    """RepDistiller's ``ResNet(depth, num_filters, 'basicblock')``: a 3x3 stem to ``widths[0]``
    channels, three stages of (depth - 2) / 6 basic blocks with ``widths[1:]`` channels (strides
    1/2/2), an 8x8 average pool and a linear head ``fc``. Features: stem, layer1..3, pooled."""

    stages = 3
    head_modules = ("fc",)

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet of basic blocks has 6n+2 layers, not {depth}")
        count = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for block_stride in [stride] + [1] * (count - 1):
                blocks.append(ResidualBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[3], num_classes)
        _he_normal_fan_out(self)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats, out = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3), preact)
        pooled = F.avg_pool2d(out, 8).flatten(1)  # RepDistiller's AvgPool2d(8): 8x8 maps on 32x32 images
        return feats + [pooled, self.fc(pooled)]


# ---------------------------------------------------------------------------------------------
# ResNet50 for CIFAR (RepDistiller's resnetv2.py: the ImageNet layout with a 3x3 stride-1 stem)


class BottleneckBlock(PreactBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand to 4x ``planes``; ``shortcut`` is a 1x1
    convolution + BatchNorm where the shape changes, empty otherwise."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def preactivation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x)


class BottleneckResNet(nn.Module):
    """RepDistiller's resnetv2 ``ResNet(Bottleneck, blocks)``: a 3x3 stem to 64 channels, four
    stages (64/128/256/512 x 4 channels, strides 1/2/2/2), global average pooling and a linear head
    ``linear``. Features: stem, layer1..4, pooled."""

    stages = 4
    head_modules = ("linear",)

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for count, planes, stride in zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2)):
            units = []
            for block_stride in [stride] + [1] * (count - 1):
                units.append(BottleneckBlock(in_planes, planes, block_stride))
                in_planes = planes * BottleneckBlock.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * BottleneckBlock.expansion, num_classes)
        _he_normal_fan_out(self)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats, out = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3, self.layer4), preact)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return feats + [pooled, self.linear(pooled)]


# ---------------------------------------------------------------------------------------------
# Wide ResNets (RepDistiller's wrn.py: pre-activation blocks)


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3. Where the width changes, the
    activated input also feeds a 1x1 ``convShortcut``; otherwise the raw input is added."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: Optional[nn.Conv2d] = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor, normalized: Optional[Tensor] = None) -> Tensor:
        """``normalized``: ``bn1(x)``, where the caller has computed it already (as the previous
        stage's pre-activation map)."""
        activated = F.relu(self.bn1(x) if normalized is None else normalized)
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))  # dropRate 0 in every registered WRN
        return (x if self.convShortcut is None else self.convShortcut(activated)) + out


class WideStage(nn.Module):
    """RepDistiller's ``NetworkBlock``: the blocks sit under ``layer`` (keys ``blockN.layer.i``)."""

    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(count))
        )

    def forward(self, x: Tensor, normalized: Optional[Tensor] = None) -> Tensor:
        first, *rest = self.layer
        x = first(x, normalized)
        for block in rest:
            x = block(x)
        return x


class WideResNet(nn.Module):
    """WRN-depth-k: a 3x3 stem to 16 channels, three stages of (depth - 4) / 6 pre-activation
    blocks (16k/32k/64k channels, strides 1/2/2), a final BN-ReLU (``bn1``), an 8x8 average pool and
    a linear head ``fc``. Features (as RepDistiller, before the final BN-ReLU): conv1, block1..3,
    pooled. A stage's pre-activation map is the next BatchNorm's output on it (the next stage's
    first ``bn1``, then the final ``bn1``), which that BatchNorm computes once: RepDistiller and
    mdistiller call it a second time for the feature list, which in training moves its running
    statistics twice in a step."""

    stages = 3
    head_modules = ("bn1", "fc")

    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet has 6n+4 layers, not {depth}")
        count = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(count, widths[0], widths[1], 1)
        self.block2 = WideStage(count, widths[1], widths[2], 2)
        self.block3 = WideStage(count, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        normal_by_fan_out(self, linear_std=None)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        stem = self.conv1(x)
        outs, pres, normalized = [stem], [], None
        for stage, next_bn in zip((self.block1, self.block2, self.block3), self.bn_before_relu()):
            outs.append(stage(outs[-1], normalized))
            normalized = next_bn(outs[-1])
            pres.append(normalized)
        pooled = F.avg_pool2d(F.relu(normalized), 8).flatten(1)
        return [stem, *(pres if preact else outs[1:]), pooled, self.fc(pooled)]


# ---------------------------------------------------------------------------------------------
# VGG with BatchNorm (RepDistiller's vgg.py, ``vgg*_bn``; the fully connected layers removed)

VGG_CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _vgg_block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """conv3x3(+bias)-BN-ReLU per width, without the last ReLU (the forward applies it)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five blocks (``block0``..``block4``) with 2x2 max pools after the first three (and after
    the fourth on 64x64 inputs only), global average pooling and a linear head ``classifier``.
    Features: the five blocks' activated outputs (pre-activation: blocks 1..4 before their ReLU), pooled."""

    stages = 4
    head_modules = ("classifier",)

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        in_channels = 3
        for index, widths in enumerate(config):
            setattr(self, f"block{index}", _vgg_block(widths, in_channels))
            in_channels = widths[-1]
        self.classifier = nn.Linear(512, num_classes)
        normal_by_fan_out(self, linear_std=0.01)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [getattr(self, f"block{index}")[-1] for index in range(1, 5)]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        size = x.shape[2]
        feats = [F.relu(self.block0(x))]
        out = feats[0]
        for index in range(1, 5):
            if index < 4 or size == 64:
                out = F.max_pool2d(out, 2, 2)
            pre = getattr(self, f"block{index}")(out)
            out = F.relu(pre)
            feats.append(pre if preact else out)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return feats + [pooled, self.classifier(pooled)]
