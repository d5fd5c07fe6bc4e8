"""ImageNet and Tiny-ImageNet readers on tiny trees the tests write: class mapping, transformed
sizes, seeded epochs that resume mid-epoch, on-device normalisation, and one-line errors for each
malformed layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from toolbox.datasets.imagenet import (
    IMAGENET_MEAN_STD,
    BadImage,
    FileImages,
    image_loader,
    imagenet_datasets,
    normalize_on_device,
    tiny_imagenet_datasets,
)
from toolbox.errors import UsageError

WNIDS = ["n01443537", "n01530575", "n02085620", "n09999999"]  # sorted
PER_CLASS = 6
CPU = torch.device("cpu")


def write_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.fixture
def imagenet(tmp_path: Path) -> Path:
    """DATA_DIR with imagenet/{train,val}/<wnid>/*.JPEG: 4 classes x 6 (train) and x 2 (val) 80x64 images."""
    for label, wnid in enumerate(reversed(WNIDS)):  # written out of order: the mapping must sort
        for i in range(PER_CLASS):
            write_jpeg(tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{i}.JPEG", 80, 64, 10 * label + i)
        for i in range(2):
            write_jpeg(
                tmp_path / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{label}{i}.JPEG", 80, 64, 100 + 10 * label + i
            )
    return tmp_path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """DATA_DIR with tiny-imagenet-200/ as it unpacks: 3 classes x 4 training and 6 validation 64x64 images."""
    root = tmp_path / "tiny-imagenet-200"
    wnids = WNIDS[:3]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    for label, wnid in enumerate(wnids):
        for i in range(4):
            write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 64, 64, 10 * label + i)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i in range(6):
        write_jpeg(root / "val" / "images" / f"val_{i}.JPEG", 64, 64, 200 + i)
        lines.append(f"val_{i}.JPEG\t{wnids[(i * 2) % 3]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_imagenet_classes_and_sizes(imagenet: Path) -> None:
    train, val = imagenet_datasets(imagenet)
    reference = ImageFolder(str(imagenet / "imagenet" / "train"))
    assert train.classes == val.classes == WNIDS and train.class_to_idx == reference.class_to_idx
    assert train.samples == reference.samples  # torchvision's order and labels
    assert len(val) == 2 * len(WNIDS) and sorted(set(val.targets)) == [0, 1, 2, 3]
    assert all(Path(path).parent.name == WNIDS[label] for path, label in val.samples)
    for dataset in (train, val):
        image, _ = dataset[0]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 224, 224)


def test_tiny_imagenet_classes_and_sizes(tiny: Path) -> None:
    train, val = tiny_imagenet_datasets(tiny)
    assert train.classes == val.classes == WNIDS[:3]
    assert len(train) == 12 and train.targets == [0] * 4 + [1] * 4 + [2] * 4
    assert [Path(path).name for path, _ in val.samples] == [f"val_{i}.JPEG" for i in range(6)]
    assert val.targets == [0, 2, 1, 0, 2, 1]
    for dataset in (train, val):
        image, _ = dataset[0]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 64, 64)


def epoch(loader: torch.utils.data.DataLoader, number: int, start_batch: int = 0) -> list[tuple[torch.Tensor, ...]]:
    loader.batch_sampler.set_epoch(number, start_batch)
    return list(loader)


def assert_same_batches(first: list[tuple[torch.Tensor, ...]], second: list[tuple[torch.Tensor, ...]]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert all(torch.equal(a, b) for a, b in zip(one, other))


def test_epochs_are_seeded_and_resume_mid_epoch(tiny: Path) -> None:
    train, _ = tiny_imagenet_datasets(tiny)
    loader = image_loader(train, 5, train=True, seed=3, device=CPU, workers=0)
    state = torch.random.get_rng_state()
    full = epoch(loader, 1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    assert [len(batch[2]) for batch in full] == [5, 5, 2]
    assert sorted(torch.cat([batch[2] for batch in full]).tolist()) == list(range(12))
    assert all(torch.equal(labels, torch.tensor([train.targets[i] for i in indices])) for _, labels, indices in full)
    assert_same_batches(full, epoch(image_loader(train, 5, train=True, seed=3, device=CPU, workers=0), 1))
    other = epoch(loader, 2)
    assert not torch.equal(full[0][2], other[0][2])
    images = {
        epoch_number: dict(zip(torch.cat([b[2] for b in batches]).tolist(), torch.cat([b[0] for b in batches])))
        for epoch_number, batches in ((1, full), (2, other))
    }
    assert sum(not torch.equal(images[1][i], images[2][i]) for i in range(12)) >= 10  # augmented afresh each epoch

    decoded = []
    train.loader = lambda path: decoded.append(path) or Image.open(path).convert("RGB")
    resumed = epoch(loader, 1, start_batch=1)
    assert_same_batches(resumed, full[1:])  # same samples, same order, same augmentation
    assert sorted(decoded) == sorted(train.samples[i][0] for i in torch.cat([b[2] for b in full[1:]]).tolist())
    assert len(loader) == 2


def test_workers_give_the_same_batches(tiny: Path) -> None:
    """Also across epochs of the same persistent workers, the first one resumed."""
    train, _ = tiny_imagenet_datasets(tiny)
    loaders = [image_loader(train, 4, train=True, seed=0, device=CPU, workers=workers) for workers in (0, 2)]
    in_process, with_workers = ([*epoch(loader, 0, start_batch=1), *epoch(loader, 1)] for loader in loaders)
    assert len(in_process) == 2 + 3
    assert_same_batches(in_process, with_workers)


def test_two_ranks_share_each_global_batch_of_one_process(tiny: Path) -> None:
    """Rank 0's part of every global batch, then rank 1's, is one process's batch: the same samples,
    in the same order, with the same augmentation (also resumed mid-epoch); evaluation splits the
    files between the ranks without overlap."""
    train, test = tiny_imagenet_datasets(tiny)
    one = epoch(image_loader(train, 5, train=True, seed=3, device=CPU, workers=0), 1)
    for start_batch in (0, 1):
        parts = [
            epoch(
                image_loader(train, 5, train=True, seed=3, device=CPU, workers=0, rank=rank, ranks=2),
                1,
                start_batch=start_batch,
            )
            for rank in (0, 1)
        ]
        assert [len(batch[2]) for batch in parts[0]] == [3, 3, 1][start_batch:]  # the first rank takes the odd sample
        joined = [tuple(torch.cat(pair) for pair in zip(first, second)) for first, second in zip(*parts)]
        assert_same_batches(joined, one[start_batch:])
    shares = [
        torch.cat(
            [
                labels
                for _, labels in image_loader(test, 4, train=False, seed=0, device=CPU, workers=0, rank=rank, ranks=2)
            ]
        )
        for rank in (0, 1)
    ]
    whole = torch.cat([labels for _, labels in image_loader(test, 4, train=False, seed=0, device=CPU, workers=0)])
    assert torch.equal(torch.cat(shares), whole) and all(len(part) > 0 for part in shares)


def test_evaluation_batches_are_in_file_order(imagenet: Path) -> None:
    _, val = imagenet_datasets(imagenet)
    batches = list(image_loader(val, 3, train=False, seed=0, device=CPU, workers=0))
    assert torch.cat([labels for _, labels in batches]).tolist() == val.targets
    assert batches[0][0].dtype == torch.uint8 and tuple(batches[0][0].shape) == (3, 3, 224, 224)


def test_normalize_on_device_matches_to_tensor_and_normalize(imagenet: Path) -> None:
    path = imagenet / "imagenet" / "val" / WNIDS[0] / "ILSVRC2012_val_30.JPEG"
    image = Image.open(path).convert("RGB")
    expected = transforms.Normalize(*IMAGENET_MEAN_STD)(transforms.ToTensor()(image))
    ours = normalize_on_device(transforms.PILToTensor()(image).unsqueeze(0))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-5)


def one_line_error(reader, data_dir: Path) -> str:
    with pytest.raises(UsageError) as caught:
        reader(data_dir)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_imagenet_layout_errors(imagenet: Path, tmp_path: Path) -> None:
    root = imagenet / "imagenet"
    message = one_line_error(imagenet_datasets, tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / "imagenet" / "train") in message and "<wnid>/*.JPEG" in message

    stray = root / "val" / "n00000001"
    write_jpeg(stray / "a.JPEG", 8, 8, 0)
    message = one_line_error(imagenet_datasets, imagenet)
    assert str(stray) in message and "lacks" in message
    shutil.rmtree(stray)

    empty = root / "train" / WNIDS[1]
    shutil.rmtree(empty)
    empty.mkdir()
    message = one_line_error(imagenet_datasets, imagenet)
    assert str(empty) in message and "holds no images" in message and "<wnid>/*.JPEG" in message
    write_jpeg(empty / "a.JPEG", 8, 8, 0)

    shutil.rmtree(root / "val")
    for i in range(3):
        write_jpeg(root / "val" / f"ILSVRC2012_val_0000000{i}.JPEG", 8, 8, i)
    message = one_line_error(imagenet_datasets, imagenet)
    assert str(root / "val") in message and "3 images but no class folders" in message
    assert "valprep.sh run inside val/" in message and "move val/ aside" in message  # torchvision sorts none else

    shutil.rmtree(root / "train")
    (root / "train").mkdir()
    message = one_line_error(imagenet_datasets, imagenet)
    assert str(root / "train") in message and "holds no class folders" in message


def test_tiny_imagenet_layout_errors(tiny: Path, tmp_path: Path) -> None:
    root = tiny / "tiny-imagenet-200"
    annotations = root / "val" / "val_annotations.txt"
    good = annotations.read_text()
    for line, expected in [
        ("val_9.JPEG\tn01443537", f"line 7 names val_9.JPEG, which {root / 'val' / 'images'} lacks"),
        ("val_0.JPEG\tn00000000", "line 7 names the class n00000000, which wnids.txt lacks"),
        ("val_0.JPEG", "line 7 has fewer than 2 tab-separated fields"),
    ]:
        annotations.write_text(good + line + "\n")
        assert f"{annotations} {expected}" in one_line_error(tiny_imagenet_datasets, tiny)
    annotations.unlink()
    message = one_line_error(tiny_imagenet_datasets, tiny)
    assert str(annotations) in message and "val/val_annotations.txt" in message

    shutil.rmtree(root / "train" / WNIDS[2] / "images")
    message = one_line_error(tiny_imagenet_datasets, tiny)
    assert str(root / "train" / WNIDS[2] / "images") in message and "train/<wnid>/images/*.JPEG" in message

    (root / "wnids.txt").unlink()
    assert str(root / "wnids.txt") in one_line_error(tiny_imagenet_datasets, tiny)
    assert str(tmp_path / "none" / "tiny-imagenet-200") in one_line_error(tiny_imagenet_datasets, tmp_path / "none")


# ---------------------------------------------------------------- files that are no image, odd folders


def truncated_jpeg(path: Path) -> bytes:
    write_jpeg(path.with_suffix(".JPEG"), 80, 64, 0)
    return path.with_suffix(".JPEG").read_bytes()[:121]


def bomb_png(path: Path) -> bytes:
    """15000x15000 pixels (over twice PIL's limit against decompression bombs) in a few kilobytes."""
    Image.new("1", (15000, 15000)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "content, reason",
    [
        (lambda path: b"", "cannot identify image file"),
        (lambda path: b"a text, not an image\n", "cannot identify image file"),
        (truncated_jpeg, "truncated"),
        (bomb_png, "decompression bomb"),
    ],
    ids=["empty", "text", "truncated", "bomb"],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_is_no_image_is_one_line_naming_it(
    imagenet: Path, tmp_path: Path, content, reason: str, workers: int
) -> None:
    bad = imagenet / "imagenet" / "train" / WNIDS[0] / f"{WNIDS[0]}_bad.JPEG"
    bad.write_bytes(content(tmp_path / "source.png"))
    train, _ = imagenet_datasets(imagenet)
    loader = image_loader(train, 8, True, 0, CPU, workers)
    loader.batch_sampler.set_epoch(0)
    with pytest.raises(BadImage) as raised:
        list(FileImages._batches(loader))
    line = str(raised.value)
    assert "\n" not in line and line.startswith(f"{bad} cannot be read as an image (") and reason in line.lower()


def test_a_tiny_imagenet_image_of_another_size_is_one_line_naming_it(tiny: Path) -> None:
    odd = tiny / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG"
    write_jpeg(odd, 80, 64, 0)  # every image must be 64x64: the batches stack them
    _, val = tiny_imagenet_datasets(tiny)
    index = next(i for i, (path, _) in enumerate(val.samples) if path == str(odd))
    with pytest.raises(BadImage, match=rf"^{odd} cannot be read as an image \(it is 80x64, not 64x64\)"):
        val[index]


def test_class_folders_are_read_as_imagefolder_reads_them_but_hidden_ones(
    imagenet: Path, capsys: pytest.CaptureFixture
) -> None:
    """Images in sub-folders of a class count (ImageFolder walks them); a hidden folder
    (.ipynb_checkpoints) is no class; a class that val/ lacks is said in one warning line."""
    train_dir = imagenet / "imagenet" / "train"
    write_jpeg(train_dir / WNIDS[1] / "extra" / "nested.JPEG", 80, 64, 1)
    write_jpeg(train_dir / ".ipynb_checkpoints" / "x.JPEG", 80, 64, 2)
    shutil.rmtree(imagenet / "imagenet" / "val" / WNIDS[3])
    train, val = imagenet_datasets(imagenet)
    shutil.rmtree(train_dir / ".ipynb_checkpoints")  # which ImageFolder would take for a class
    reference = ImageFolder(str(train_dir))
    assert train.classes == WNIDS and train.samples == reference.samples
    assert str(train_dir / WNIDS[1] / "extra" / "nested.JPEG") in dict(train.samples)
    assert sorted(set(val.targets)) == [0, 1, 2]  # the labels of train/'s classes
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and f"lacks 1 of the 4 classes of train/ ({WNIDS[3]})" in warning


def test_a_loop_of_links_is_named(imagenet: Path) -> None:
    train_dir = imagenet / "imagenet" / "train"
    (train_dir / WNIDS[0] / "again").symlink_to(".")  # ImageFolder would read the class 40 times over
    with pytest.raises(UsageError, match=rf"^{train_dir / WNIDS[0] / 'again'} leads back to .*loop of symbolic links"):
        imagenet_datasets(imagenet)
    (train_dir / WNIDS[0] / "again").unlink()
    (train_dir / "self").symlink_to("self")
    with pytest.raises(UsageError, match=rf"^{train_dir / 'self'} cannot be listed \(Too many levels of symbolic"):
        imagenet_datasets(imagenet)


def test_val_annotations_that_label_a_file_twice_are_refused(tiny: Path) -> None:
    annotations = tiny / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + f"val_0.JPEG\t{WNIDS[2]}\t0\t0\t63\t63\n")
    with pytest.raises(UsageError, match="val_annotations.txt line 7 labels val_0.JPEG again \\(line 1 did\\)"):
        tiny_imagenet_datasets(tiny)
