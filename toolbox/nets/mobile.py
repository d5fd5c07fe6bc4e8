"""The field's small CIFAR networks: MobileNetV2 (half width), ShuffleNetV1 and ShuffleNetV2.

The CRD benchmark (RepDistiller) and DKD (mdistiller) define these for 32x32 inputs; the classes
here compute the same layers in the same order, with the same strides, padding, groups and bias
flags, and their module names are those repositories' state-dict keys, so their checkpoints load as
they are. ``forward`` returns their feature list (``is_feat=True, preact=False``) plus the logits:
``[stem, stage 1, ..., stage k, pooled, logits]``; with ``preact=True`` the stages' maps before
their last ReLU (``toolbox.nets.common``). ``stages`` is k. The registry lives in ``toolbox.models``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.nets.common import PreactBlock, stem_and_stages


def normal_by_fan_out(model: nn.Module, linear_std: Optional[float]) -> None:
    """Wei Yang's init (RepDistiller's wrn.py, vgg.py): convolutions N(0, 2 / (k*k*out)), zero conv
    biases, unit BatchNorm, zero linear biases; linear weights N(0, linear_std) (vgg) or PyTorch's
    default (wrn: ``linear_std=None``). The mobile models use it with 0.01."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g*c, H, W] -> interleave the g groups' channels (ShuffleNet's channel shuffle). A
    channels-last input is shuffled in NHWC order, so the output stays channels-last."""
    n, channels, height, width = x.shape
    if groups == 1:
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).reshape(n, height, width, groups, channels // groups)
        return nhwc.transpose(3, 4).reshape(n, height, width, channels).permute(0, 3, 1, 2)
    return x.reshape(n, groups, channels // groups, height, width).transpose(1, 2).reshape(n, channels, height, width)


# ---------------------------------------------------------------------------------------------
# MobileNetV2 (RepDistiller's mobilenetv2.py; ``mobile_half`` = expansion 6, width 0.5)


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection (``conv.0`` ... ``conv.7``); the input is
    added back where stride and width allow. The expansion conv exists even at ratio 1."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: a stride-2 3x3 stem, seven groups of inverted residuals, a 1x1 conv to
    1280 channels, average pooling, a linear head (``classifier.0``). Features (as RepDistiller):
    the stem, groups 1, 2, 4 and 6 (0-based), the pooled vector. The groups end without a ReLU
    (linear bottlenecks), so their pre-activation maps are the features themselves."""

    stages = 4
    head_modules = ("conv2", "classifier")
    # (expansion, channels, blocks, stride) per group; expansion None = the model's T
    SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
               (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))  # fmt: skip
    FEATURE_GROUPS = (1, 2, 4, 6)

    def __init__(self, expansion: int, width_mult: float, num_classes: int) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for ratio, width, count, stride in self.SETTING:
            out_channels = int(width * width_mult)
            group = []
            for block_stride in [stride] + [1] * (count - 1):
                group.append(InvertedResidual(channels, out_channels, block_stride, ratio or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        normal_by_fan_out(self, linear_std=0.01)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.blocks[group][-1].conv[-1] for group in self.FEATURE_GROUPS]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        out = self.conv1(x)
        feats = [out]
        for index, group in enumerate(self.blocks):
            out = group(out)
            if index in self.FEATURE_GROUPS:
                feats.append(out)
        out = self.conv2(out)
        # RepDistiller: AvgPool2d(input_size // 16, ceil_mode=True), i.e. a 2x2 pool on 32x32 images
        pooled = F.avg_pool2d(out, x.shape[2] // 16, ceil_mode=True).flatten(1)
        return feats + [pooled, self.classifier(pooled)]


def mobile_half(num_classes: int) -> MobileNetV2:
    """RepDistiller's ``mobile_half`` (mdistiller's ``MobileNetV2``): expansion 6, half width."""
    return MobileNetV2(6, 0.5, num_classes)


# ---------------------------------------------------------------------------------------------
# ShuffleNetV1 (RepDistiller's ShuffleNetv1.py, groups 3)


class ShuffleUnitV1(PreactBlock):
    """Grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1. Stride 2 concatenates a 3x3
    average-pooled input (``shortcut``); stride 1 adds the input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        self.first_groups = 1 if in_planes == 24 else groups  # the stem's 24 channels are not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def preactivation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        return torch.cat([out, residual], 1) if self.stride == 2 else out + residual


class ShuffleNetV1(nn.Module):
    """A 1x1 stem to 24 channels, three stages (each starts with stride 2), a 4x4 average pool and
    a linear head. Features: stem, layer1..3, pooled."""

    stages = 3
    head_modules = ("linear",)

    def __init__(self, out_planes: tuple[int, ...], num_blocks: tuple[int, ...], groups: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        layers = []
        for planes, count in zip(out_planes, num_blocks):
            units = []
            for index in range(count):
                # the first unit concatenates its pooled input, so it makes only the difference
                units.append(
                    ShuffleUnitV1(in_planes, planes - (in_planes if index == 0 else 0), 2 if index == 0 else 1, groups)
                )
                in_planes = planes
            layers.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats, out = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3), preact)
        pooled = F.avg_pool2d(out, 4).flatten(1)
        return feats + [pooled, self.linear(pooled)]


def shuffle_v1(num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes)


# ---------------------------------------------------------------------------------------------
# ShuffleNetV2 (RepDistiller's ShuffleNetv2.py, net_size 1)


class ShuffleUnitV2(nn.Module):
    """Split the channels in halves; the second goes through 1x1, depthwise 3x3, 1x1; concatenate
    and shuffle (two groups). Its pre-activation map is the concatenation before the last ReLU,
    unshuffled, as RepDistiller's and mdistiller's ``preact`` (the shuffled map's channels in another order)."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        half = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_both(x)[0]

    def forward_both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The output and the pre-activation map."""
        cut = int(x.shape[1] * self.split_ratio)
        kept, branch = x[:, :cut], x[:, cut:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        return channel_shuffle(torch.cat([kept, F.relu(pre)], 1), 2), torch.cat([kept, pre], 1)


class DownUnitV2(nn.Module):
    """Stride-2 unit: left = depthwise 3x3 then 1x1; right = 1x1, depthwise 3x3, 1x1; concatenate
    and shuffle. Each side makes half of the output channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """A 1x1 stem to 24 channels, three stages (a down unit then basic units), a 1x1 conv
    (``conv2``/``bn2``), a 4x4 average pool and a linear head. Features: stem, layer1..3, pooled."""

    stages = 3
    head_modules = ("conv2", "bn2", "linear")

    def __init__(
        self, out_channels: tuple[int, int, int, int], num_blocks: tuple[int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        layers = []
        for channels, count in zip(out_channels[:3], num_blocks):
            layers.append(
                nn.Sequential(DownUnitV2(in_channels, channels), *(ShuffleUnitV2(channels) for _ in range(count)))
            )
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats, out = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3), preact)
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(out))), 4).flatten(1)
        return feats + [pooled, self.linear(pooled)]


def shuffle_v2(num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes)
