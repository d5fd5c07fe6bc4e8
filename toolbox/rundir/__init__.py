"""The run folder: the contract between training, the runner, util.sh and the notebooks.

``experiments/<name>/`` holds ``config.json`` (written at the start), ``last.pt`` (resumable state
after every epoch), ``<Arch>.pth`` (best epoch, ``{"weights": state_dict}``), ``Loss.png`` and
``Accuracy.png``, TensorBoard event files (and ``steps/`` for per-step curves), and, only once the
run has finished, ``metrics.json``. So "metrics.json exists"
means "finished", and every tool asks this module, not each other's code.

A folder holds one experiment, named and checked by the flags that define it (``toolbox.rundir.identity``,
whose names this module re-exports, so that the tools ask one module). One process trains a folder
at a time: it holds an OS lock on ``.lock`` for the run's lifetime, which the kernel releases when
the process dies, however it dies.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from toolbox.config import Config
from toolbox.errors import IOFailure, NotRegular, UsageError, file_kind
from toolbox.rundir.identity import (  # noqa: F401  (re-exported: the tools import a run's name and flags from here)
    ABSENT,
    SWITCHED_FLAGS,
    TEACHER_FLAGS,
    TEACHER_SEED,
    default_teacher_checkpoint,
    defining_flags,
    differences,
    experiment_name,
    file_digest,
    identity,
    method_default,
    method_defaulted,
    method_specific,
    resolve,
    teacher_command,
    teacher_config,
    teacher_training,
)

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
JOB_FILE = "job.json"
SCRIPT_FILE = "run.job"
PACKED_LOG = "job.out"
"""The output of a run trained beside others in one job (runner.py --runs_per_gpu)."""
LOG_FILE = "train.log"
PLOTS = ("Loss.png", "Accuracy.png")
LAUNCH_FILES = re.compile(
    r"slurm-\d+\.out|td\.[A-Za-z0-9_.-]+\.[oe]\d+(\.\S+)?|local\.out|job\.out|run\.job|job\.json|\.(run\.job|job\.json)\.\d+\.tmp"
)
"""What runner.py puts in a run folder before its training starts: the job script, its record (and the
temporary files of their atomic writes, which a job that starts at once may see), its logs."""
EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.\S+\.\d+\.\d+")
"""A TensorBoard event file as training writes them (``toolbox.training.curves``):
events.out.tfevents.<second>.<host>.<pid>.<n>."""
STEPS_FOLDER = "steps"
"""The sub-folder of a run's per-step curves (--tensorboard_every), which TensorBoard shows as a run of its own."""
TRAINING_TEMPORARY = re.compile(
    r"\.(config\.json|last\.pt|metrics\.json|Loss\.png|Accuracy\.png|[A-Za-z0-9_]+\.pth)\.\d+\.tmp"
)
"""The temporary file of an atomic write of training's own files (``toolbox.utils.atomic_write``): one
that a killed write left is removed when the run resumes."""
_HELD: set[str] = set()
"""The run folders whose lock this process holds (real paths)."""


WRITE_FAILURES = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
"""Errors of a write that the user fixes on the disk, not in the flags (exit status 74)."""


def open_nofollow(path: Path, flags: int) -> int:
    """``os.open`` that refuses a symbolic link (a lock or state file that is a link would have the
    project write to whatever file it points to) and anything but a regular file: opening a FIFO
    would wait for its other end forever (also deaf to SIGTERM during start-up)."""
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.EISDIR):  # ENXIO: a FIFO opened for writing without a reader
            raise NotRegular(path, "a FIFO" if error.errno == errno.ENXIO else "a folder") from None
        if error.errno != errno.ELOOP:
            raise
        raise UsageError(
            f"{path} is a symbolic link, and the project never writes through one; it was left as it is: "
            "remove the link, then rerun"
        ) from None
    kind = file_kind(os.fstat(descriptor).st_mode)
    if kind is not None:
        os.close(descriptor)
        raise NotRegular(path, kind)
    os.set_blocking(descriptor, True)
    return descriptor


def read_regular_text(path: Path) -> str:
    """The text of ``path`` (a symbolic link followed), read only if it is a regular file (else
    ``NotRegular``): reading a FIFO would block forever."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    kind = file_kind(os.fstat(descriptor).st_mode)
    if kind is not None:
        os.close(descriptor)
        raise NotRegular(path, kind)
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read().decode()


class RunDir:
    """Paths, lock and safe reads of one run folder (a sweep's view of its state: ``toolbox.sweep.folders``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.last = self.path / LAST_CHECKPOINT
        self.metrics = self.path / METRICS_FILE
        self.lock_file = self.path / LOCK_FILE
        self.job = self.path / JOB_FILE
        self.script = self.path / SCRIPT_FILE
        self.log = self.path / LOG_FILE
        self.steps = self.path / STEPS_FOLDER

    def best_checkpoint(self, arch: str) -> Path:
        return self.path / f"{arch}.pth"

    @property
    def finished(self) -> bool:
        return self.metrics.exists()

    def read_json(self, path: Path) -> Optional[dict[str, Any]]:
        """A JSON file of the run, None when absent; unreadable is a one-line error that keeps it."""
        if not path.exists():
            return None
        try:
            data = json.loads(read_regular_text(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(
                f"{path} is unreadable ({error}); it was left as it is: restore it, or move the run "
                f"folder {self.path} away and start the run afresh"
            ) from None
        if not isinstance(data, dict):
            raise UsageError(
                f"{path} does not hold a JSON object; it was left as it is: restore it, or move the run "
                f"folder {self.path} away and start the run afresh"
            )
        return data

    def saved_config(self) -> Optional[dict[str, Any]]:
        """The flags config.json says the run was started with (None without config.json); one that
        lacks what every reader needs (the method, the run's name) is a one-line error that keeps it."""
        saved = self.read_json(self.config)
        if saved is None:
            return None
        config = saved.get("config")
        if not isinstance(config, dict):
            raise UsageError(
                f"{self.config} is not a config.json of this project (no 'config' entry); it was left as "
                f"it is: {self.path} is not a run of this project, choose another --experiment_name"
            )
        for name in ("distillation", "experiment_name"):
            if not isinstance(config.get(name), str):
                raise UsageError(
                    f"{self.config} is damaged ('config' has no text '{name}'); it was left as it is: "
                    f"restore it, or move the run folder {self.path} away and start the run afresh"
                )
        return config

    def read_job(self) -> Optional[dict[str, Any]]:
        """What runner.py recorded about the run's last submission (None without job.json); a damaged
        one is a one-line error that keeps it."""
        job = self.read_json(self.job)
        bad = [
            name for name in ("run", "job_id", "scheduler") if job is not None and not isinstance(job.get(name), str)
        ]
        if bad:
            raise UsageError(
                f"{self.job} is damaged ('{bad[0]}' is not a text); it was left as it is: restore it, or move it away"
            )
        return job

    # -- one process per run folder

    def create(self) -> Optional[Path]:
        """Make the folder, or say in one line why it cannot be made; the topmost folder this call
        created (None when the folder was there)."""
        top = next((folder for folder in (self.path, *self.path.parents) if folder.parent.exists()), self.path)
        top = None if top.exists() else top
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(
                f"cannot create the run folder {self.path}: a file stands in its way "
                f"(check --experiments_dir and --experiment_name)"
            ) from None
        except OSError as error:
            if error.errno in WRITE_FAILURES:  # the folder is right, the disk refuses: exit status 74
                raise IOFailure(
                    f"cannot create the run folder {self.path}: {error.strerror}; make --experiments_dir "
                    "writable (or free space), then rerun"
                ) from None
            raise UsageError(
                f"cannot create the run folder {self.path}: {error.strerror} "
                f"(check --experiments_dir and its permissions)"
            ) from None
        return top

    def check_ours(self, name: str) -> None:
        """Training writes in a folder only if it is empty (but for a ``.lock``, runner.py's job
        files and the temporary files of training's own killed writes) or its own files say that it
        is run ``name``: a folder of something else (a downloaded model with its own config.json) is
        never overwritten. A last.pt is checked when read."""
        saved = self.saved_config()
        if saved is not None:
            if saved["experiment_name"] != name:
                raise UsageError(
                    f"{self.config} belongs to the run {saved['experiment_name']!r}, not {name!r}; it was "
                    "left as it is: move the folder back, or choose another --experiment_name"
                )
            return
        job = self.read_job()
        if (job is not None and job["run"] == name) or self.last.exists():
            return
        foreign = sorted(
            entry.name
            for entry in self.path.iterdir()
            if entry.name != LOCK_FILE
            and not LAUNCH_FILES.fullmatch(entry.name)
            and not TRAINING_TEMPORARY.fullmatch(entry.name)
        )  # the first config.json's write, killed
        if foreign:
            raise UsageError(
                f"{self.path} is not a run folder of this project (it holds {', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}); it was left as it is: choose another "
                "--experiment_name, or move those files away"
            )

    @contextmanager
    def claimed(self, name: str) -> Iterator[None]:
        """Create the folder, check that it may hold run ``name`` and lock it for the block. A start-up
        that fails before writing its config.json leaves nothing behind: the lock file it made, and the
        folders it created if they are empty then."""
        created = self.create()
        self.check_ours(name)
        with self.locked() as fresh:
            written = self.config_version()
            try:
                yield
            except BaseException:
                if fresh and self.config_version() == written:
                    self.lock_file.unlink()
                    for folder in (self.path, *self.path.parents) if created else ():
                        if any(folder.iterdir()):
                            break
                        folder.rmdir()
                        if folder == created:
                            break
                raise

    def config_version(self) -> Optional[tuple[int, int]]:
        """Which config.json the folder holds (None: none), to tell whether a start-up wrote one."""
        try:
            found = self.config.lstat()
        except FileNotFoundError:
            return None
        return found.st_ino, found.st_mtime_ns

    @contextmanager
    def locked(self, wait_s: float = 2.0) -> Iterator[bool]:
        """Hold the run's lock for the block, or fail in one line naming the process that holds it.
        The kernel releases it when this process ends, so a killed run never leaves a stale lock.
        Yields whether this call created the lock file; inside a block of this process that holds
        the lock already, it yields False at once."""
        key = os.path.realpath(self.path)
        if key in _HELD:
            yield False
            return
        fresh = not os.path.lexists(self.lock_file)
        writable = True
        try:
            descriptor = open_nofollow(self.lock_file, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise UsageError(
                    f"cannot write in the run folder {self.path}: {error.strerror}; "
                    "check its permissions and the free space"
                ) from None
            if not (self.finished and self.lock_file.is_file()):
                raise IOFailure(
                    f"the run folder {self.path} is read-only / permission denied ({error.strerror}); "
                    "make it writable, then rerun"
                ) from None
            # a finished run is only read, and flock works on a read-only file
            descriptor = open_nofollow(self.lock_file, os.O_RDONLY)
            writable = False
        with os.fdopen(descriptor, "r+" if writable else "r") as handle:
            deadline = time.monotonic() + wait_s  # a status probe holds it for an instant
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        holder = handle.read().strip() or "another process"
                        raise UsageError(
                            f"{self.path} is being trained by {holder}; wait for it to finish "
                            "or stop that process, then rerun"
                        ) from None
                    time.sleep(0.1)
            if writable:
                handle.truncate()
                handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()
            _HELD.add(key)
            try:
                yield fresh
            finally:
                _HELD.discard(key)

    def holder(self) -> Optional[str]:
        """Who holds the run's lock (``process 123 on node7``), or None when nobody trains it."""
        try:
            descriptor = open_nofollow(self.lock_file, os.O_RDONLY)
        except OSError:
            return None
        with os.fdopen(descriptor) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            return None

    def remove_stale_temporaries(self) -> None:
        """Temporary files left by a killed write of the training's own files. Only the lock
        holder writes those, so while it holds the lock every such temporary is stale. A folder of
        such a name is not one of them (writes make files), and is left as it is."""
        for path in self.path.iterdir():
            if TRAINING_TEMPORARY.fullmatch(path.name) and (path.is_symlink() or not path.is_dir()):
                path.unlink(missing_ok=True)
