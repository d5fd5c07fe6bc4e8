"""The model registry and checkpoints: every architecture by name, loading and checking weights.

Every model's ``forward(x)`` returns ``[f0, f1, ..., fk, pooled, logits]``: RepDistiller's feature
list (``model(x, is_feat=True, preact=False)``) plus the logits. ``f0`` is the stem's output,
``f1``..``fk`` the stages' outputs, ``pooled`` the flattened pooled features. ``model.stages`` is
k, so ``--feature_layer`` ranges over 1..k; ``stage_shapes(name, image_size=...)`` gives the (C, H, W)
of f0..fk on the data set's images (32x32 by default). ``forward(x, preact=True)`` gives the
stages' maps before their last ReLU instead (``toolbox.nets.common``), for the methods that read
them. The distillers pick what they need, and nothing has to hook into the model.

The families live in ``toolbox.nets.cifar`` (the original study's ResNets; the field's ResNets,
wide ResNets and VGGs), ``toolbox.nets.mobile`` (MobileNetV2, ShuffleNetV1, ShuffleNetV2) and
``toolbox.nets.imagenet`` (torchvision's ResNets, mdistiller's MobileNetV1).

*The original study's ResNets* (``ResNet112``, ``ResNet110``, ``ResNet56``, ``ResNet32``,
``ResNet20``, ``ResNetBaby``): their module names are the original's state-dict keys (``shortcut``,
``linear``), so its checkpoints (``{"weights": state_dict}``) load as they are.

*The field's CIFAR-100 benchmark* (the CRD paper's RepDistiller and DKD's mdistiller): ``resnet8``
... ``resnet110``, ``resnet8x4``, ``resnet32x4``, ``ResNet50``, ``wrn_16_2``, ``wrn_40_1``,
``wrn_40_2``, ``vgg8``, ``vgg13``, ``MobileNetV2``, ``ShuffleV1``, ``ShuffleV2``. They compute what
those repositories' definitions compute (same layers, order, strides, padding and bias flags) and
their module names are those repositories' state-dict keys, so their released teachers
(``ckpt_epoch_240.pth``) load as they are with ``load_checkpoint``. ``resnet110`` computes what
``ResNet112`` computes; only the key names differ (``downsample``/``fc`` against
``shortcut``/``linear``). ``vgg8`` and ``vgg13`` are the BatchNorm variants (``vgg8_bn``,
``vgg13_bn``), as both repositories register them.
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from toolbox.config import choices
from toolbox.errors import UsageError, file_kind
from toolbox.nets.cifar import VGG, VGG_CONFIGS, BottleneckResNet, CifarResNet, ResNet, WideResNet
from toolbox.nets.mobile import mobile_half, shuffle_v1, shuffle_v2

# ---------------------------------------------------------------------------------------------
# Registry


def _resnet(blocks: tuple[int, int, int]) -> Callable[[int], ResNet]:
    return lambda num_classes: ResNet(blocks, num_classes)


def _cifar_resnet(depth: int, widths: tuple[int, int, int, int] = (16, 16, 32, 64)) -> Callable[[int], CifarResNet]:
    return lambda num_classes: CifarResNet(depth, widths, num_classes)


def _wrn(depth: int, widen_factor: int) -> Callable[[int], WideResNet]:
    return lambda num_classes: WideResNet(depth, widen_factor, num_classes)


def _vgg(name: str) -> Callable[[int], VGG]:
    return lambda num_classes: VGG(VGG_CONFIGS[name], num_classes)


# Name -> constructor taking the number of classes.
# The original study's (depth = 6 * blocks + 2; ResNet112 is its name for its 110-layer teacher):
ORIGINAL_MODELS: dict[str, Callable[[int], nn.Module]] = {
    "ResNet112": _resnet((18, 18, 18)),
    "ResNet110": _resnet((18, 18, 18)),
    "ResNet56": _resnet((9, 9, 9)),
    "ResNet32": _resnet((5, 5, 5)),
    "ResNet20": _resnet((3, 3, 3)),
    "ResNetBaby": _resnet((1, 1, 1)),
}
# The field's, under RepDistiller's / mdistiller's names:
FIELD_MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet8": _cifar_resnet(8),
    "resnet14": _cifar_resnet(14),
    "resnet20": _cifar_resnet(20),
    "resnet32": _cifar_resnet(32),
    "resnet44": _cifar_resnet(44),
    "resnet56": _cifar_resnet(56),
    "resnet110": _cifar_resnet(110),
    "resnet8x4": _cifar_resnet(8, (32, 64, 128, 256)),
    "resnet32x4": _cifar_resnet(32, (32, 64, 128, 256)),
    "ResNet50": lambda num_classes: BottleneckResNet((3, 4, 6, 3), num_classes),
    "wrn_16_2": _wrn(16, 2),
    "wrn_40_1": _wrn(40, 1),
    "wrn_40_2": _wrn(40, 2),
    "vgg8": _vgg("vgg8"),
    "vgg13": _vgg("vgg13"),
    "MobileNetV2": mobile_half,
    "ShuffleV1": shuffle_v1,
    "ShuffleV2": shuffle_v2,
}
CIFAR_MODELS: dict[str, Callable[[int], nn.Module]] = {**ORIGINAL_MODELS, **FIELD_MODELS}
# ImageNet's (``toolbox.nets.imagenet``): torchvision's resnet18/34/50, with torchvision's keys, and
# mdistiller's MobileNetV1; ``resnet50`` is torchvision's, ``ResNet50`` the CIFAR bottleneck network.


def _imagenet(name: str) -> Callable[[int], nn.Module]:
    """The builder of ImageNet network ``name``, which loads torchvision (over a second of start-up) only
    when one is built."""

    def build(num_classes: int) -> nn.Module:
        from toolbox.nets.imagenet import IMAGENET_MODELS

        return IMAGENET_MODELS[name](num_classes)

    return build


IMAGENET_MODELS: dict[str, Callable[[int], nn.Module]] = {name: _imagenet(name) for name in choices.IMAGENET_MODELS}
MODELS: dict[str, Callable[[int], nn.Module]] = {**CIFAR_MODELS, **IMAGENET_MODELS}
CIFAR_IMAGE_SIZE = 32


def build_model(name: str, num_classes: int) -> nn.Module:
    """A fresh model by its registry name; ``model.arch`` remembers the name."""
    model = MODELS[name](num_classes)
    model.arch = name
    return model


def stage_shapes(
    name: str, num_classes: int = 100, image_size: int = CIFAR_IMAGE_SIZE
) -> tuple[tuple[int, int, int], ...]:
    """(C, H, W) of the model's outputs f0 (stem) .. fk (last stage) on ``image_size`` images, so
    ``len(...) - 1`` is its number of stages (``model.stages``). The number of classes changes no
    map; it is accepted for symmetry with ``build_model``. A network whose pooling is sized for
    smaller images (RepDistiller's fixed 8x8 and 4x4 pools) is refused in one line."""
    try:
        return _traced_shapes(name, image_size)
    except RuntimeError:
        fitting = [other for other in MODELS if _takes(other, image_size)]
        raise UsageError(
            f"{name} cannot take {image_size}x{image_size} images: its pooling is sized for smaller ones; "
            f"for this --dataset pick --teacher and --student from {', '.join(fitting)}"
        ) from None


def _takes(name: str, image_size: int) -> bool:
    try:
        _traced_shapes(name, image_size)
    except RuntimeError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _traced_shapes(name: str, image_size: int) -> tuple[tuple[int, int, int], ...]:
    """Traced on the CPU, one image through a fresh model in eval mode (milliseconds for a CIFAR network).
    Not on the meta device: torch computes its initialisations there through code that loads
    torch._dynamo, a second of start-up for every command that names a run."""
    with torch.no_grad():
        outputs = MODELS[name](1).eval()(torch.zeros(1, 3, image_size, image_size))
    return tuple(tuple(out.shape[1:]) for out in outputs[:-2])


def head_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last linear layer, with its module name."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]


# ---------------------------------------------------------------------------------------------
# Checkpoints

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def state_dict_of(checkpoint: Any) -> dict[str, Tensor]:
    """The weights in a loaded checkpoint: ``{"weights": sd}`` (the original study's and this
    project's), ``{"model": sd, "epoch", "accuracy", "optimizer"...}`` (RepDistiller's and
    mdistiller's ``ckpt_epoch_240.pth``), ``{"state_dict": sd}``, or a bare state dict. Strips
    DataParallel's ``module.`` (and torch.compile's ``_orig_mod.``) prefix. ValueError if none."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"it holds a {type(checkpoint).__name__}, not a dict of weights")
    state: Any = checkpoint
    for key in ("weights", "model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    if not state or not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()):
        keys = ", ".join(map(repr, list(checkpoint)[:5]))
        raise ValueError(f"it holds no state dict (entries: {keys or 'none'})")
    state = dict(state)
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _shape(tensor: Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _first(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (f" (+{len(keys) - count} more)" if len(keys) > count else "")


@functools.lru_cache(maxsize=None)
def _signature(name: str) -> tuple[dict[str, torch.Size], str]:
    """An architecture's state-dict shapes (one class) and its head's name, built on the meta device."""
    with torch.device("meta"):
        model = MODELS[name](1)
    return {key: value.shape for key, value in model.state_dict().items()}, head_of(model)[0]


def identify(state: Mapping[str, Tensor]) -> list[str]:
    """The registry's architectures whose weights ``state`` holds, as ``"name (C classes)"``."""
    found = []
    for name in MODELS:
        shapes, head = _signature(name)
        heads = {f"{head}.weight", f"{head}.bias"}
        if set(shapes) == set(state) and all(shapes[key] == state[key].shape for key in shapes if key not in heads):
            found.append(f"{name} ({state[f'{head}.weight'].shape[0]} classes)")
    return found


def describe_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> Optional[str]:
    """Why ``state`` does not load into ``model`` (missing/unexpected keys, shapes), or None."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} (file {_shape(state[key])}, model {_shape(expected[key])})"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} shapes differ: {_first(reshaped, 2)}")
    return "; ".join(problems) or None


TORCH_ADVICE = (
    "weights_only",
    "safe_globals",
    "trust",
    "file an issue",
    "documentation",
    "can still be loaded",
    "following error message",
)
"""Words of torch's advice on how to load a refused file anyway: never repeated to the user."""


def read_error(error: Exception) -> str:
    """torch.load's failure in a few words: its weights-only refusals carry a page of advice, among
    it to load with ``weights_only=False`` (running the file's code), which is left out."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # terminal colours
    if text.startswith("Weights only load failed"):
        text = text.partition("WeightsUnpickler error:")[2] or text
        sentences = (part.strip() for part in re.split(r"(?<=[.:])\s+|\n+", text))
        reason = [part for part in sentences if part and not any(word in part for word in TORCH_ADVICE)]
        text = "weights-only loading refused it: " + (" ".join(reason) or "unsupported content")
    else:
        text = f"{type(error).__name__}: {text or 'empty or truncated file'}"
    return " ".join(text.split())[:240]


class NotACheckpoint(ValueError):
    """A file ``read_checkpoint`` refuses before torch reads it; the message says why."""


ZIP_SLACK = 1 << 20  # bytes of declared content beyond twice the file's size that a checkpoint may claim


def _check_zip(handle: Any, size: int) -> None:
    """torch.save stores a zip's entries uncompressed, so their sizes add up to about the file's;
    entries that would inflate far beyond it are a decompression bomb, refused before torch inflates them."""
    if handle.read(4) != b"PK\x03\x04":
        return  # not a zip: torch's legacy format, or junk that torch.load refuses by itself
    handle.seek(0)
    declared = sum(entry.file_size for entry in zipfile.ZipFile(handle).infolist())
    if declared > 2 * size + ZIP_SLACK:
        raise NotACheckpoint(
            f"is not a torch checkpoint: its entries are compressed to {size} bytes from {declared} "
            "(torch.save stores them uncompressed)"
        )


def read_checkpoint(path: Union[str, Path], map_location: Any) -> Any:
    """``torch.load(path, weights_only=True)`` of a regular file only: a FIFO or a device would block
    or never end, so the file is opened without blocking and checked before torch reads it (a
    symbolic link to a checkpoint is followed). NotACheckpoint for such a file or a zip bomb;
    torch's and the OS's errors as they come."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(descriptor)
        kind = file_kind(status.st_mode)
        if kind is not None:
            raise NotACheckpoint(f"is not a regular file ({kind})")
        os.set_blocking(descriptor, True)
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        _check_zip(handle, status.st_size)
        handle.seek(0)
        return torch.load(handle, map_location=map_location, weights_only=True)


def _describe(model: nn.Module) -> str:
    """``"resnet32x4 (100 classes)"``: the registry name (or class) and the head's width."""
    arch = getattr(model, "arch", type(model).__name__)
    heads = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return f"{arch} ({heads[-1].out_features} classes)" if heads else arch


def load_checkpoint(model: nn.Module, path: Path, what: str) -> None:
    """Load a checkpoint's weights into ``model`` (strictly: every key, every shape).

    Reads with ``read_checkpoint`` (a file that would run code is refused) and accepts the
    layouts of ``state_dict_of``. BatchNorm ``num_batches_tracked`` counters absent from old files
    are set to zero. Any failure (no such file, not a torch file, no weights in it, another
    architecture or number of classes) raises ``UsageError`` with one line
    ``"{what} {path} ..."`` naming the expected architecture and classes, the first differing keys
    and, when the file holds one of the registry's architectures, which.
    """
    expected = _describe(model)
    try:
        checkpoint = read_checkpoint(path, "cpu")
    except NotACheckpoint as error:
        raise UsageError(f"{what} {path} {error}") from None
    except Exception as error:  # missing, unreadable, truncated, junk, or a pickle that runs code
        raise UsageError(f"{what} {path} cannot be read as a torch checkpoint ({read_error(error)})") from None
    try:
        state = state_dict_of(checkpoint)
    except ValueError as error:
        raise UsageError(f"{what} {path} is not a checkpoint of {expected}: {error}") from None
    for key, buffer in model.state_dict().items():
        if (
            key.endswith("num_batches_tracked")
            and key not in state
            and key.rsplit(".", 1)[0] + ".running_mean" in state
        ):
            state[key] = torch.zeros_like(buffer, device="cpu")
    problem = describe_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
            return
        except Exception as error:  # e.g. a dtype that cannot be copied
            problem = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    try:
        holds = identify(state)
    except Exception:  # only a hint for the message
        holds = []
    guess = f"; the file holds {' or '.join(holds)} weights" if holds else ""
    raise UsageError(f"{what} {path} does not fit {expected}: {problem}{guess}")
