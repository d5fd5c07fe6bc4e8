"""The architectures: the original study's ResNets keep their shapes and state-dict keys; the
field's CIFAR benchmark networks (RepDistiller / mdistiller) have those repositories' parameter
counts, feature lists and key names; ``load_checkpoint`` reads every layout or fails in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from toolbox.errors import UsageError
from toolbox.models import (
    CIFAR_MODELS,
    FIELD_MODELS,
    MODELS,
    ORIGINAL_MODELS,
    build_model,
    load_checkpoint,
    stage_shapes,
    state_dict_of,
)

BLOCKS = {"ResNet112": 18, "ResNet110": 18, "ResNet56": 9, "ResNet32": 5, "ResNet20": 3, "ResNetBaby": 1}

# Parameters at 100 classes, all of them (sum of numel). The figures of the CRD/DKD papers' tables
# (in millions, 3 decimals) where they give one. The others are derived from the definitions:
# * CIFAR ResNets of basic blocks with widths 16/16/32/64 and n blocks per stage (depth 6n+2):
#   stem 3*16*9 + 2*16 = 464; stage 1 blocks 2*(16*16*9) + 4*16 = 4,672 each; stage 2 first block
#   16*32*9 + 32*32*9 + 4*32 + 16*32 + 2*32 = 14,528, the others 2*(32*32*9) + 4*32 = 18,560;
#   stage 3 first block 32*64*9 + 64*64*9 + 4*64 + 32*64 + 2*64 = 57,728, the others 73,984;
#   head 64*100 + 100 = 6,500. Total 97,216 n - 13,324: n=1 (resnet8) 83,892, n=2 (resnet14)
#   181,108, n=5 (resnet32) 472,756, n=7 (resnet44) 667,188 (and n=3, 9, 18 give the papers'
#   0.278M, 0.862M, 1.737M).
# * ResNet50: torchvision's ImageNet ResNet-50 (25,557,032) with a 3x3 stem instead of the 7x7
#   (-3*64*49 + 3*64*9 = -7,680) and a 100-class head instead of 1000 (-2,049,000 + 204,900):
#   23,705,252.
PARAMS_M = {
    "resnet20": 0.278, "resnet56": 0.862, "resnet110": 1.737, "resnet8x4": 1.234, "resnet32x4": 7.434,
    "wrn_16_2": 0.703, "wrn_40_1": 0.570, "wrn_40_2": 2.255, "vgg8": 3.965, "vgg13": 9.462,
    "MobileNetV2": 0.813, "ShuffleV1": 0.949, "ShuffleV2": 1.356,
}  # fmt: skip
PARAMS_EXACT = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet32": 472_756, "resnet44": 667_188, "ResNet50": 23_705_252,
    "ResNetBaby": 83_892, "ResNet20": 278_324, "ResNet32": 472_756, "ResNet56": 861_620,
    "ResNet110": 1_736_564, "ResNet112": 1_736_564,
}  # fmt: skip

# (C, H, W) of f0 (stem) .. fk (last stage) on 32x32 images, and the pooled width: RepDistiller's
# feature lists (is_feat=True, preact=False).
RESNET = ((16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)), 64
RESNET_X4 = ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)), 256
WRN_2 = ((16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)), 128
VGG = ((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)), 512
FEATURES = {
    **{name: RESNET for name in ORIGINAL_MODELS},
    **{f"resnet{depth}": RESNET for depth in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": RESNET_X4, "resnet32x4": RESNET_X4,
    "ResNet50": (((64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)), 2048),
    "wrn_16_2": WRN_2, "wrn_40_2": WRN_2, "wrn_40_1": RESNET,
    "vgg8": VGG, "vgg13": VGG,
    "MobileNetV2": (((16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)), 1280),
    "ShuffleV1": (((24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)), 960),
    "ShuffleV2": (((24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)), 1024),
}  # fmt: skip

# Number of state-dict entries, as RepDistiller's and mdistiller's definitions have them.
STATE_SIZES = {
    "resnet8": 56, "resnet14": 92, "resnet20": 128, "resnet32": 200, "resnet44": 272, "resnet56": 344,
    "resnet110": 668, "resnet8x4": 62, "resnet32x4": 206, "ResNet50": 320, "wrn_16_2": 83, "wrn_40_1": 226,
    "wrn_40_2": 227, "vgg8": 37, "vgg13": 72, "MobileNetV2": 320, "ShuffleV1": 296, "ShuffleV2": 338,
}  # fmt: skip

# Spot checks of key names per family, from RepDistiller's models/*.py (present, absent).
KEYS = {
    "resnet20": (
        {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.2.bn2.num_batches_tracked",
         "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "layer3.2.conv2.weight",
         "fc.weight", "fc.bias"},
        {"layer1.0.downsample.0.weight", "layer2.1.downsample.0.weight", "linear.weight", "layer1.0.conv1.bias"},
    ),
    "resnet8x4": (
        {"layer1.0.downsample.0.weight", "layer3.0.downsample.1.weight", "fc.weight"},
        {"layer1.1.conv1.weight"},
    ),
    "ResNet50": (
        {"conv1.weight", "layer1.0.conv3.weight", "layer1.0.shortcut.0.weight", "layer4.2.bn3.weight", "linear.weight"},
        {"layer1.1.shortcut.0.weight", "fc.weight"},
    ),
    "wrn_40_2": (
        {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
         "block3.layer.5.conv2.weight", "bn1.running_mean", "fc.weight"},
        {"block1.layer.1.convShortcut.weight", "conv1.bias"},
    ),
    "wrn_40_1": ({"block2.layer.0.convShortcut.weight"}, {"block1.layer.0.convShortcut.weight"}),
    "vgg13": (
        {"block0.0.weight", "block0.0.bias", "block0.1.running_mean", "block0.3.weight", "block0.4.weight",
         "block4.4.weight", "classifier.weight", "classifier.bias"},
        {"block0.5.weight", "block0.2.weight"},
    ),
    "vgg8": ({"block0.0.weight", "block0.1.weight", "block4.1.bias"}, {"block0.3.weight"}),
    "MobileNetV2": (
        {"conv1.0.weight", "conv1.1.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.running_var",
         "conv2.0.weight", "conv2.1.bias", "classifier.0.weight"},
        {"blocks.7.0.conv.0.weight", "classifier.weight"},
    ),
    "ShuffleV1": (
        {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"},
        {"layer1.0.shortcut.0.weight"},
    ),
    "ShuffleV2": (
        {"layer1.0.conv5.weight", "layer1.3.conv3.weight", "layer3.3.bn3.weight", "conv2.weight", "bn2.weight",
         "linear.weight"},
        {"layer1.4.conv1.weight"},
    ),
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2-image batches gain nothing from threads, and on a shared CPU spinning threads slow down
    (4x seen with the other tests running beside)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def settle(model: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm running statistics of real activations (not the initial 0 and 1: eval mode
    then depends on them, and the logits of deep nets keep a sane scale)."""
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))
    for bn in batchnorms:
        bn.momentum = 0.1
    return model.eval()


def one_line_usage_error(excinfo: pytest.ExceptionInfo, what: str, path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{what} {path} "), message
    return message


# ---------------------------------------------------------------------------------------------
# The original study's ResNets


@pytest.mark.parametrize("name", ["ResNet56", "ResNet20", "ResNetBaby"])
def test_forward_returns_the_three_stages_and_the_logits(name: str) -> None:
    model = build_model(name, num_classes=100).eval()
    stem, layer1, layer2, layer3, pooled, logits = model(torch.randn(2, 3, 32, 32))
    assert stem.shape == (2, 16, 32, 32) and pooled.shape == (2, 64)
    assert layer1.shape == (2, 16, 32, 32) and layer2.shape == (2, 32, 16, 16)
    assert layer3.shape == (2, 64, 8, 8) and logits.shape == (2, 100)


@pytest.mark.parametrize("name", list(ORIGINAL_MODELS))
def test_depth_is_six_times_blocks_plus_two(name: str) -> None:
    model = build_model(name, 10)
    assert model.stages == 3
    convs = [k for k, v in model.state_dict().items() if v.ndim == 4 and "shortcut" not in k]
    assert len(convs) + 1 == 6 * BLOCKS[name] + 2  # 3x3 convolutions plus the linear head


def test_state_dict_keys_are_the_originals() -> None:
    keys = set(build_model("ResNet20", 100).state_dict())
    expected = {
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.bias",
        "layer1.2.conv2.weight",
        "layer1.2.bn2.num_batches_tracked",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.weight",
        "layer2.0.shortcut.1.running_var",
        "layer3.0.shortcut.0.weight",
        "layer3.2.bn2.weight",
        "linear.weight",
        "linear.bias",
    }
    assert expected <= keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)  # identity where shapes agree
    assert not any(k.endswith("conv1.bias") or k.endswith("conv2.bias") for k in keys)  # bias-free
    assert build_model("ResNet20", 100).state_dict()["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)


def test_resnet112_computes_what_the_fields_resnet110_computes() -> None:
    """Same network, other key names: shortcut -> downsample, linear -> fc."""
    original = settle(build_model("ResNet112", 100))
    renamed = {
        key.replace(".shortcut.", ".downsample.").replace("linear.", "fc."): value
        for key, value in original.state_dict().items()
    }
    field = build_model("resnet110", 100)
    assert set(renamed) == set(field.state_dict())
    field.load_state_dict(renamed)
    field.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for ours, theirs in zip(original(images), field(images), strict=True):
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# The field's architectures


def test_the_registry_has_every_name_of_the_benchmark() -> None:
    field = {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)} | {"resnet8x4", "resnet32x4", "ResNet50"}
    field |= {"wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2", "ShuffleV1", "ShuffleV2"}
    assert set(FIELD_MODELS) == field and set(CIFAR_MODELS) == field | set(ORIGINAL_MODELS)
    assert set(MODELS) == set(CIFAR_MODELS) | {"resnet18", "resnet34", "resnet50", "MobileNetV1"}
    assert set(FEATURES) == set(CIFAR_MODELS) and set(PARAMS_M) | set(PARAMS_EXACT) == set(CIFAR_MODELS)


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_parameter_count_at_100_classes(name: str) -> None:
    count = n_params(build_model(name, 100))
    if name in PARAMS_M:
        assert round(count / 1e6, 3) == PARAMS_M[name]
    if name in PARAMS_EXACT:
        assert count == PARAMS_EXACT[name]


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_stage_shapes(name: str) -> None:
    assert stage_shapes(name) == FEATURES[name][0]


def test_a_network_pooled_for_smaller_images_is_refused_in_one_line() -> None:
    """RepDistiller's resnet8..110, resnet8x4/32x4, wrn and ShuffleNets pool a fixed 8x8 or 4x4 map:
    on Tiny ImageNet's 64x64 images their classifier would get a larger vector (a matmul error)."""
    with pytest.raises(UsageError, match="resnet8x4 cannot take 64x64 images") as error:
        stage_shapes("resnet8x4", image_size=64)
    fitting = str(error.value).split("pick --teacher and --student from ")[1].split(", ")
    assert {"vgg8", "MobileNetV2", "ResNet56", "resnet18"} <= set(fitting) and "resnet8x4" not in fitting
    assert not {"resnet8", "wrn_40_2", "ShuffleV1", "ShuffleV2"} & set(fitting)
    assert stage_shapes("vgg8", image_size=64)[-1] == (512, 4, 4)


@pytest.mark.parametrize("name", list(FIELD_MODELS))
def test_channels_last_forward_and_backward_reach_every_parameter(name: str) -> None:
    """Train mode, float32, a channels-last batch of 2: the outputs are RepDistiller's feature list
    plus the logits, and the loss reaches every parameter."""
    torch.manual_seed(0)
    model = build_model(name, 100).to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    outputs = model(images)
    maps, pooled_width = FEATURES[name]
    assert [tuple(out.shape) for out in outputs] == [(2, *shape) for shape in maps] + [(2, pooled_width), (2, 100)]
    assert model.stages == len(maps) - 1
    loss = F.cross_entropy(outputs[-1], torch.tensor([3, 7])) + sum(out.float().pow(2).mean() for out in outputs[:-1])
    loss.backward()
    lost = [key for key, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not lost
    assert all(p.grad.abs().sum() > 0 for key, p in model.named_parameters() if "weight" in key)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_bf16_autocast_with_channels_last(name: str) -> None:
    model = build_model(name, 10).to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
        loss = F.cross_entropy(outputs[-1], torch.tensor([1, 2]))
    assert outputs[-1].dtype == torch.bfloat16
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(KEYS))
def test_state_dict_keys_are_repdistillers(name: str) -> None:
    keys = set(build_model(name, 100).state_dict())
    present, absent = KEYS[name]
    assert present <= keys and not (absent & keys)


@pytest.mark.parametrize("name", list(STATE_SIZES))
def test_state_dict_sizes_are_repdistillers(name: str) -> None:
    assert len(build_model(name, 100).state_dict()) == STATE_SIZES[name]


# ---------------------------------------------------------------------------------------------
# load_checkpoint


def save_like_repdistiller(model: torch.nn.Module, path: Path) -> None:
    """``ckpt_epoch_240.pth`` as RepDistiller's train_teacher.py writes it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    F.cross_entropy(model(torch.randn(2, 3, 32, 32))[-1], torch.tensor([0, 1])).backward()
    optimizer.step()  # momentum buffers: tensors in the optimizer's state
    torch.save(
        {
            "epoch": 240,
            "model": model.state_dict(),
            "accuracy": torch.tensor(77.3),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )


@pytest.mark.parametrize("name", ["resnet110", "resnet32x4", "wrn_40_2", "vgg13"])
def test_a_repdistiller_teacher_loads_and_gives_the_same_logits(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = settle(build_model(name, 100))
    path = tmp_path / "ckpt_epoch_240.pth"
    save_like_repdistiller(teacher, path)
    teacher.eval()
    loaded = build_model(name, 100)
    load_checkpoint(loaded, path, f"--teacher_checkpoint ({name}, 100 classes)")
    loaded.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (teacher(images)[-1] - loaded(images)[-1]).abs().max().item() <= 1e-5


def test_the_original_format_a_bare_and_a_dataparallel_state_dict_load(tmp_path: Path) -> None:
    source = settle(build_model("ResNet20", 10))
    state = source.state_dict()
    layouts = {
        "original.pt": {"weights": state, "epoch": 3},
        "bare.pt": state,
        "dataparallel.pth": {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 240},
        "old-batchnorm.pt": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }
    images = torch.randn(2, 3, 32, 32)
    for file, checkpoint in layouts.items():
        torch.save(checkpoint, tmp_path / file)
        model = build_model("ResNet20", 10)
        load_checkpoint(model, tmp_path / file, "teacher")
        with torch.no_grad():
            assert torch.equal(model.eval()(images)[-1], source(images)[-1]), file
    assert state_dict_of({"model": state}).keys() == state.keys()


def test_another_architecture_is_a_one_line_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": build_model("resnet20", 100).state_dict(), "epoch": 240}, path)
    with pytest.raises(UsageError) as excinfo:
        load_checkpoint(build_model("resnet32x4", 100), path, "--teacher_checkpoint (resnet32x4, 100 classes)")
    message = one_line_usage_error(excinfo, "--teacher_checkpoint (resnet32x4, 100 classes)", path)
    assert "resnet32x4 (100 classes)" in message and "layer1.0.downsample" in message
    assert "holds resnet20 (100 classes) weights" in message


def test_another_number_of_classes_is_a_one_line_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "wrn.pth"
    torch.save({"model": build_model("wrn_40_2", 10).state_dict()}, path)
    with pytest.raises(UsageError) as excinfo:
        load_checkpoint(build_model("wrn_40_2", 100), path, "teacher")
    message = one_line_usage_error(excinfo, "teacher", path)
    assert "fc.weight (file 10x128, model 100x128)" in message and "wrn_40_2 (10 classes)" in message


def test_the_original_keys_into_the_fields_model_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"weights": build_model("ResNet56", 100).state_dict()}, path)
    with pytest.raises(UsageError) as excinfo:
        load_checkpoint(build_model("resnet56", 100), path, "teacher")
    message = one_line_usage_error(excinfo, "teacher", path)
    assert "missing keys" in message and "unexpected keys" in message and "ResNet56 (100 classes)" in message


@pytest.mark.parametrize("content", [b"", b"\x00junk\xff" * 100, b"PK\x03\x04truncated zip"])
def test_a_corrupt_file_is_a_one_line_usage_error(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(UsageError) as excinfo:
        load_checkpoint(build_model("resnet8", 100), path, "teacher")
    assert "cannot be read" in one_line_usage_error(excinfo, "teacher", path)


def test_a_missing_file_and_a_file_without_weights_are_one_line_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_checkpoint(build_model("resnet8", 100), tmp_path / "absent.pth", "teacher")
    one_line_usage_error(excinfo, "teacher", tmp_path / "absent.pth")
    for file, content in {"epoch.pth": {"epoch": 240, "accuracy": 71.2}, "list.pth": [torch.zeros(2)]}.items():
        torch.save(content, tmp_path / file)
        with pytest.raises(UsageError) as excinfo:
            load_checkpoint(build_model("resnet8", 100), tmp_path / file, "teacher")
        assert "is not a checkpoint of resnet8 (100 classes)" in one_line_usage_error(
            excinfo, "teacher", tmp_path / file
        )


class Payload:
    """Unpickling this would create a folder: a stand-in for code a checkpoint must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    torch.save({"model": build_model("resnet8", 100).state_dict(), "extra": Payload(marker)}, path)
    with pytest.raises(UsageError) as excinfo:
        load_checkpoint(build_model("resnet8", 100), path, "teacher")
    assert "weights-only loading refused it" in one_line_usage_error(excinfo, "teacher", path)
    assert not marker.exists()
