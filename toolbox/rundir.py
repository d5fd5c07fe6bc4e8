"""The run folder: the contract between training, the runner, util.sh and the notebooks.

``experiments/<name>/`` holds ``config.json`` (written at the start), ``last.pt`` (resumable state
after every epoch), ``<Arch>.pth`` (best epoch, ``{"weights": state_dict}``), ``Loss.png`` and
``Accuracy.png``, and, only once the run has finished, ``metrics.json``. So "metrics.json exists"
means "finished", and every tool reads that one fact instead of each other's code.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from toolbox.errors import UsageError
from toolbox.tucker import parse_ranks

if TYPE_CHECKING:
    from toolbox.config import Config

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"
TEACHER_SEED = 0
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,-]*")


def validate_experiment_name(name: str, flag: str = "--experiment_name") -> str:
    """Refuse names that would leave the experiments folder or need quoting in a shell."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(not _NAME_PART.fullmatch(part) for part in parts):
        raise UsageError(
            f"{flag} must be a relative path of parts made of letters, digits and ._=+,- "
            f"(no '..', no leading '/', no spaces); got {name!r}"
        )
    return name


def ranks_tag(ranks: str) -> str:
    """``BATCH_SIZE,32,8,8`` -> ``B-32-8-8`` for folder names."""
    return "-".join("B" if r is None else str(r) for r in parse_ranks(ranks))


def method_tag(config: Config) -> str:
    """The part of the default run name that says which method and setting was used."""
    if config.distillation == "tucker":
        return f"tucker/{ranks_tag(config.ranks)}"
    if config.distillation == "tucker_recomp":
        return f"tucker_recomp/{config.recomp_target}/{ranks_tag(config.ranks)}"
    if config.distillation == "noise":
        return f"noise/std{config.noise_std:g}"
    return config.distillation


def experiment_name(config: Config) -> str:
    """Default run name: ``{dataset}/teacher/{arch}/seed{seed}`` for plain training, else
    ``{dataset}/{teacher}-{student}/{method}/seed{seed}``."""
    if config.distillation == "none":
        return f"{config.dataset}/teacher/{config.student}/seed{config.seed}"
    return f"{config.dataset}/{config.teacher}-{config.student}/{method_tag(config)}/seed{config.seed}"


def default_teacher_checkpoint(experiments_dir: str | Path, dataset: str, teacher: str) -> Path:
    """Where plain training of ``teacher`` with the teacher seed saves its best weights."""
    return Path(experiments_dir) / dataset / "teacher" / teacher / f"seed{TEACHER_SEED}" / f"{teacher}.pth"


def teacher_command(config: Config) -> str:
    """The command that trains the teacher ``config`` needs, where it is found by default."""
    args = ["python", "tucker_distillation.py", "--distillation", "none", "--dataset", config.dataset,
            "--student", config.teacher, "--seed", str(TEACHER_SEED)]
    from toolbox.config import Config

    for name in ("data_dir", "experiments_dir"):
        if getattr(config, name) != getattr(Config, name):  # the class attribute is the default
            args += [f"--{name}", getattr(config, name)]
    return shlex.join(args)


class RunDir:
    """Paths and state of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.last = self.path / LAST_CHECKPOINT
        self.metrics = self.path / METRICS_FILE

    def best_checkpoint(self, arch: str) -> Path:
        return self.path / f"{arch}.pth"

    @property
    def finished(self) -> bool:
        return self.metrics.exists()

    def read_json(self, path: Path) -> Optional[dict[str, Any]]:
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"{path} is unreadable ({error}); move it away to start this run afresh") from None
