"""A sweep's grid: axes of training flags crossed into runs, each named by the training script's rule.

A grid is a set of axes (``beta=50,125,250``) crossed with each other; each point is one run
folder, named as ``toolbox.rundir`` names it, with the teacher run it needs. Nothing here touches
the disk or a scheduler, so ``runner.py``, ``test_noise.py`` and ``toolbox.sweep.file`` can plan a
grid without submitting it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

from toolbox.config import RUNTIME_FIELDS, TEACHER_TRAINING, Config, flag_default, parse_config, teacher_recipe
from toolbox.config.choices import MODELS
from toolbox.config.naming import format_value, validate_experiment_name
from toolbox.distillation import with_defaults
from toolbox.errors import UsageError
from toolbox.methods import DISTILLERS
from toolbox.rundir import (
    TEACHER_SEED,
    RunDir,
    default_teacher_checkpoint,
    defining_flags,
    experiment_name,
    method_defaulted,
    resolve,
    teacher_training,
)
from toolbox.utils import markdown_table


@dataclass
class Run:
    """One training job: its folder, its flags, and what it needs first."""

    name: str  # relative to the experiments folder
    path: Path
    flags: list[str]  # for tucker_distillation.py, --experiment_name included
    config: Config  # resolved, as the training will save it
    teacher: Optional[Run] = None  # the run that trains the teacher this one needs
    teacher_checkpoint: Optional[Path] = None


def training_config(flags: list[str]) -> Config:
    """The training script's own parsing of ``flags``, so runner.py accepts exactly what it does."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_config(flags, prog="runner.py")
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines() or ["bad training flags"]
        raise UsageError(lines[-1].removeprefix("runner.py: error: ")) from None


def make_run(flags: list[str], experiments_dir: Path, study: str = "") -> Run:
    """A run named as the training script names it (under ``study``), refused if the name would
    leave the experiments folder."""
    config = training_config(flags)
    name = "/".join(filter(None, [study, experiment_name(config)]))
    validate_experiment_name(name)
    path = experiments_dir / name
    if not path.resolve().is_relative_to(experiments_dir.resolve()):
        raise UsageError(f"run folder {path} leaves --experiments_dir {experiments_dir} (a symbolic link?)")
    config = resolve(dataclasses.replace(config, experiment_name=name))
    return Run(name, path, [*flags, "--experiment_name", name], config)


Axes = dict[str, list[str]]
"""Grid axes: a training flag's name -> its values, spelled as on the command line; the axis
``pair`` sets ``teacher`` and ``student`` together (``resnet56-resnet20``)."""
PAIR = "pair"
SWITCHES = frozenset(item.name for item in dataclasses.fields(Config) if isinstance(item.default, bool))
"""The on/off flags, which a grid spells true and false."""


def axis_flags() -> set[str]:
    """What a grid axis may vary: a training flag that defines a run, or ``pair``."""
    return {item.name for item in dataclasses.fields(Config)} - RUNTIME_FIELDS - {"experiment_name"} | {PAIR}


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``beta=50,125,250`` -> ("beta", ["50", "125", "250"]). Values that contain commas (Tucker
    ranks) are separated by ``:`` instead: ``ranks=BATCH_SIZE,32,8,8:BATCH_SIZE,8,8,8``."""
    name, sep, values = text.partition("=")
    fields = axis_flags()
    if not sep or name not in fields:
        raise UsageError(
            f"--grid takes FLAG=VALUE,VALUE,... with FLAG a training flag that defines a run, or pair "
            f"(teacher-student, e.g. pair=resnet56-resnet20,vgg13-vgg8) ({', '.join(sorted(fields))}); got {text!r}"
        )
    parts = values.split(":" if ":" in values else ",")
    if not all(parts):
        raise UsageError(f"--grid {name}: empty value in {values!r}")
    if name == PAIR:
        for part in parts:
            split_pair(part)
    if name in SWITCHES and not set(parts) <= {"true", "false"}:
        raise UsageError(f"--grid {name}: an on/off flag takes true or false; got {values!r}")
    return name, list(dict.fromkeys(parts))


def split_pair(text: str) -> tuple[str, str]:
    """``resnet56-resnet20`` -> ("resnet56", "resnet20"), as run folders spell a pair."""
    teacher, sep, student = text.partition("-")
    if not sep or teacher not in MODELS or student not in MODELS:
        raise UsageError(
            f"--grid pair: each value is TEACHER-STUDENT with both among {', '.join(MODELS)}; got {text!r}"
        )
    return teacher, student


def grid_points(axes: Axes) -> Iterator[dict[str, str]]:
    """Every combination of the axes' values, the first axis slowest, each with only the flags its
    method reads (a featuremap run ignores ranks), and never the same run twice."""
    seen = set()
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        if PAIR in point:
            point["teacher"], point["student"] = split_pair(point.pop(PAIR))
        applies = set(defining_flags(point.get("distillation", Config.distillation), point)) | {"distillation"}
        point = {name: value for name, value in point.items() if name in applies}
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            yield point


def as_flags(point: dict[str, str]) -> list[str]:
    """A grid point as command-line flags: an on/off flag's ``true`` is ``--flag``, ``false`` ``--no-flag``."""
    return [
        token
        for name, value in point.items()
        for token in (
            [f"--{name}" if value == "true" else f"--no-{name}"] if name in SWITCHES else [f"--{name}", value]
        )
    ]


def refused(flags: list[str]) -> bool:
    """Whether the method of these training flags cannot train their pair (its ``check``: FSP on
    networks of other widths), which a benchmark's table marks N/A."""
    config = with_defaults(training_config(flags))
    try:
        DISTILLERS[config.distillation].check(config)
    except UsageError:
        return True
    return False


def build_grid(
    axes: Axes,
    common: list[str],
    experiments_dir: Path,
    study: str = "",
    teacher_files: Mapping[str, Path] | None = None,
    leave_out_refused: bool = False,
) -> list[Run]:
    """The student runs of the grid, in submission order, deduplicated by run name; each points to
    the teacher run it needs (the plain run of its teacher with seed 0, trained by the teacher recipe,
    shared by all the students that need it, and kept outside ``study``), or to the file that
    ``teacher_files`` gives for its teacher architecture. A point whose method cannot train its pair
    is refused, or with ``leave_out_refused`` (a benchmark's every method on every pair) left out."""
    common = [*common, "--experiments_dir", str(experiments_dir)]
    runs: dict[str, Run] = {}
    teacher_runs: dict[str, Run] = {}
    for point in grid_points(axes):
        try:
            run = make_run([*as_flags(point), *common], experiments_dir, study)
        except UsageError:
            if leave_out_refused and refused([*as_flags(point), *common]):
                continue
            raise
        needs_teacher = DISTILLERS[run.config.distillation].needs_teacher
        if needs_teacher and run.config.teacher in (teacher_files or {}):
            given = ["--teacher_checkpoint", str(teacher_files[run.config.teacher])]
            run = make_run([*as_flags(point), *common, *given], experiments_dir, study)
        if run.name in runs:
            continue
        if needs_teacher:
            # the teacher's run (teacher_config): the student's flags but its method's, then the teacher recipe's
            general = {
                name: value
                for name, value in point.items()
                if name in defining_flags("none") and name not in method_defaulted() and name not in TEACHER_TRAINING
            }
            general.update(distillation="none", student=run.config.teacher, seed=str(TEACHER_SEED))
            flags = [*as_flags(general), *common]
            inherited = training_config(flags)
            training = {  # the teacher recipe's values where the flags above would give others
                name: format_value(value)
                for name, value in teacher_training(run.config).items()
                if getattr(inherited, name) != value
            }
            teacher = make_run([*flags, *as_flags(training)], experiments_dir)
            attach_teacher(run, teacher_runs.setdefault(teacher.name, teacher))
        runs[run.name] = run
    return list(runs.values())


def grid_table(runs: list[Run], axes: Axes) -> str:
    """The grid as a table: one row per run, a column per axis on which its runs differ (a flag
    the run's method does not read shows as ``-``), then the run's folder."""
    columns = {name: [axis_value(run.config, name) for run in runs] for name, values in axes.items() if len(values) > 1}
    shown = [name for name, values in columns.items() if len(set(values)) > 1]
    rows = [[*(columns[name][index] for name in shown), run.name] for index, run in enumerate(runs)]
    return f"the grid: {len(runs)} runs\n" + markdown_table([*shown, "run"], rows)


def axis_value(config: Config, axis: str) -> str:
    """A run's value on a grid axis, ``-`` where its method does not read the flag."""
    own = set(defining_flags(config.distillation, dataclasses.asdict(config))) | {"distillation"}
    if axis == PAIR:
        return f"{config.teacher}-{config.student}" if "teacher" in own else config.student
    return format_value(getattr(config, axis)) if axis in own else "-"


def attach_teacher(run: Run, teacher: Run) -> None:
    """Point ``run`` at the weights it distils from: the teacher run's, or --teacher_checkpoint."""
    config = run.config
    run.teacher_checkpoint = Path(config.teacher_checkpoint)
    if run.teacher_checkpoint != default_teacher_checkpoint(config):  # given with --teacher_checkpoint
        if not run.teacher_checkpoint.exists():
            raise UsageError(f"--teacher_checkpoint {config.teacher_checkpoint} does not exist")
        return
    run.teacher = teacher


def teachers(runs: list[Run]) -> list[Run]:
    return list({run.teacher.name: run.teacher for run in runs if run.teacher}.values())


def teacher_report(runs: list[Run]) -> list[str]:
    """A line per teacher the grid's students distil from by default: its run, its epochs, whether it
    is trained already (or is trained first), and a warning where --teacher_epochs trains it for fewer
    epochs than the teacher recipe: such a teacher bounds every student's accuracy."""
    lines = []
    for teacher in teachers(runs):
        students = sum(run.teacher is not None and run.teacher.name == teacher.name for run in runs)
        state = "trained" if RunDir(teacher.path).finished else "trained first"
        plural = "" if students == 1 else "s"
        config = teacher.config
        lines.append(f"teacher {teacher.name}: {config.epochs} epochs, {state}, for {students} student{plural}")
        epochs = teacher_recipe(config.recipe, config.dataset, config.student).get("epochs", flag_default("epochs"))
        if config.epochs < epochs:
            lines.append(
                f"warning: its students distil from a teacher of {config.epochs} epochs (--teacher_epochs), fewer "
                f"than the teacher recipe's {epochs}: its accuracy bounds theirs"
            )
    return lines
