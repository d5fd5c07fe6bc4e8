"""ImageNet and Tiny-ImageNet read from JPEG files by DataLoader workers, as uint8 tensors.

Layouts (``data_dir`` is ``--data_dir``):

* ``imagenet``: the ImageFolder layout that torchvision's ``ImageNet`` and mdistiller read,
  ``data_dir/imagenet/train/<wnid>/*.JPEG`` and ``data_dir/imagenet/val/<wnid>/*.JPEG``. The
  validation archive unpacks flat; sorting it into class folders is the standard ``valprep.sh``'s
  job, or torchvision's parser's (``torchvision.datasets.ImageNet(data_dir/imagenet, split="val")``
  with ``ILSVRC2012_img_val.tar`` and ``ILSVRC2012_devkit_t12.tar.gz`` in that folder).
* ``tiny-imagenet``: ``tiny-imagenet-200.zip`` as it unpacks, ``data_dir/tiny-imagenet-200/`` with
  ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt`` (tab-separated: file, wnid, box); 200 classes of 64x64 images.

Both splits map the sorted wnids (of ``train/``; Tiny-ImageNet: of ``wnids.txt``) to 0..C-1, as
ImageFolder does for ``train/``, so a label means the same class in both.

Transforms are the field's (mdistiller's ``dataset/imagenet.py`` and ``dataset/tiny_imagenet.py``)
up to the tensor conversion: ImageNet trains on RandomResizedCrop(224) + horizontal flip and
evaluates on Resize(256) + CenterCrop(224); Tiny-ImageNet trains on RandomRotation(20) + horizontal
flip of the 64x64 images and evaluates on them as they are (mdistiller's recipe, so results compare
with its Tiny-ImageNet tables). Images leave the workers as uint8 CHW tensors instead of normalised
float32: a quarter of the bytes through worker pipes, pinned memory and the host-to-device copy,
and no per-image float arithmetic on the CPU. ``normalize_on_device`` then normalises whole
batches where the model runs, with the same values as ToTensor + Normalize.

Layout problems are one-line ``UsageError``s naming the folder or file and the expected layout.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.datasets import VisionDataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, pil_loader

from toolbox.config.choices import IMAGE_SIZES
from toolbox.datasets.sampling import EpochBatchSampler, SeededSamples, share
from toolbox.distributed import launched_rank
from toolbox.errors import UsageError

MeanStd = tuple[tuple[float, float, float], tuple[float, float, float]]
# Per-channel statistics in [0, 1] units: torchvision's ImageNet ones (its pretrained weights expect
# them) and mdistiller's Tiny-ImageNet ones.
IMAGENET_MEAN_STD: MeanStd = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TINY_IMAGENET_MEAN_STD: MeanStd = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))
MEAN_STD = {"imagenet": IMAGENET_MEAN_STD, "tiny-imagenet": TINY_IMAGENET_MEAN_STD}

IMAGENET_LAYOUT = "DATA_DIR/imagenet/train/<wnid>/*.JPEG and DATA_DIR/imagenet/val/<wnid>/*.JPEG"
TINY_IMAGENET_LAYOUT = (
    "DATA_DIR/tiny-imagenet-200/ as tiny-imagenet-200.zip unpacks: wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG and val/val_annotations.txt"
)
VALPREP = (
    "sort them into <wnid>/ folders with the standard valprep.sh run inside val/, or move val/ aside "
    "(torchvision sorts the archive only where no val/ exists) and run "
    "torchvision.datasets.ImageNet('DATA_DIR/imagenet', split='val') with ILSVRC2012_img_val.tar and "
    "ILSVRC2012_devkit_t12.tar.gz in DATA_DIR/imagenet"
)
BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises for a file that is no image it can decode: a corrupt, empty, truncated or text file
(UnidentifiedImageError is an OSError), a decompression bomb."""


class BadImage(UsageError):
    """An image file that cannot be read as one, named: bad input (exit status 2), not a failed write.
    Raised in a DataLoader worker too, whose wrapping ``FileImages`` undoes (``one_line``)."""


class ImageFiles(VisionDataset):
    """Labelled image files, read like torchvision's ImageFolder: ``samples`` (path, label),
    ``targets``, ``classes``, ``class_to_idx``, items (transformed image, label); ``loader``
    opens a file as an RGB PIL image."""

    def __init__(
        self,
        root: Path,
        samples: list[tuple[str, int]],
        classes: list[str],
        transform: Callable[[Image.Image], Any],
        size: tuple[int, int] | None = None,
    ) -> None:
        """``size``: (width, height) every image must have (Tiny-ImageNet's 64x64, which its
        transforms keep); None: any."""
        super().__init__(str(root), transform=transform)
        self.samples, self.classes, self.size = samples, classes, size
        self.targets = [label for _, label in samples]
        self.class_to_idx = {name: index for index, name in enumerate(classes)}
        self.loader: Callable[[str], Image.Image] = pil_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            image = self.loader(path)
            if self.size is not None and image.size != self.size:
                raise ValueError(f"it is {image.size[0]}x{image.size[1]}, not {self.size[0]}x{self.size[1]}")
            return self.transform(image), label
        except BAD_IMAGE as error:
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise BadImage(
                f"{path} cannot be read as an image ({reason}); replace or remove that file, then rerun"
            ) from None


# ---------------------------------------------------------------- transforms and normalisation


def imagenet_transform(train: bool) -> transforms.Compose:
    """RandomResizedCrop(224) + flip to train, Resize(256) + CenterCrop(224) to evaluate; uint8 CHW."""
    steps = (
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
        if train
        else [transforms.Resize(256), transforms.CenterCrop(224)]
    )
    return transforms.Compose([*steps, transforms.PILToTensor()])


def tiny_imagenet_transform(train: bool) -> transforms.Compose:
    """mdistiller's: RandomRotation(20) + flip to train, the 64x64 image as it is to evaluate; uint8 CHW."""
    steps = [transforms.RandomRotation(20), transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose([*steps, transforms.PILToTensor()])


@functools.lru_cache(maxsize=None)
def _mean_std_255(mean_std: MeanStd, device: torch.device) -> tuple[Tensor, Tensor]:
    mean, std = (torch.tensor(values, device=device).view(1, 3, 1, 1) * 255 for values in mean_std)
    return mean, std


def normalize_on_device(batch: Tensor, mean_std: MeanStd = IMAGENET_MEAN_STD) -> Tensor:
    """A uint8 (N, 3, H, W) batch as normalised float32, computed where the batch is (move it to
    the GPU first): (x / 255 - mean) / std, what ToTensor + Normalize give on the CPU."""
    mean, std = _mean_std_255(mean_std, batch.device)
    return (batch.float() - mean) / std


# ---------------------------------------------------------------- reading the layouts


def _folder(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; expected {layout}")
    return path


def _image_names(folder: Path) -> list[str]:
    """The image files directly in ``folder`` (ImageFolder's extensions), sorted."""
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.is_file() and has_file_allowed_extension(entry.name, IMG_EXTENSIONS)
        )


def _images_of_class(folder: Path, layout: str, walk: bool = False) -> list[str]:
    """The images of a class folder, sorted; ``walk``: in its sub-folders too, as ImageFolder finds
    them (``os.walk``, links followed)."""
    if walk:
        found, seen = [], set()
        for root, _, names in os.walk(folder, followlinks=True, onerror=_unreadable):
            real = os.path.realpath(root)
            if real in seen:  # ImageFolder would read the folder's images again, level after level
                raise UsageError(
                    f"{root} leads back to {real}, a folder read already (a loop of symbolic links); "
                    "remove the link, then rerun"
                )
            seen.add(real)
            found.append((root, names))
        paths = [
            os.path.join(root, name)
            for root, names in sorted(found)
            for name in sorted(names)
            if has_file_allowed_extension(name, IMG_EXTENSIONS)
        ]
    else:
        paths = [str(folder / name) for name in _image_names(folder)]
    if not paths:
        raise UsageError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}); expected {layout}")
    return paths


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder (a link to one too); a link that cannot be followed (a loop) is
    bad input, named."""
    try:
        return entry.is_dir()
    except OSError as error:
        _unreadable(error)


def _unreadable(error: OSError) -> NoReturn:
    """A folder that cannot be listed (no permission, a symbolic link to itself) is bad input."""
    raise UsageError(f"{error.filename} cannot be listed ({error.strerror or error}); fix or remove it, then rerun")


def _class_folders(split: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[str, int]]]:
    """The classes (sorted sub-folder names) and samples of one ImageNet split; ``classes`` (the
    training split's) fixes the labels of the validation split."""
    with os.scandir(_folder(split, IMAGENET_LAYOUT)) as entries:  # hidden folders (.ipynb_checkpoints) are no class
        found = sorted(entry.name for entry in entries if _is_folder(entry) and not entry.name.startswith("."))
    if not found:
        loose = len(_image_names(split))
        fix = f"it holds {loose} images but no class folders: {VALPREP}" if loose else "it holds no class folders"
        raise UsageError(f"{split} is not in the class-folder layout ({fix}); expected {IMAGENET_LAYOUT}")
    classes = found if classes is None else classes
    index = {name: label for label, name in enumerate(classes)}
    strays = [name for name in found if name not in index]
    if strays:
        raise UsageError(
            f"{split / strays[0]} is a class that {split.parent / 'train'} lacks ({len(strays)} such folders); "
            f"both splits need the same <wnid> folders: {IMAGENET_LAYOUT}"
        )
    samples = [
        (path, index[name]) for name in found for path in _images_of_class(split / name, IMAGENET_LAYOUT, walk=True)
    ]
    missing = [name for name in classes if name not in found]
    if missing and launched_rank() == 0:  # evaluated on the others' images: said, not refused (a choice one may make)
        print(
            f"warning: {split} lacks {len(missing)} of the {len(classes)} classes of train/ ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}): accuracy is measured on the others",
            file=sys.stderr,
        )
    return list(classes), samples


def imagenet_datasets(data_dir: str | Path) -> tuple[ImageFiles, ImageFiles]:
    """ImageNet's training and validation splits with the standard transforms."""
    root = Path(data_dir) / "imagenet"
    classes, train = _class_folders(root / "train", None)
    _, val = _class_folders(root / "val", classes)
    return (
        ImageFiles(root / "train", train, classes, imagenet_transform(train=True)),
        ImageFiles(root / "val", val, classes, imagenet_transform(train=False)),
    )


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise UsageError(
            f"{path} cannot be read ({error.strerror or error}); expected {TINY_IMAGENET_LAYOUT}"
        ) from None


def tiny_imagenet_datasets(data_dir: str | Path) -> tuple[ImageFiles, ImageFiles]:
    """Tiny-ImageNet's training and validation splits (200 classes, 64x64) with mdistiller's transforms."""
    root = _folder(Path(data_dir) / "tiny-imagenet-200", TINY_IMAGENET_LAYOUT)
    classes = sorted({line.strip() for line in _read_lines(root / "wnids.txt")})
    train = [
        (path, label)
        for label, wnid in enumerate(classes)
        for path in _images_of_class(
            _folder(root / "train" / wnid / "images", TINY_IMAGENET_LAYOUT), TINY_IMAGENET_LAYOUT
        )
    ]
    images = _folder(root / "val" / "images", TINY_IMAGENET_LAYOUT)
    present = set(_image_names(images))
    annotations = root / "val" / "val_annotations.txt"
    index = {name: label for label, name in enumerate(classes)}
    val = []
    listed: dict[str, int] = {}  # file -> the line that labels it
    for number, line in enumerate(_read_lines(annotations), 1):
        fields = line.split("\t")
        problem = (
            "has fewer than 2 tab-separated fields" if len(fields) < 2
            else f"names {fields[0]}, which {images} lacks" if fields[0] not in present
            else f"names the class {fields[1]}, which wnids.txt lacks" if fields[1] not in index
            else f"labels {fields[0]} again (line {listed[fields[0]]} did)" if fields[0] in listed
            else None
        )  # fmt: skip
        if fields[0] not in listed:
            listed[fields[0]] = number
        if problem:
            raise UsageError(f"{annotations} line {number} {problem}; expected {TINY_IMAGENET_LAYOUT}")
        val.append((str(images / fields[0]), index[fields[1]]))
    size = (IMAGE_SIZES["tiny-imagenet"],) * 2  # the transforms keep it: another would not stack into a batch
    return (
        ImageFiles(root / "train", train, classes, tiny_imagenet_transform(train=True), size),
        ImageFiles(root / "val", val, classes, tiny_imagenet_transform(train=False), size),
    )


IMAGE_DATASETS: dict[str, Callable[[str | Path], tuple[ImageFiles, ImageFiles]]] = {
    "imagenet": imagenet_datasets,
    "tiny-imagenet": tiny_imagenet_datasets,
}


# ---------------------------------------------------------------- loading


def image_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    device: torch.device,
    workers: int,
    rank: int = 0,
    ranks: int = 1,
) -> DataLoader:
    """Batches of ``dataset``'s uint8 images (an ``ImageFiles`` or a subset of one) decoded by
    ``workers`` processes (kept alive across epochs), pinned when they go to a GPU.

    Training: (images, labels, indices) in the seeded order of ``loader.batch_sampler``, an
    ``EpochBatchSampler``: call ``loader.batch_sampler.set_epoch(epoch, start_batch)`` before each
    epoch; rank ``rank`` of ``ranks`` gets its share of each global batch. Evaluation: (images,
    labels) of the rank's share of the files, in file order. The loader's own generator is seeded, so
    iterating it draws nothing from torch's global one."""
    options: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "generator": torch.Generator().manual_seed(seed),
    }
    if train:
        sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, ranks)
        return DataLoader(SeededSamples(dataset), batch_sampler=sampler, **options)
    return DataLoader(
        Subset(dataset, range(*share(0, len(dataset), rank, ranks))), batch_size=batch_size, shuffle=False, **options
    )


def one_line(error: BadImage) -> str:
    """A ``BadImage``'s own line: raised in a worker, DataLoader re-raises it with the worker's
    traceback around it, whose last line is ``...BadImage: <the line>``."""
    last = str(error).strip().splitlines()[-1]
    return last.split("BadImage: ", 1)[-1]


def default_workers() -> int:
    """min(8, the CPUs this process may use): torchvision's references' default, within the job's share."""
    return min(8, len(os.sched_getaffinity(0)))


class FileImages:
    """A ``toolbox.data_loader.DataSource`` of ImageNet or Tiny-ImageNet: the workers decode uint8
    batches into pinned memory, which are copied to the device without blocking and normalised
    there. A loader (and its persistent workers) is built once per split and batch size."""

    reads_files = True  # an epoch can fail on a file after hours: the trainer saves it before its test

    def __init__(self, name: str, data_dir: str | Path, device: torch.device, workers: int | None) -> None:
        self.train, self.test = IMAGE_DATASETS[name](data_dir)
        self.device = device
        self.workers = default_workers() if workers is None else workers
        self.mean_std = MEAN_STD[name]
        self.image_size = IMAGE_SIZES[name]
        self.num_classes = len(self.train.classes)
        self.train_labels = torch.tensor(self.train.targets, dtype=torch.long, device=device)
        self._loaders: dict[tuple[bool, int, int, int, int], DataLoader] = {}

    def _loader(self, train: bool, batch_size: int, seed: int, rank: int, ranks: int) -> DataLoader:
        key = (train, batch_size, seed, rank, ranks)
        if key not in self._loaders:
            self._loaders[key] = image_loader(
                self.train if train else self.test, batch_size, train, seed, self.device, self.workers, rank, ranks
            )
        return self._loaders[key]

    def _to_device(self, tensor: Tensor) -> Tensor:
        return tensor.to(self.device, non_blocking=True)

    @staticmethod
    def _batches(loader: DataLoader, count: int | None = None) -> Iterator[Any]:
        """The loader's batches; a bad image a worker met is its one line (``BadImage``), not the
        worker's traceback that DataLoader wraps it in."""
        try:
            yield from itertools.islice(loader, count)
        except BadImage as error:
            raise BadImage(one_line(error)) from None

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        max_batches: int | None = None,
        rank: int = 0,
        ranks: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        loader = self._loader(True, batch_size, seed, rank, ranks)
        loader.batch_sampler.set_epoch(epoch, start_batch)
        count = None if max_batches is None else max(0, max_batches - start_batch)
        for images, labels, indices in self._batches(loader, count):
            yield (
                normalize_on_device(self._to_device(images), self.mean_std),
                self._to_device(labels),
                self._to_device(indices),
            )

    def eval_batches(self, batch_size: int, rank: int = 0, ranks: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self._batches(self._loader(False, batch_size, 0, rank, ranks)):
            yield normalize_on_device(self._to_device(images), self.mean_std), self._to_device(labels)
