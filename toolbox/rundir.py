"""The run folder: the contract between training, the runner, util.sh and the notebooks.

``experiments/<name>/`` holds ``config.json`` (written at the start), ``last.pt`` (resumable state
after every epoch), ``<Arch>.pth`` (best epoch, ``{"weights": state_dict}``), ``Loss.png`` and
``Accuracy.png``, and, only once the run has finished, ``metrics.json``. So "metrics.json exists"
means "finished", and every tool asks this module, not each other's code.

A folder holds one experiment. Its default name spells out every flag that defines the experiment
and differs from its default (``.../tucker/B-32-8-8/lr=0.01/seed0``), and a finished or resumed
run is checked against the flags it was trained with. One process trains a folder at a time: it
holds an OS lock on ``.lock`` for the run's lifetime, which the kernel releases when the process
dies, however it dies.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from toolbox.config import RUNTIME_FIELDS, Config, recipe_defaults
from toolbox.distillation import Distiller
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS, with_defaults
from toolbox.naming import format_value, validate_experiment_name

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
JOB_FILE = "job.json"
SCRIPT_FILE = "run.job"
LOG_FILE = "train.log"
PLOTS = ("Loss.png", "Accuracy.png")
TEACHER_SEED = 0

NAME_FIELDS = ("distillation", "dataset", "teacher", "student", "seed")
"""Flags that the structure of every default run name spells out."""


def method_specific() -> frozenset[str]:
    """Flags that only some methods read (ranks, beta, the KD temperature, ...), as registered now."""
    return frozenset(flag for distiller in DISTILLERS.values() for flag in distiller.flags)

ABSENT = "<absent>"
"""A flag that a saved config.json does not have (written before the flag existed)."""

FINISHED, RUNNING, PENDING, FAILED, NOT_STARTED = "finished", "running", "pending", "failed", "not started"
CONFLICTING, CORRUPT = "conflicting", "corrupt"


# ---------------------------------------------------------------- which flags make a run

def defining_flags(distillation: str) -> list[str]:
    """The flags that make a run of ``distillation`` the experiment it is, in ``Config`` order:
    all but the speed and location flags, less the flags only other methods read (and less the
    teacher for a method without one). An unknown method keeps them all: split, never mixed."""
    distiller = DISTILLERS.get(distillation)
    specific = method_specific()
    own = set(distiller.flags) if distiller else specific
    return [
        item.name for item in dataclasses.fields(Config)
        if item.name not in RUNTIME_FIELDS | {"experiment_name"}
        and (item.name not in specific or item.name in own)
        and not (item.name == "teacher" and distiller is not None and not distiller.needs_teacher)
    ]


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The defining flags of a saved or current config and their values."""
    return {name: config.get(name, ABSENT) for name in defining_flags(config["distillation"])}


def method_defaulted() -> frozenset[str]:
    """Flags whose default depends on the method (``beta``, ``ce_weight``, ...): a teacher's run
    never inherits them from a student's."""
    return frozenset(name for distiller in DISTILLERS.values() for name in distiller.defaults)


def method_default(distiller: type[Distiller], name: str, config: Optional[Config] = None) -> Any:
    """A flag's default for a run: the method's own (``beta``), else its recipe's (``--recipe crd``
    sets 240 epochs), else the flag's."""
    own = distiller.defaults_for(config) if config is not None else distiller.defaults
    if name in own:
        return own[name]
    recipe = recipe_defaults(config.recipe, config.student) if config is not None else {}
    if name in recipe:
        return recipe[name]
    return next(item.default for item in dataclasses.fields(Config) if item.name == name)


def changed_flags(config: Config) -> dict[str, Any]:
    """The defining flags that differ from their defaults, apart from those the name's structure
    and the method's tag already spell out."""
    distiller = DISTILLERS[config.distillation]
    changed = {}
    for name in defining_flags(config.distillation):
        value = getattr(config, name)
        if name in NAME_FIELDS or name in distiller.tag_flags or value is None:  # None: the method's default
            continue
        if value != method_default(distiller, name, config):
            changed[name] = value
    return changed


def experiment_name(config: Config) -> str:
    """Default run name: ``{dataset}/teacher/{arch}[/{changes}]/seed{seed}`` for training without a
    teacher, else ``{dataset}/{teacher}-{student}/{method}/{tag...}[/{changes}]/seed{seed}``, where
    ``{changes}`` lists the other defining flags that differ from their defaults: ``lr=0.01,beta=50``."""
    distiller = DISTILLERS[config.distillation]
    if distiller.needs_teacher:
        head = [config.dataset, f"{config.teacher}-{config.student}", config.distillation]
    else:
        head = [config.dataset, "teacher", config.student]
    changes = ",".join(f"{name}={format_value(value)}" for name, value in changed_flags(config).items())
    parts = [*head, *distiller.run_tag(config), *([changes] if changes else []), f"seed{config.seed}"]
    return validate_experiment_name("/".join(parts), "the run name derived from the flags")


def teacher_config(config: Config) -> Config:
    """The plain run that trains the teacher of ``config`` by default: the same recipe and flags,
    seed 0; a flag the recipe sets per architecture (the CRD recipe's lr) takes the teacher's value
    unless the student's was given explicitly."""
    own, theirs = recipe_defaults(config.recipe, config.student), recipe_defaults(config.recipe, config.teacher)
    per_arch = {name: theirs[name] for name in own if getattr(config, name) == own[name]}
    return dataclasses.replace(config, **per_arch, **dict.fromkeys(method_defaulted()), distillation="none",
                               student=config.teacher, seed=TEACHER_SEED, experiment_name=None, teacher_checkpoint=None)


def default_teacher_checkpoint(config: Config) -> Path:
    """Where the teacher's plain run (``teacher_config``) saves its best weights."""
    teacher = teacher_config(config)
    return Path(config.experiments_dir) / experiment_name(teacher) / f"{teacher.student}.pth"


def teacher_command(config: Config) -> str:
    """The command that trains the teacher ``config`` needs, where it is found by default."""
    teacher = teacher_config(config)
    args = ["python", "tucker_distillation.py", "--distillation", "none", "--dataset", teacher.dataset,
            "--student", teacher.student, "--seed", str(TEACHER_SEED)]
    for name, value in changed_flags(teacher).items():
        args += [f"--{name}" if value is not False else f"--no-{name}"] + ([] if isinstance(value, bool) else [str(value)])
    for name in ("data_dir", "experiments_dir"):
        if getattr(config, name) != getattr(Config, name):  # the class attribute is the default
            args += [f"--{name}", getattr(config, name)]
    return shlex.join(args)


def resolve(config: Config) -> Config:
    """Fill in what depends on other flags (the run's name, the method's defaults, the teacher's
    path), so that config.json says what ran and two spellings of one run compare equal."""
    distiller = DISTILLERS[config.distillation]
    config = dataclasses.replace(config, experiment_name=config.experiment_name or experiment_name(config))
    teacher_checkpoint = config.teacher_checkpoint
    if teacher_checkpoint is None and distiller.needs_teacher:
        teacher_checkpoint = str(default_teacher_checkpoint(config))
    config = with_defaults(dataclasses.replace(config, teacher_checkpoint=teacher_checkpoint if distiller.needs_teacher else None))
    distiller.check(config)
    return config


def differences(saved: Mapping[str, Any], config: Config) -> list[str]:
    """``--lr 0.05 there, 0.01 here`` for each defining flag in which two runs differ."""
    current = dataclasses.asdict(config)
    ours, theirs = identity(current), identity(saved)
    return [f"--{name} {theirs.get(name, ABSENT)!r} there, {ours.get(name, ABSENT)!r} here"
            for name in dict.fromkeys([*theirs, *ours]) if theirs.get(name, ABSENT) != ours.get(name, ABSENT)]


def file_digest(path: Path) -> str:
    """SHA-256 of a file: a teacher checkpoint is recognised by its content, not its path."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- one run folder

@dataclass
class RunState:
    """What a run folder holds now, as the runner, ``util.sh status`` and ``clean`` see it."""

    state: str
    job_id: Optional[str] = None
    detail: str = ""


class RunDir:
    """Paths, lock and state of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.last = self.path / LAST_CHECKPOINT
        self.metrics = self.path / METRICS_FILE
        self.lock_file = self.path / LOCK_FILE
        self.job = self.path / JOB_FILE
        self.script = self.path / SCRIPT_FILE
        self.log = self.path / LOG_FILE

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
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{path} is unreadable ({error}); it was left as it is: restore it, or move the run "
                             f"folder {self.path} away and start the run afresh") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path} does not hold a JSON object; it was left as it is: restore it, or move the run "
                             f"folder {self.path} away and start the run afresh")
        return data

    def saved_config(self) -> Optional[dict[str, Any]]:
        """The flags config.json says the run was started with (None without config.json)."""
        saved = self.read_json(self.config)
        if saved is not None and not isinstance(saved.get("config"), dict):
            raise UsageError(f"{self.config} is not a config.json of this project (no 'config' entry); it was left as it is")
        return None if saved is None else saved["config"]

    def read_job(self) -> Optional[dict[str, Any]]:
        """What runner.py recorded about the run's last submission, if anything readable."""
        try:
            job = json.loads(self.job.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return job if isinstance(job, dict) else None

    # -- one process per run folder

    def create(self) -> None:
        """Make the folder, or say in one line why it cannot be made."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"cannot create the run folder {self.path}: a file stands in its way "
                             f"(check --experiments_dir and --experiment_name)") from None
        except OSError as error:
            raise UsageError(f"cannot create the run folder {self.path}: {error.strerror} "
                             f"(check --experiments_dir and its permissions)") from None

    @contextmanager
    def locked(self, wait_s: float = 2.0) -> Iterator[None]:
        """Hold the run's lock for the block, or fail in one line naming the process that holds it.
        The kernel releases it when this process ends, so a killed run never leaves a stale lock."""
        try:
            handle = open(self.lock_file, "a+")
        except OSError as error:
            raise UsageError(f"cannot write in the run folder {self.path}: {error.strerror}; "
                             "check its permissions and the free space") from None
        with handle:
            deadline = time.monotonic() + wait_s  # a status probe holds it for an instant
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise UsageError(f"{self.path} is being trained by {holder}; wait for it to finish "
                                         "or stop that process, then rerun") from None
                    time.sleep(0.1)
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            yield

    def holder(self) -> Optional[str]:
        """Who holds the run's lock (``process 123 on node7``), or None when nobody trains it."""
        try:
            handle = open(self.lock_file)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            return None

    def remove_stale_temporaries(self) -> None:
        """Temporary files left by a killed write of the training's own files. Only the lock
        holder writes those, so while it holds the lock every such temporary is stale."""
        pattern = re.compile(r"\.(config\.json|last\.pt|metrics\.json|Loss\.png|Accuracy\.png|[A-Za-z0-9_]+\.pth)\.\d+\.tmp")
        for path in self.path.iterdir():
            if pattern.fullmatch(path.name):
                path.unlink(missing_ok=True)

    # -- state, as the runner and util.sh see it

    def state(self, live: Mapping[str, str], scheduler: str, expected: Optional[Config] = None) -> RunState:
        """finished, running (the lock is held, or its job runs), pending (its job waits),
        conflicting (it holds other flags than ``expected``), corrupt (metrics.json unreadable),
        failed (started or submitted, but nothing alive) or not started."""
        job = self.read_job()
        job_id = job.get("job_id") if job and job.get("scheduler") == scheduler else None
        try:
            saved = self.saved_config()
            if self.finished:
                metrics = self.read_json(self.metrics)
                if not isinstance(metrics.get("best_test_acc"), (int, float)):
                    return RunState(CORRUPT, job_id, f"{self.metrics} has no best_test_acc")
        except UsageError as error:
            return RunState(CORRUPT, job_id, str(error))
        changed = differences(saved, expected) if saved is not None and expected is not None else []
        if changed:
            return RunState(CONFLICTING, job_id, "; ".join(changed))
        if self.finished:
            return RunState(FINISHED, job_id, f"{metrics['best_test_acc']:.2f}")
        holder = self.holder()
        if holder:
            return RunState(RUNNING, job_id, holder)
        if job_id in live:  # the scheduler's RUNNING or PENDING
            return RunState(live[job_id].lower(), job_id)
        started = job or saved is not None or self.last.exists()
        return RunState(FAILED if started else NOT_STARTED, job_id)

    # -- clean

    def is_ours(self, experiments_dir: Path) -> bool:
        """Provably a run folder of this project: strictly inside ``experiments_dir``, and its
        config.json or job.json names this very folder as the run it belongs to."""
        try:
            name = self.path.resolve().relative_to(experiments_dir.resolve()).as_posix()
        except ValueError:
            return False
        if name == ".":
            return False
        try:
            saved = self.saved_config()
        except UsageError:
            saved = None
        job = self.read_job() or {}
        return (saved is not None and saved.get("experiment_name") == name) or job.get("run") == name

    def own_files(self) -> list[Path]:
        """The files this project writes in a run folder (never metrics.json: a finished run is
        never cleaned), so that clean deletes nothing else."""
        saved = {}
        try:
            saved = self.saved_config() or {}
        except UsageError:
            pass
        names = {CONFIG_FILE, LAST_CHECKPOINT, LOCK_FILE, JOB_FILE, SCRIPT_FILE, LOG_FILE, "local.out", *PLOTS}
        if isinstance(saved.get("student"), str):
            names.add(f"{saved['student']}.pth")
        logs = re.compile(r"slurm-\d+\.out|td\.[A-Za-z0-9_.-]+\.[oe]\d+(\.\S+)?|\..+\.\d+\.tmp")
        return sorted(path for path in self.path.iterdir()
                      if path.is_file() and not path.is_symlink() and (path.name in names or logs.fullmatch(path.name)))
