"""Pre-activation feature maps (``forward(x, preact=True)``), the BatchNorms before the stages' ReLU
and the modules before the head, for one architecture of every family: what AB, OFD and ReviewKD
read and what AB and FSP train in their initialisation phase."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from toolbox.models import build_model, stage_shapes
from toolbox.nets.common import bn_before_relu, feature_modules
from toolbox.nets.mobile import channel_shuffle

# architecture -> how its pre-activation stage maps relate to the activated ones
FAMILIES = {
    "ResNetBaby": "relu",
    "resnet8": "relu",
    "ResNet50": "relu",
    "vgg8": "relu",
    "ShuffleV1": "relu",
    "resnet18": "relu",
    "MobileNetV1": "relu",
    "wrn_16_2": "next_bn",  # RepDistiller: the next BatchNorm's output on the stage's map
    "MobileNetV2": "same",  # linear bottlenecks: no ReLU at the end of a stage
    "ShuffleV2": "shuffled",  # the concatenation before the last ReLU, unshuffled
}
IMAGENET = {"resnet18", "MobileNetV1"}


def inputs(name: str, batch: int = 2) -> torch.Tensor:
    size = 64 if name in IMAGENET else 32
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_preact_bn_before_relu_and_the_modules_before_the_head(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10).train()
    twin = copy.deepcopy(model)
    x = inputs(name)
    plain, preact = model(x), twin(x, preact=True)
    assert len(plain) == len(preact) == model.stages + 3
    for index in (0, -2, -1):  # the stem, the pooled features, the logits
        assert torch.equal(plain[index], preact[index])
    # BatchNorm statistics move once per step either way (RepDistiller's WRN calls its BatchNorms twice)
    for key, value in model.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key

    # the modules before the head are exactly those whose parameters the activated stages depend on
    parameters = list(model.parameters())
    grads = torch.autograd.grad(sum(out.sum() for out in plain[1:-2]), parameters, allow_unused=True)
    reached = {id(p) for p, grad in zip(parameters, grads) if grad is not None}
    assert reached == {id(p) for module in feature_modules(model) for p in module.parameters()}

    size = 64 if name in IMAGENET else 32
    widths = [shape[0] for shape in stage_shapes(name, image_size=size)[1:]]
    if name.startswith("Shuffle"):  # as RepDistiller and mdistiller: no OFD teacher
        with pytest.raises(ValueError, match=f"^{name} names no BatchNorm"):
            bn_before_relu(model)
    else:
        assert [bn.num_features for bn in bn_before_relu(model)] == widths

    model.eval()  # the relations of the maps, with BatchNorm on fixed statistics
    with torch.no_grad():
        plain, preact = model(x), model(x, preact=True)
    for index in range(1, model.stages + 1):
        pre, out = preact[index], plain[index]
        relation = FAMILIES[name]
        if relation == "same":
            assert torch.equal(pre, out)
            continue
        assert (pre < 0).any(), index  # really before a ReLU
        if relation == "relu":
            assert torch.equal(F.relu(pre), out), index
        elif relation == "next_bn":
            assert torch.equal(pre, bn_before_relu(model)[index - 1](out)), index
        else:
            half = pre.shape[1] // 2
            assert torch.equal(channel_shuffle(torch.cat([pre[:, :half], F.relu(pre[:, half:])], 1), 2), out), index
