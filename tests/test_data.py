"""Data sets: CIFAR's real on-disk format (written here, small), the download, digits, augmentation."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from toolbox import data_loader
from toolbox.data_loader import CIFAR_SOURCES, augment, eval_batches, load_dataset, train_batches
from toolbox.errors import UsageError


def cifar_batch(n: int, seed: int, label_key: str, num_classes: int) -> dict:
    """A batch as CIFAR's python version stores it: (N, 3072) uint8 rows in CHW order, labels a list."""
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "testing batch",
        label_key: rng.integers(0, num_classes, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_cifar(root: Path, name: str, n: int = 6) -> dict[str, dict]:
    source = CIFAR_SOURCES[name]
    folder = root / source.folder
    folder.mkdir(parents=True)
    batches = {}
    for index, file in enumerate(source.train_files + source.test_files):
        batches[file] = cifar_batch(n, index, source.label_key, source.num_classes)
        (folder / file).write_bytes(pickle.dumps(batches[file], protocol=2))
    return batches


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_batches_are_parsed_into_images_and_labels(tmp_path: Path, name: str) -> None:
    batches = write_cifar(tmp_path, name)
    source = CIFAR_SOURCES[name]
    data = load_dataset(name, tmp_path, "cpu")
    assert data.train_images.shape == (6 * len(source.train_files), 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.num_classes == source.num_classes
    first = batches[source.train_files[0]]
    assert np.array_equal(data.train_images[0].numpy().reshape(-1), first["data"][0])  # CHW row order
    assert data.train_labels[:6].tolist() == first[source.label_key]
    assert data.test_labels.tolist() == batches[source.test_files[0]][source.label_key]


def test_corrupt_cifar_file_is_a_clear_error(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match=r"data_batch_3 is missing or corrupt .*delete .*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path, "cpu")


def archive_of(tmp_path: Path, name: str) -> Path:
    """A .tar.gz laid out like the real one, from small batch files."""
    staging = tmp_path / "staging"
    write_cifar(staging, name)
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / CIFAR_SOURCES[name].folder, arcname=CIFAR_SOURCES[name].folder)
    return archive


def test_download_checks_md5_then_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = archive_of(tmp_path, "cifar100")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    source = dataclasses.replace(CIFAR_SOURCES["cifar100"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(data_loader.CIFAR_SOURCES, "cifar100", source)
    data_dir = tmp_path / "data"
    data = load_dataset("cifar100", data_dir, "cpu")
    assert len(data.train_labels) == 6 and (data_dir / "archive.tar.gz").exists()
    assert not list(data_dir.glob("*.part"))


def test_download_with_wrong_md5_extracts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = archive_of(tmp_path, "cifar10")
    source = dataclasses.replace(CIFAR_SOURCES["cifar10"], url=archive.as_uri(), md5="0" * 32)
    monkeypatch.setitem(data_loader.CIFAR_SOURCES, "cifar10", source)
    data_dir = tmp_path / "data"
    with pytest.raises(UsageError, match="fails its MD5 check"):
        load_dataset("cifar10", data_dir, "cpu")
    assert not (data_dir / "cifar-10-batches-py").exists()


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setitem(data_loader.CIFAR_SOURCES, "cifar10", dataclasses.replace(CIFAR_SOURCES["cifar10"], url=missing))
    with pytest.raises(UsageError, match="could not download .*place the archive at"):
        load_dataset("cifar10", tmp_path / "data", "cpu")
    assert not list((tmp_path / "data").glob("*"))


def test_digits_is_cifar_shaped_with_a_fixed_split() -> None:
    first, second = load_dataset("digits", "unused", "cpu"), load_dataset("digits", "unused", "cpu")
    assert first.train_images.shape == (1438, 3, 32, 32) and first.test_images.shape == (359, 3, 32, 32)
    assert first.num_classes == 10 and set(first.test_labels.tolist()) == set(range(10))
    assert torch.equal(first.test_images, second.test_images)
    normalized = first.normalize(first.train_images)
    assert normalized.mean().abs() < 1e-3 and (normalized.std() - 1).abs() < 1e-2


def test_augment_crops_padded_windows_and_flips() -> None:
    images = torch.arange(4 * 3 * 32 * 32, dtype=torch.int64).view(4, 3, 32, 32) % 251 + 1
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(4):  # every output is one of the 81 padded windows, possibly mirrored
        windows = [padded[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_training_batches_are_reproducible_per_seed_and_epoch() -> None:
    data = load_dataset("digits", "unused", "cpu")
    first = list(train_batches(data, 512, seed=3, epoch=2))
    again = list(train_batches(data, 512, seed=3, epoch=2))
    other_epoch = next(train_batches(data, 512, seed=3, epoch=3))
    assert [len(y) for _, y in first] == [512, 512, 414]  # the last batch is kept, smaller
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other_epoch[0])
    assert len(list(train_batches(data, 512, seed=3, epoch=2, max_batches=2))) == 2
    assert sum(len(y) for _, y in eval_batches(data, 100)) == 359
