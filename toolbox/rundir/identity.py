"""Which flags make a run the experiment it is, and how its folder is named by default.

A folder holds one experiment. Its default name spells out every flag that defines the experiment
and differs from its default (``.../tucker/B-32-8-8/lr=0.01/seed0``), and a finished or resumed
run is checked against the flags it was trained with. Kept apart from ``toolbox.rundir`` (one run
folder: its files, lock and state), which re-exports what the tools import from it; how a value
is written in a name, and which names are acceptable, is ``toolbox.config.naming``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from toolbox.config import (
    RUNTIME_FIELDS,
    TEACHER_TRAINING,
    Config,
    flag_default,
    recipe_defaults,
    run_recipe,
    teacher_recipe,
)
from toolbox.config.choices import format_ranks, parse_ranks
from toolbox.config.naming import format_value, validate_experiment_name

if TYPE_CHECKING:
    from toolbox.distillation import Distiller

TEACHER_SEED = 0
"""The seed of the plain run that trains a teacher by default (``teacher_config``)."""


def distillers() -> dict[str, type[Distiller]]:
    """The registry of methods, loaded (with torch) on first use: the folder, its lock and its files
    are handled before torch loads, so that a starting run holds its lock at once."""
    from toolbox.methods import DISTILLERS

    return DISTILLERS


NAME_FIELDS = ("distillation", "dataset", "teacher", "student", "seed")
"""Flags that the structure of every default run name spells out."""


def method_specific() -> frozenset[str]:
    """Flags that only some methods read (ranks, beta, the KD temperature, ...), as registered now."""
    return frozenset(flag for distiller in distillers().values() for flag in distiller.flags)


ABSENT = "<absent>"
"""A flag that a saved config.json does not have (written before the flag existed) and whose value
is the method's, so that its absence cannot tell which."""


def saved_value(config: Mapping[str, Any], name: str) -> Any:
    """Flag ``name`` of a saved or current config. A config.json written before the flag existed
    lacks it: its run computed what the flag's default computes (a new flag never changes what a run
    computed before it: a variant is an option, not a default), so the default stands in, and such
    runs resume and are skipped as finished as before. A flag whose default the method decides has
    no such stand-in."""
    if name in config:
        return config[name]
    default = flag_default(name)
    return ABSENT if default is None and name in method_defaulted() else default


TEACHER_OVERRIDES = {"epochs": "teacher_epochs", "batch_size": "teacher_batch_size", "lr": "teacher_lr"}
"""The teacher recipe's flags that a student's run may set for its default teacher's run."""
TEACHER_FLAGS = ("teacher", "kd_weight", "optimizer", *TEACHER_OVERRIDES.values())
"""Flags that only a method with a teacher reads (--kd_weight's KD term and DOT split a teacher's loss; the
default teacher's training)."""
SWITCHED_FLAGS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "kd_temperature": lambda config: float(config.get("kd_weight") or 0) != 0,  # the temperature of --kd_weight's KD
    "dot_delta": lambda config: config.get("optimizer") == "dot",
}
"""Flags read by a run that another of its flags switches on (besides the methods that read them always);
the values may be a grid's text (``"0"``)."""


def defining_flags(distillation: str, config: Optional[Mapping[str, Any]] = None) -> list[str]:
    """The flags that make a run of ``distillation`` the experiment it is, in ``Config`` order:
    all but the speed and location flags, less the flags only other methods read (and less the
    ``TEACHER_FLAGS`` for a method without a teacher), with the ``SWITCHED_FLAGS`` that ``config``'s
    values switch on. An unknown method keeps them all: split, never mixed."""
    distiller = distillers().get(distillation)
    specific = method_specific()
    own = set(distiller.flags) if distiller else specific | set(SWITCHED_FLAGS)
    own |= {name for name, switched_on in SWITCHED_FLAGS.items() if config is not None and switched_on(config)}
    return [
        item.name
        for item in dataclasses.fields(Config)
        if item.name not in RUNTIME_FIELDS | {"experiment_name"}
        and (item.name in own or (item.name not in specific and item.name not in SWITCHED_FLAGS))
        and not (item.name in TEACHER_FLAGS and distiller is not None and not distiller.needs_teacher)
    ]


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The defining flags of a saved or current config and their values."""
    return {name: saved_value(config, name) for name in defining_flags(config["distillation"], config)}


def method_defaulted() -> frozenset[str]:
    """Flags whose default depends on the method (``beta``, ``ce_weight``, ...): a teacher's run
    never inherits them from a student's."""
    return frozenset(name for distiller in distillers().values() for name in distiller.defaults)


def method_default(distiller: type[Distiller], name: str, config: Optional[Config] = None) -> Any:
    """A flag's default for a run: its recipe's for the method (``--recipe crd`` sets 240 epochs,
    ``--recipe imagenet`` kd's temperature 1), else the method's own (``beta``), else the flag's."""
    recipe = run_recipe(config) if config is not None else {}
    if name in recipe:
        return recipe[name]
    own = distiller.defaults_for(config) if config is not None else distiller.defaults
    if name in own:
        return own[name]
    return flag_default(name)


def changed_flags(config: Config) -> dict[str, Any]:
    """The defining flags that differ from their defaults, apart from those the name's structure
    and the method's tag already spell out."""
    distiller = distillers()[config.distillation]
    changed = {}
    for name in defining_flags(config.distillation, dataclasses.asdict(config)):
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
    distiller = distillers()[config.distillation]
    if distiller.needs_teacher:
        head = [config.dataset, f"{config.teacher}-{config.student}", config.distillation]
    else:
        head = [config.dataset, "teacher", config.student]
    changes = ",".join(f"{name}={format_value(value)}" for name, value in changed_flags(config).items())
    parts = [*head, *distiller.run_tag(config), *([changes] if changes else []), f"seed{config.seed}"]
    return validate_experiment_name("/".join(parts), "the run name derived from the flags")


def teacher_training(config: Config) -> dict[str, Any]:
    """The training flags of the run that trains the teacher of ``config`` by default: the teacher
    recipe's (``teacher_recipe``), with --teacher_epochs, --teacher_batch_size and --teacher_lr on top,
    never the student's own: a sweep of short students still distils from a fully trained teacher."""
    values = {name: flag_default(name) for name in TEACHER_TRAINING}
    values.update(teacher_recipe(config.recipe, config.dataset, config.teacher))
    for name, override in TEACHER_OVERRIDES.items():
        if getattr(config, override) is not None:
            values[name] = getattr(config, override)
    return values


def teacher_config(config: Config) -> Config:
    """The plain run that trains the teacher of ``config`` by default: ``teacher_training``'s flags,
    the student's others (data set, --max_batches, ...) less those of its method (and less what the
    recipe sets for the method: the ImageNet recipe's KD temperature), seed 0."""
    plain = recipe_defaults(config.recipe, config.teacher)
    return dataclasses.replace(
        config,
        **{
            **dict.fromkeys(method_defaulted()),
            **dict.fromkeys(set(TEACHER_FLAGS) - {"teacher"}),
            **{name: plain.get(name, flag_default(name)) for name in run_recipe(config)},
            **teacher_training(config),
        },
        distillation="none",
        student=config.teacher,
        seed=TEACHER_SEED,
        experiment_name=None,
        teacher_checkpoint=None,
    )


def default_teacher_checkpoint(config: Config) -> Path:
    """Where the teacher's plain run (``teacher_config``) saves its best weights."""
    teacher = teacher_config(config)
    return Path(config.experiments_dir) / experiment_name(teacher) / f"{teacher.student}.pth"


def teacher_command(config: Config) -> str:
    """The command that trains the teacher ``config`` needs, where it is found by default."""
    teacher = teacher_config(config)
    args = [
        "python",
        "tucker_distillation.py",
        "--distillation",
        "none",
        "--dataset",
        teacher.dataset,
        "--student",
        teacher.student,
        "--seed",
        str(TEACHER_SEED),
    ]
    for name, value in changed_flags(teacher).items():
        args += [f"--{name}" if value is not False else f"--no-{name}"] + (
            [] if isinstance(value, bool) else [str(value)]
        )
    for name in ("data_dir", "experiments_dir"):
        if getattr(config, name) != getattr(Config, name):  # the class attribute is the default
            args += [f"--{name}", getattr(config, name)]
    return shlex.join(args)


def resolve(config: Config) -> Config:
    """Fill in what depends on other flags (the run's name, the method's defaults, the teacher's
    path), so that config.json says what ran and two spellings of one run compare equal."""
    distiller = distillers()[config.distillation]
    config = dataclasses.replace(
        config,
        experiment_name=config.experiment_name or experiment_name(config),
        ranks=format_ranks(parse_ranks(config.ranks)),
    )  # one spelling: ' 8' and '８' are 8
    teacher_checkpoint = config.teacher_checkpoint
    if teacher_checkpoint is None and distiller.needs_teacher:
        teacher_checkpoint = str(default_teacher_checkpoint(config))
    from toolbox.distillation import with_defaults

    config = with_defaults(
        dataclasses.replace(config, teacher_checkpoint=teacher_checkpoint if distiller.needs_teacher else None)
    )
    distiller.check(config)
    return config


def differences(saved: Mapping[str, Any], config: Config) -> list[str]:
    """``--lr 0.05 there, 0.01 here`` for each defining flag in which two runs differ (a flag that
    defines one run only, switched on by another, compared as it is saved in the other)."""
    current = dataclasses.asdict(config)
    ours, theirs = identity(current), identity(saved)
    ours.update({name: saved_value(current, name) for name in theirs.keys() - ours.keys()})
    theirs.update({name: saved_value(saved, name) for name in ours.keys() - theirs.keys()})
    return [f"--{name} {theirs[name]!r} there, {ours[name]!r} here" for name in ours if theirs[name] != ours[name]]


def file_digest(path: Path) -> str:
    """SHA-256 of a file: a teacher checkpoint is recognised by its content, not its path."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
