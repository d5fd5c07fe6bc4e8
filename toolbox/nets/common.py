"""What the model families share: a stage's pre-activation map, and the modules before the head.

Every model's ``forward(x, preact=False)`` returns ``[stem, stage 1, ..., stage k, pooled, logits]``.
With ``preact=True`` the stages' maps are taken before their last ReLU, as RepDistiller's
``model(x, is_feat=True, preact=True)`` and mdistiller's ``feats["preact_feats"]`` give them to
OFD, AB and ReviewKD (whose losses see the negative part of the teacher's map); the stem, the pooled
features and the logits are the same either way, and so is what the network computes.

Each family also names the BatchNorm before each stage's last ReLU (``bn_before_relu``, whose
affine parameters are OFD's estimate of the teacher's pre-activation distribution) and the modules
after its last stage (``head_modules``): RepDistiller's ``get_feat_modules()`` are all the others,
what AB and FSP train in their initialisation phase.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class PreactBlock(nn.Module):
    """A block whose output is ReLU(``preactivation(x)``): the residual blocks of the ResNets and ShuffleNetV1."""

    def preactivation(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preactivation(x))

    def forward_both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The output and the map before the final ReLU."""
        pre = self.preactivation(x)
        return F.relu(pre), pre


def last_block_both(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    return block.forward_both(x)


def run_stage(
    stage: nn.Sequential,
    x: Tensor,
    preact: bool,
    both: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] = last_block_both,
) -> tuple[Tensor, Tensor]:
    """A stage of blocks: its output and the map the feature list reports, which with ``preact`` is
    its last block's map before the final ReLU (``both(block, x)`` gives the output and that map;
    RepDistiller's ``is_last`` blocks), else the output itself."""
    if not preact:
        out = stage(x)
        return out, out
    *first, last = stage
    for block in first:
        x = block(x)
    return both(last, x)


def stem_and_stages(
    model: nn.Module, x: Tensor, stages: Sequence[nn.Sequential], preact: bool
) -> tuple[list[Tensor], Tensor]:
    """The maps of ``model``'s stem (``conv1``, ``bn1``, ReLU) and of each of its ``stages`` (see
    ``run_stage``), and the last stage's output, from which each family computes its head."""
    feats = [F.relu(model.bn1(model.conv1(x)))]
    out = feats[0]
    for stage in stages:
        out, feature = run_stage(stage, out, preact)
        feats.append(feature)
    return feats, out


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that compute the stem and the stages: every child of the model but those after
    its last stage (``head_modules``), RepDistiller's ``get_feat_modules()``."""
    head = set(model.head_modules)
    return [module for name, module in model.named_children() if name not in head]


def bn_before_relu(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm before each stage's last ReLU (RepDistiller's and mdistiller's
    ``get_bn_before_relu``); ValueError for a family that has none (the ShuffleNets, as there)."""
    method = getattr(model, "bn_before_relu", None)
    if method is None:
        raise ValueError(f"{getattr(model, 'arch', type(model).__name__)} names no BatchNorm before its stages' ReLU")
    return method()
