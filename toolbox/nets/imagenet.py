"""ImageNet architectures: torchvision's ResNet-18/34/50 and mdistiller's MobileNetV1.

Each ``forward(x)`` returns ``[stem, stage 1..4, pooled, logits]`` like the CIFAR models of
``toolbox.models``, and ``model.stages`` is 4. The features are mdistiller's ImageNet feature
lists (``feats["feats"]`` of ``mdistiller/models/imagenet/*.py``, the activated maps), so a
distiller sees what the field's ImageNet recipes see:

* ResNets: the stem is ReLU(BN(conv1)) *before* the max pool (64x112x112 on 224x224 images), then
  the outputs of ``layer1``..``layer4`` (ReLU included: mdistiller moves each block's last ReLU to
  the next block's input and applies it to the features it returns, which is torchvision's block
  output), then the flattened average pool and ``fc``.
* MobileNetV1: the stem is the first 3x3 convolution's activated output (32x112x112), stages 1..4
  end at ``model[3]``, ``model[5]``, ``model[11]`` and ``model[13]`` (128x56x56, 256x28x28,
  512x14x14, 1024x7x7: mdistiller's four features, whose resolutions match the ResNets' stages),
  then the pooled 1024 features and ``fc``. mdistiller returns no stem; the first block's output
  is added so that both families have the same list.

With ``forward(x, preact=True)`` the stages are mdistiller's ``feats["preact_feats"]``: each
ResNet stage's last block before its final ReLU, each MobileNetV1 stage's last block before its
last ReLU (the stem stays activated, as in every family: ``toolbox.nets.common``).

The state-dict keys are the originals': torchvision's for the ResNets (so the
``ResNet*_Weights.IMAGENET1K_V1`` files, bare state dicts, load as they are) and mdistiller's for
MobileNetV1 (``model.<i>.<j>``, ``fc``). Where mdistiller pools with ``AvgPool2d(7)``, which
only fits 224x224 inputs, ``model[14]`` is an adaptive average pool: the same on 224x224, and
defined on 64x64 Tiny-ImageNet images too. It holds no weights, so the keys do not change.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

from toolbox.nets.common import run_stage

RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def torchvision_block_both(block: BasicBlock | Bottleneck, x: Tensor) -> tuple[Tensor, Tensor]:
    """A torchvision block's output and its map before the final ReLU (its forward, split there)."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(out)))))
    else:
        out = block.bn2(block.conv2(out))
    pre = out + identity
    return F.relu(pre), pre


class ImageNetResNet(TorchvisionResNet):
    """torchvision's ResNet (same modules, keys and initialisation) returning the feature list."""

    stages = 4
    head_modules = ("avgpool", "fc")

    def __init__(self, name: str, num_classes: int) -> None:
        block, layers = RESNET_LAYOUTS[name]
        super().__init__(block, list(layers), num_classes=num_classes)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return [getattr(stage[-1], last) for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats = [self.relu(self.bn1(self.conv1(x)))]
        out = self.maxpool(feats[0])
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out, feature = run_stage(stage, out, preact, torchvision_block_both)
            feats.append(feature)
        pooled = torch.flatten(self.avgpool(out), 1)
        return feats + [pooled, self.fc(pooled)]


def _conv_bn_relu(
    in_channels: int, out_channels: int, stride: int, groups: int = 1, kernel_size: int = 3
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise convolution (carrying the stride), then 1x1 pointwise, each with BN and ReLU."""
    return nn.Sequential(
        *_conv_bn_relu(in_channels, in_channels, stride, groups=in_channels),
        *_conv_bn_relu(in_channels, out_channels, 1, kernel_size=1),
    )


# (in, out, stride) of MobileNetV1's 13 depthwise-separable blocks, model[1] .. model[13].
MOBILENET_V1_BLOCKS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    *((512, 512, 1),) * 5, (512, 1024, 2), (1024, 1024, 1),
)  # fmt: skip
MOBILENET_V1_FEATURES = (0, 3, 5, 11, 13)  # indices in ``model`` whose outputs are the stem and stages 1..4


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1 (width 1.0): a 3x3 stride-2 stem to 32 channels,
    13 depthwise-separable blocks, average pooling and a linear head ``fc``; PyTorch's default
    initialisation, as there."""

    stages = 4
    head_modules = ("fc",)

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Sequential(*_conv_bn_relu(3, 32, 2)),
            *(_depthwise_separable(*block) for block in MOBILENET_V1_BLOCKS),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(MOBILENET_V1_BLOCKS[-1][1], num_classes)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.model[index][-2] for index in MOBILENET_V1_FEATURES[1:]]

    def forward(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        feats = []
        for index, layer in enumerate(self.model[:-1]):
            if preact and index in MOBILENET_V1_FEATURES[1:]:
                pre = layer[:-1](x)  # the block's last ReLU works in place: applied out of place here
                x = F.relu(pre)
                feats.append(pre)
                continue
            x = layer(x)
            if index in MOBILENET_V1_FEATURES:
                feats.append(x)
        pooled = torch.flatten(self.model[-1](x), 1)
        return feats + [pooled, self.fc(pooled)]


def _resnet(name: str) -> Callable[[int], ImageNetResNet]:
    return lambda num_classes: ImageNetResNet(name, num_classes)


# Name -> constructor taking the number of classes (torchvision's names for its ResNets).
IMAGENET_MODELS: dict[str, Callable[[int], nn.Module]] = {
    **{name: _resnet(name) for name in RESNET_LAYOUTS},
    "MobileNetV1": MobileNetV1,
}
