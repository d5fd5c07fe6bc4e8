"""CIFAR-10 and CIFAR-100: downloaded once, locked, verified, read by torchvision.

CIFAR-10/100 come from ``torchvision.datasets.CIFAR10/CIFAR100``: they are read by it, with its
URL, archive MD5, per-file MD5s, extraction and folder layout (``data_dir/cifar-10-batches-py``,
``data_dir/cifar-100-python``, the archive next to it), so an existing torchvision download is
reused. ``prepare_cifar`` makes sure a data set is complete in ``data_dir`` and is safe when many
jobs start at once on a shared folder:

* an exclusive ``fcntl.flock`` on ``data_dir/.<name>.lock`` is held while checking, downloading and
  extracting, so concurrent jobs wait for one another and the archive is fetched once; the kernel
  releases the lock when its holder dies. Reading takes the same lock shared, so jobs read in
  parallel but never while another process is extracting.
* the archive is downloaded (into a temporary file, renamed once its MD5 matches) only when no
  good copy is in ``data_dir``, which is also where to put one by hand. It is extracted into a
  hidden staging folder, checked file by file against torchvision's MD5s, then renamed into
  place: a half-extracted folder is never visible under its final name.
* after a successful check a marker ``<folder>/.verified`` (written atomically) records each file's
  size and mtime; later checks under the exclusive lock compare those instead of hashing 180 MB
  again (torchvision still hashes the files it reads, but in parallel, under the shared lock).

Problems are one-line ``UsageError``s naming the file or folder and the command that fixes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import shlex
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from toolbox.datasets.on_device import Dataset, on_device
from toolbox.errors import UsageError
from toolbox.stop import interruptible

REPO = Path(__file__).resolve().parents[2]


CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


# Per-channel statistics of the training images, in [0, 1] units.
CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


VERIFIED_MARKER = ".verified"


DOWNLOAD_TIMEOUT_S = 60  # per network read: a stalled download must not hold the lock for ever


def cifar_class(name: str) -> Any:
    """torchvision's dataset class for ``name`` (imported here: digits-only runs do without it)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    classes = {"cifar10": CIFAR10, "cifar100": CIFAR100}
    if name not in classes:
        raise UsageError(f"--dataset: {name!r} is not a CIFAR data set ({', '.join(classes)})")
    return classes[name]


def fetch_command(name: str, data_dir: Path) -> str:
    """The command that downloads ``name`` into ``data_dir``, for error messages."""
    return shlex.join(
        [
            "python",
            str(REPO / "runner.py"),
            "--prepare_data",
            "--dataset",
            name,
            "--",
            "--data_dir",
            str(Path(data_dir).absolute()),
        ]
    )


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


@contextlib.contextmanager
def data_lock(data_dir: Path, name: str, shared: bool = False) -> Iterator[None]:
    """``flock`` on ``data_dir/.<name>.lock``: exclusive to check/download/extract, shared to read.

    The lock file is never deleted (deleting it would let two processes lock two different files).
    Where it cannot be created (a read-only shared data folder) nothing can be extracted either, so
    we go on without it."""
    path = data_dir / f".{name}.lock"
    try:  # read-only is enough for flock, and works on a lock file another user created
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            yield
            return
        raise
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            with interruptible(
                f"waiting for the lock {path}"
            ):  # a stop signal ends the wait, not just the job after it
                print(
                    f"waiting for another process preparing {name} in {data_dir} (lock {path})",
                    file=sys.stderr,
                    flush=True,
                )
                fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


def _expected_files(cls: Any) -> list[tuple[str, str]]:
    """(file name, MD5) of every file torchvision reads, the meta file included."""
    return [(file, md5) for file, md5 in [*cls.train_list, *cls.test_list]] + [(cls.meta["filename"], cls.meta["md5"])]


def _fingerprint(folder: Path, cls: Any) -> dict | None:
    """What the marker records: each file's expected MD5, size and mtime; None if one is missing."""
    files = {}
    for file, md5 in _expected_files(cls):
        try:
            stat = (folder / file).stat()
        except OSError:
            return None
        files[file] = [md5, stat.st_size, stat.st_mtime_ns]
    return {"archive_md5": cls.tgz_md5, "files": files}


def _marker_is_current(folder: Path, cls: Any) -> bool:
    try:
        recorded = json.loads((folder / VERIFIED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return recorded == _fingerprint(folder, cls)


def _write_marker(folder: Path, fingerprint: dict | None) -> None:
    """Atomically (temporary file, then rename); skipped where the folder is read-only."""
    if fingerprint is None:
        return
    temporary = folder / f"{VERIFIED_MARKER}.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps(fingerprint))
        os.replace(temporary, folder / VERIFIED_MARKER)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def _first_bad_file(folder: Path, cls: Any) -> str | None:
    """The first file that is missing or fails torchvision's MD5, or None."""
    from torchvision.datasets import utils

    for file, md5 in _expected_files(cls):
        if not utils.check_integrity(folder / file, md5):
            return file
    return None


def prepare_cifar(name: str, data_dir: str | Path, download: bool = True) -> None:
    """Make sure ``name`` is present and complete in ``data_dir``, downloading it once if allowed.

    Safe to call from many processes at once on one (local or NFS) folder: they take turns on an
    exclusive lock, the first downloads and extracts, the others find the data complete. Cheap
    once the data was verified. Raises a one-line UsageError with the command to run when the data is missing and
    ``download`` is False, or is corrupt."""
    cls = cifar_class(name)
    data_dir = Path(data_dir)
    if download:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(
                f"cannot create the data folder {data_dir} ({_one_line(error)}); pass another --data_dir"
            ) from None
    elif not data_dir.is_dir():
        raise _missing_error(name, cls, data_dir)
    with data_lock(data_dir, name):
        _prepare_locked(name, cls, data_dir, download)


def _missing_error(name: str, cls: Any, data_dir: Path) -> UsageError:
    return UsageError(
        f"{name} is not in {data_dir / cls.base_folder} and downloading is off: run `{fetch_command(name, data_dir)}` "
        f"where there is internet, or download {cls.url} into {data_dir}/ (it is extracted on first use)"
    )


def _verify(folder: Path, cls: Any, problem: Callable[[str], str]) -> None:
    """Check every file of ``folder`` against torchvision's MD5s (``problem(file)`` is the error for
    the first bad one), then leave the marker that spares the next check the hashing."""
    fingerprint = _fingerprint(folder, cls)  # before hashing: a change while we hash shows next time
    bad = _first_bad_file(folder, cls)
    if bad is not None:
        raise UsageError(problem(bad))
    _write_marker(folder, fingerprint)


def _prepare_locked(name: str, cls: Any, data_dir: Path, download: bool) -> None:
    folder = data_dir / cls.base_folder
    if folder.is_dir():
        if _marker_is_current(folder, cls):
            return
        _verify(
            folder,
            cls,
            lambda bad: (
                f"{folder / bad} is missing or corrupt (MD5 differs from torchvision's); "
                f"move {folder} away and download again: {fetch_command(name, data_dir)}"
            ),
        )
        return
    for stale in data_dir.glob(f".{name}-extracting-*"):  # left by a process that died while extracting
        shutil.rmtree(stale, ignore_errors=True)
    for stale in data_dir.glob(f".{cls.filename}.*.part"):  # ... or while downloading
        stale.unlink(missing_ok=True)
    archive = data_dir / cls.filename
    from torchvision.datasets import utils

    if not utils.check_integrity(archive, cls.tgz_md5):
        if not download:
            if archive.exists():
                raise UsageError(
                    f"{archive} fails its MD5 check (expected {cls.tgz_md5}); delete it and download again: "
                    f"{fetch_command(name, data_dir)}"
                )
            raise _missing_error(name, cls, data_dir)
        _download(name, cls, data_dir, archive)
    _extract(name, cls, data_dir, archive, folder)


def _download(name: str, cls: Any, data_dir: Path, archive: Path) -> None:
    """Fetch torchvision's URL into a temporary file, check torchvision's MD5, then rename it to the
    archive's name: a failed, partial or bad download never lands under that name.

    Not torchvision's ``download_url``: its progress bar reads ``response.length``, which file://
    responses (a mirror on a shared disk, the tests) do not have, and it has no timeout."""
    from torchvision.datasets import utils

    print(f"downloading {cls.url} into {data_dir}", flush=True)
    part = data_dir / f".{cls.filename}.{os.getpid()}.part"
    try:
        request = urllib.request.Request(cls.url, headers={"User-Agent": utils.USER_AGENT})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: not a URL
        part.unlink(missing_ok=True)
        raise UsageError(
            f"could not download {cls.url} ({_one_line(error)}); download it where there is internet and place the "
            f"archive at {archive}, or run `{fetch_command(name, data_dir)}` there"
        ) from None
    if not utils.check_integrity(part, cls.tgz_md5):
        part.unlink()
        raise UsageError(
            f"{archive.name} downloaded from {cls.url} fails its MD5 check (expected {cls.tgz_md5}); nothing was "
            f"kept or extracted; try again, or place a good copy of the archive at {archive}"
        )
    os.replace(part, archive)  # replaces a bad archive placed by hand


def _extract(name: str, cls: Any, data_dir: Path, archive: Path, folder: Path) -> None:
    """Extract into a hidden staging folder, check every file, then rename the folder into place."""
    from torchvision.datasets import utils

    staging = Path(tempfile.mkdtemp(prefix=f".{name}-extracting-", dir=data_dir))
    try:
        try:
            utils.extract_archive(str(archive), str(staging))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise UsageError(
                f"could not extract {archive} into {data_dir} ({_one_line(error)}); delete {archive} and download "
                f"again: {fetch_command(name, data_dir)}"
            ) from None
        extracted = staging / cls.base_folder
        _verify(
            extracted,
            cls,
            lambda bad: (
                f"{archive} passes its MD5 check but its {cls.base_folder}/{bad} is "
                f"missing or differs from torchvision's MD5; nothing was extracted; delete {archive} and download again"
            ),
        )
        os.rename(extracted, folder)  # atomic: the folder appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_cifar(
    name: str, data_dir: Path, download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of both splits, read by torchvision."""
    prepare_cifar(name, data_dir, download)
    cls = cifar_class(name)
    folder = data_dir / cls.base_folder
    with data_lock(data_dir, name, shared=True):  # never while another process extracts
        try:
            splits = [cls(root=data_dir, train=train, download=False) for train in (True, False)]
        except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            with contextlib.suppress(OSError):
                (folder / VERIFIED_MARKER).unlink()  # verify again next time
            raise UsageError(
                f"{folder} cannot be read by torchvision ({_one_line(error)}); move it away and download again: "
                f"{fetch_command(name, data_dir)}"
            ) from None
    arrays = []
    for split in splits:
        arrays.append(np.asarray(split.data, dtype=np.uint8).transpose(0, 3, 1, 2))  # NHWC -> NCHW
        arrays.append(np.asarray(split.targets, dtype=np.int64))
    return tuple(arrays)  # type: ignore[return-value]


def cifar(name: str, data_dir: Path, device: torch.device | str, download: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 on ``device`` (through ``prepare_cifar``: locked, downloaded once)."""
    mean, std = map(torch.tensor, CIFAR_MEAN_STD[name])
    return on_device(load_cifar(name, data_dir, download), mean, std, CIFAR_NUM_CLASSES[name], device)
