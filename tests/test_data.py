"""Data sets: CIFAR in its real on-disk format (written here, small) read through torchvision, the
download from a file:// archive, the lock that lets many jobs prepare one folder at once, digits,
augmentation."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import utils as tv_utils

from tests.conftest import patience
from toolbox.data_loader import augment, cifar_class, eval_batches, load_dataset, prepare_dataset, train_batches
from toolbox.datasets.cifar import CIFAR_NUM_CLASSES, VERIFIED_MARKER
from toolbox.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
N = 6  # images per batch file


def cifar_batch(n: int, seed: int, label_key: str, num_classes: int) -> dict:
    """A batch as CIFAR's python version stores it: (N, 3072) uint8 rows in CHW order, labels a list."""
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "testing batch",
        label_key: rng.integers(0, num_classes, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def split_files(name: str) -> tuple[list[str], list[str]]:
    cls = cifar_class(name)
    return [file for file, _ in cls.train_list], [file for file, _ in cls.test_list]


def cifar_files(name: str) -> dict[str, bytes]:
    """Every file torchvision reads, by name: the pickled batches and the meta file with class names."""
    train, test = split_files(name)
    files = {
        file: pickle.dumps(cifar_batch(N, index, LABEL_KEY[name], CIFAR_NUM_CLASSES[name]), protocol=2)
        for index, file in enumerate(train + test)
    }
    meta = cifar_class(name).meta
    files[meta["filename"]] = pickle.dumps({meta["key"]: [f"class{i}" for i in range(CIFAR_NUM_CLASSES[name])]})
    return files


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def class_patch(name: str, files: dict[str, bytes], archive: Path | None, tmp_path: Path) -> dict:
    """The class attributes that make torchvision accept our small files (and fetch our archive)."""
    cls = cifar_class(name)
    return {
        "train_list": [[file, md5(files[file])] for file, _ in cls.train_list],
        "test_list": [[file, md5(files[file])] for file, _ in cls.test_list],
        "meta": {**cls.meta, "md5": md5(files[cls.meta["filename"]])},
        "url": (archive or tmp_path / "no-such-archive.tar.gz").as_uri(),  # never the real URL
        "tgz_md5": md5(archive.read_bytes()) if archive else "0" * 32,
    }


def apply(monkeypatch: pytest.MonkeyPatch, name: str, patch: dict) -> None:
    for key, value in patch.items():
        monkeypatch.setattr(cifar_class(name), key, value)


def write_tree(root: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = root / cifar_class(name).base_folder
    folder.mkdir(parents=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    return folder


def make_archive(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    """A .tar.gz laid out like the real one (``<base_folder>/<file>``), served from a file:// URL."""
    staging = tmp_path / "staging"
    write_tree(staging, name, files)
    cls = cifar_class(name)
    archive = tmp_path / "served" / cls.filename
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / cls.base_folder, arcname=cls.base_folder)
    return archive


def expected_summary(name: str) -> list[int]:
    """[train count, test count, sum of train pixels, sum of test pixels] of cifar_files(name)."""
    train, test = split_files(name)
    batches = [cifar_batch(N, i, LABEL_KEY[name], CIFAR_NUM_CLASSES[name]) for i in range(len(train + test))]
    pixels = [int(batch["data"].astype(np.int64).sum()) for batch in batches]
    return [N * len(train), N * len(test), sum(pixels[: len(train)]), sum(pixels[len(train) :])]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_files_are_read_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    files = cifar_files(name)
    apply(monkeypatch, name, class_patch(name, files, None, tmp_path))
    folder = write_tree(tmp_path, name, files)
    data = load_dataset(name, tmp_path, "cpu")
    train, test = split_files(name)
    assert data.train_images.shape == (N * len(train), 3, 32, 32) and data.test_images.shape == (N, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.num_classes == CIFAR_NUM_CLASSES[name]
    first = pickle.loads(files[train[0]])
    assert np.array_equal(data.train_images[0].numpy().reshape(-1), first["data"][0])  # CHW row order
    assert data.train_labels[:N].tolist() == first[LABEL_KEY[name]]
    assert data.test_labels.tolist() == pickle.loads(files[test[0]])[LABEL_KEY[name]]
    assert [
        len(data.train_labels),
        len(data.test_labels),
        int(data.train_images.sum()),
        int(data.test_images.sum()),
    ] == expected_summary(name)
    assert (folder / VERIFIED_MARKER).exists()


def test_verified_data_is_not_hashed_again_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = cifar_files("cifar10")
    apply(monkeypatch, "cifar10", class_patch("cifar10", files, None, tmp_path))
    folder = write_tree(tmp_path, "cifar10", files)
    prepare_dataset("cifar10", tmp_path, download=False)
    hashed = []
    real_md5 = tv_utils.calculate_md5
    monkeypatch.setattr(
        tv_utils, "calculate_md5", lambda path, **kw: hashed.append(Path(path).name) or real_md5(path, **kw)
    )
    prepare_dataset("cifar10", tmp_path, download=False)
    assert hashed == []  # the marker matched: no 180 MB of hashing on every job start
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError) as error:
        prepare_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "data_batch_3 is missing or corrupt" in message
    assert (
        f"move {folder} away and download again" in message and "runner.py --prepare_data --dataset cifar10" in message
    )


def test_corrupt_file_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = cifar_files("cifar100")
    apply(monkeypatch, "cifar100", class_patch("cifar100", files, None, tmp_path))
    folder = write_tree(tmp_path, "cifar100", files)
    (folder / "meta").write_bytes(b"truncated")  # torchvision checks the meta file too
    with pytest.raises(UsageError, match=r"meta is missing or corrupt .*move .*cifar-100-python away") as error:
        load_dataset("cifar100", tmp_path, "cpu")
    assert "\n" not in str(error.value) and not (folder / VERIFIED_MARKER).exists()


def test_download_checks_md5_then_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = cifar_files("cifar100")
    archive = make_archive(tmp_path, "cifar100", files)
    apply(monkeypatch, "cifar100", class_patch("cifar100", files, archive, tmp_path))
    data_dir = tmp_path / "data"
    data = load_dataset("cifar100", data_dir, "cpu")
    assert [
        len(data.train_labels),
        len(data.test_labels),
        int(data.train_images.sum()),
        int(data.test_images.sum()),
    ] == expected_summary("cifar100")
    assert sorted(p.name for p in data_dir.iterdir()) == [
        ".cifar100.lock",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
    ]
    assert (data_dir / "cifar-100-python" / VERIFIED_MARKER).exists()


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = cifar_files("cifar10")
    archive = make_archive(tmp_path, "cifar10", files)
    apply(monkeypatch, "cifar10", {**class_patch("cifar10", files, archive, tmp_path), "tgz_md5": "0" * 32})
    data_dir = tmp_path / "data"
    with pytest.raises(
        UsageError, match="cifar-10-python.tar.gz downloaded from file://.* fails its MD5 check"
    ) as error:
        prepare_dataset("cifar10", data_dir)
    assert "\n" not in str(error.value)
    assert [p.name for p in data_dir.iterdir()] == [".cifar10.lock"]  # no archive, no folder, no staging


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apply(monkeypatch, "cifar10", class_patch("cifar10", cifar_files("cifar10"), None, tmp_path))
    data_dir = tmp_path / "data"
    with pytest.raises(
        UsageError, match=r"could not download file://.*no-such-archive.*place the archive at .*data"
    ) as error:
        load_dataset("cifar10", data_dir, "cpu")
    assert "\n" not in str(error.value)
    assert [p.name for p in data_dir.iterdir()] == [".cifar10.lock"]


def test_without_download_missing_data_names_the_url_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = cifar_files("cifar10")
    archive = make_archive(tmp_path, "cifar10", files)
    apply(monkeypatch, "cifar10", class_patch("cifar10", files, archive, tmp_path))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(UsageError) as error:
        prepare_dataset("cifar10", data_dir, download=False)
    message = str(error.value)
    assert "\n" not in message and "downloading is off" in message and archive.as_uri() in message
    assert (
        f"into {data_dir}/" in message
        and f"runner.py --prepare_data --dataset cifar10 -- --data_dir {data_dir}" in message
    )
    assert not (data_dir / "cifar-10-batches-py").exists()
    (data_dir / archive.name).write_bytes(archive.read_bytes())  # as the message says: an archive placed by hand
    data = load_dataset("cifar10", data_dir, "cpu", download=False)  # is extracted without any network
    assert len(data.train_labels) == 5 * N


def test_digits_needs_no_preparation() -> None:
    prepare_dataset("digits", "/nonexistent", download=False)
    prepare_dataset("imagenet", "/nonexistent", download=False)  # read from files where they are: nothing to prepare
    with pytest.raises(
        UsageError, match="--dataset must be one of cifar10, cifar100, digits, imagenet, tiny-imagenet; got 'mnist'"
    ):
        prepare_dataset("mnist", "/nonexistent")


CHILD = r"""
import json, os, sys, time, urllib.request
from pathlib import Path
from torchvision.datasets import utils
from toolbox.data_loader import cifar_class, load_dataset

name, data_dir, patch, counter, barrier, n, hang = json.loads(sys.argv[1])
for key, value in patch.items():
    setattr(cifar_class(name), key, value)

def counted(function, label, delay):
    def wrapper(*args, **kwargs):
        with open(counter, "a") as handle:
            handle.write(label + "\n")
        time.sleep(delay)  # hold the lock a while, so that the others have to wait for it
        result = function(*args, **kwargs)
        if hang == label:
            with open(counter, "a") as handle:
                handle.write("hanging\n")
            time.sleep(600)  # to be killed with the lock held and the extraction unfinished
        return result
    return wrapper

urllib.request.urlopen = counted(urllib.request.urlopen, "download", 1.0)
utils.extract_archive = counted(utils.extract_archive, "extract", 0.2)
Path(barrier, str(os.getpid())).touch()
deadline = time.time() + 60
while len(os.listdir(barrier)) < n and time.time() < deadline:
    time.sleep(0.01)
data = load_dataset(name, data_dir, "cpu")
sums = [int(data.train_images.sum()), int(data.test_images.sum())]
print(json.dumps([len(data.train_labels), len(data.test_labels), *sums]))
"""


def start_children(tmp_path: Path, name: str, patch: dict, n: int, hang: str = "") -> list[subprocess.Popen]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    argument = json.dumps([name, str(tmp_path / "data"), patch, str(tmp_path / "counter"), str(barrier), n, hang])
    return [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, argument], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]


def test_concurrent_jobs_download_and_extract_once(tmp_path: Path) -> None:
    files = cifar_files("cifar10")
    archive = make_archive(tmp_path, "cifar10", files)
    children = start_children(tmp_path, "cifar10", class_patch("cifar10", files, archive, tmp_path), 4)
    results = [child.communicate(timeout=patience(120)) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == expected_summary("cifar10")  # every one read complete data
    assert (tmp_path / "counter").read_text().split() == ["download", "extract"]
    assert any("waiting for another process preparing cifar10" in err for _, err in results)
    data_dir = tmp_path / "data"
    assert sorted(p.name for p in data_dir.iterdir()) == [
        ".cifar10.lock",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]


def test_a_job_killed_while_extracting_leaves_nothing_half_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = cifar_files("cifar100")
    archive = make_archive(tmp_path, "cifar100", files)
    patch = class_patch("cifar100", files, archive, tmp_path)
    (child,) = start_children(tmp_path, "cifar100", patch, 1, hang="extract")
    counter = tmp_path / "counter"
    deadline = time.time() + 60
    while "hanging" not in (counter.read_text() if counter.exists() else "") and time.time() < deadline:
        time.sleep(0.05)
    data_dir = tmp_path / "data"
    assert not (data_dir / "cifar-100-python").exists() and list(data_dir.glob(".cifar100-extracting-*"))
    os.kill(child.pid, signal.SIGKILL)  # the kernel releases its lock
    child.communicate(timeout=patience(30))
    apply(monkeypatch, "cifar100", patch)
    data = load_dataset("cifar100", data_dir, "cpu")  # extracts again from the archive already downloaded
    assert len(data.train_labels) == N and counter.read_text().split().count("download") == 1
    assert sorted(p.name for p in data_dir.iterdir()) == [
        ".cifar100.lock",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
    ]


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
    assert [len(y) for _, y, _ in first] == [512, 512, 414]  # the last batch is kept, smaller
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    indices = torch.cat([i for _, _, i in first])  # each training sample once, its label with it
    assert torch.equal(indices.sort().values, torch.arange(len(data.train_labels)))
    assert torch.equal(torch.cat([y for _, y, _ in first]), data.train_labels[indices])
    assert not torch.equal(first[0][0], other_epoch[0])
    assert len(list(train_batches(data, 512, seed=3, epoch=2, max_batches=2))) == 2
    rest = list(data.train_batches(512, seed=3, epoch=2, start_batch=1))  # a run resumed after one batch
    assert len(rest) == 2 and all(torch.equal(a, b) for x, y in zip(rest, first[1:]) for a, b in zip(x, y))
    assert sum(len(y) for _, y in eval_batches(data, 100)) == 359


@pytest.mark.parametrize("command", [["--distillation", "none", "--epochs", "1"], ["--evaluate", "unused.pth"]])
def test_a_stop_signal_ends_the_wait_for_the_data_lock_with_75(tmp_path: Path, command: list[str]) -> None:
    """A job queued behind another one's download is stopped at once, not after the download."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    holder = os.open(data_dir / ".cifar10.lock", os.O_RDONLY | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process preparing cifar10
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tucker_distillation.py"),
                "--dataset",
                "cifar10",
                "--student",
                "ResNetBaby",
                "--data_dir",
                str(data_dir),
                "--experiments_dir",
                str(tmp_path / "experiments"),
                *command,
            ],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert "waiting for another process preparing cifar10" in process.stderr.readline()
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=patience(30))
        assert process.returncode == 75, stderr
        assert time.monotonic() - sent < 5
        assert f"stopped by signal SIGTERM while waiting for the lock {data_dir / '.cifar10.lock'}" in stderr
    finally:
        os.close(holder)
    assert sorted(p.name for p in data_dir.iterdir()) == [".cifar10.lock"]  # nothing downloaded
