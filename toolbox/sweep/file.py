"""runner.py's ``--config FILE``: training flags for every run of the grid, and a ``grid:`` section.

The file is the one tucker_distillation.py reads (``toolbox.config.file``), with one more key:
``grid:``, a mapping of flags to lists of values, the axes that ``--grid`` gives. A flag that
defines a run becomes an axis of one value, as runner.py's own --dataset, --epochs, ... are; the
others (where things are, speed) go to every run as if given after '--'. The command line wins:
runner.py's own flags and its --grid axes replace the file's axes, its flags after '--' the file's
flags, and --runs the file's seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from toolbox.config.file import FIELDS, GRID, command_line, flag_value, known_flag, load_mapping
from toolbox.config.naming import format_value
from toolbox.errors import UsageError
from toolbox.sweep.grid import PAIR, Axes, axis_flags, split_pair

RUNNER_SETS = {
    "experiment_name": "runner.py names every run (its --study adds a sub-folder)",
    "experiments_dir": "give it to runner.py as --experiments_dir",
}
"""Training flags a runner.py file may not set, and why."""


def grid_axis(name: Any, values: Any, path: Path) -> list[str]:
    """One axis of the ``grid:`` section, its values checked as the flag's and spelled as on the command line."""
    where = f"--config {path}: {GRID}: {name}"
    if name not in axis_flags():
        raise UsageError(f"{where}: not a flag that defines a run; an axis is one of {', '.join(sorted(axis_flags()))}")
    if name != PAIR and isinstance(FIELDS[name].default, bool):
        raise UsageError(
            f"{where}: an on/off flag, which an axis cannot vary; run the grid once with it and once without"
        )
    if not isinstance(values, list) or not values or None in values:
        raise UsageError(f"{where}: must be a list of values, e.g. [50, 125]; got {values!r}")
    if name == PAIR:
        for value in values:
            try:
                split_pair(str(value))
            except UsageError as error:
                raise UsageError(f"{where}: {str(error).removeprefix('--grid pair: ')}") from None
        return list(dict.fromkeys(map(str, values)))
    return list(dict.fromkeys(format_value(flag_value(name, value, path, f"{GRID}: ")) for value in values))


def named_flags(tokens: Sequence[str]) -> set[str]:
    """The flags that command-line ``tokens`` give (``--lr 0.1``, ``--lr=0.1``, ``--no-compile``)."""
    names = {token[2:].partition("=")[0] for token in tokens if token.startswith("--")}
    return {name.removeprefix("no-") for name in names}


def read_sweep_file(path: Path, extra: Sequence[str], runs_given: bool) -> tuple[Axes, list[str]]:
    """The axes and the flags for every run that the file gives, less what the command line sets:
    ``extra``, its flags after '--', and ``runs_given``, --runs (which makes the seeds)."""
    data = load_mapping(path)
    grid = data.pop(GRID, None)
    if grid is not None and (not isinstance(grid, dict) or not grid):
        raise UsageError(
            f"--config {path}: {GRID}: must be a mapping of flags to lists of values, e.g. 'beta: [50, 125]'"
        )
    flags = {known_flag(key, path): flag_value(key, value, path) for key, value in data.items()}
    refused = next((name for name in flags if name in RUNNER_SETS), None)
    if refused:
        raise UsageError(f"--config {path}: {refused}: {RUNNER_SETS[refused]}")
    grid = grid or {}
    twice = next((name for name in grid if name in flags), None)
    if twice:
        raise UsageError(f"--config {path}: {twice} is both a flag and a {GRID}: axis; give it once")
    one_valued = {
        name: [format_value(value)]
        for name, value in flags.items()
        if name in axis_flags() and value is not None and not isinstance(value, bool)
    }
    axes = {**one_valued, **{name: grid_axis(name, values, path) for name, values in grid.items()}}
    overridden = named_flags(extra) | ({"seed"} if runs_given else set())
    common = {name: value for name, value in flags.items() if name not in one_valued and name not in overridden}
    return {name: values for name, values in axes.items() if name not in overridden}, command_line(common)
