"""The training script's command line: one flag per ``Config`` field, in ``--help``'s groups, over the
flags of a ``--config`` file, over the defaults that the recipe, the student and the method decide.

Torch-free (``--help`` and bad flags answer at once); PyYAML loads only when a file is given.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from toolbox.cli import OneLineParser
from toolbox.config.file import read_flags
from toolbox.config.flags import Config
from toolbox.config.recipes import run_recipe
from toolbox.errors import UsageError

DESCRIPTION = """\
Train one run: a teacher (--distillation none) or a student distilled from its teacher by one
method, in its own folder under --experiments_dir, named after the flags that define it. Rerunning
the same command resumes an unfinished run from its last save, and does nothing for a finished
one. Flags may also come from a YAML file (--config). The defaults are the original study's
(CIFAR-100, ResNet112 -> ResNet56, tucker); --dataset digits trains offline, in minutes on a CPU.
Every run writes TensorBoard curves: tensorboard --logdir experiments."""

EPILOG = """\
exit status:
  0   done (or finished already)
  1   the run diverged (last.pt keeps the last good epoch), or under torchrun another rank died: rerun to resume
  2   bad input: a flag, a file or a folder (one line on stderr says which and what to do)
  74  a write failed (a full disk, permissions): fix it and rerun, the run resumes
  75  stopped by SIGUSR1, SIGTERM or Ctrl-C (SIGINT; a second one stops at once): rerun the same command to
      resume"""

FLAG_GROUPS = {
    "distillation": "what to train",
    "ce_weight": "the distillation loss (each method reads its own flags only)",
    "recipe": "optimisation",
    "data_dir": "where things are (all but --experiment_name may change when a run resumes)",
    "device": "speed (may change when a run resumes: these do not change which run it is)",
}
"""The first flag of each of ``Config``'s sections, and the title of its group in ``--help``."""


def flag_help(item: dataclasses.Field) -> str:
    """A flag's help with its default once: a None default is explained by the help text itself."""
    text = item.metadata["help"]
    if item.default is None:
        return text
    shown = ("on" if item.default else "off") if isinstance(item.default, bool) else item.default
    return f"{text} (default: {shown})".replace("%", "%%")  # argparse %-formats help strings


def build_parser(prog: Optional[str] = None, description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """A parser with one flag per ``Config`` field, grouped as ``Config``'s sections."""
    parser = OneLineParser(
        prog=prog, description=description, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser
    for item in dataclasses.fields(Config):
        meta = item.metadata
        if item.name in FLAG_GROUPS:
            group = parser.add_argument_group(FLAG_GROUPS[item.name])
        if isinstance(item.default, bool):
            group.add_argument(
                f"--{item.name}", action=argparse.BooleanOptionalAction, default=item.default, help=flag_help(item)
            )
            continue
        group.add_argument(
            f"--{item.name}",
            default=item.default,
            type=meta["type"] or type(item.default),
            choices=meta["choices"],
            help=flag_help(item),
        )
    return parser


def config_from_namespace(namespace: argparse.Namespace) -> Config:
    names = {item.name for item in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in vars(namespace).items() if k in names})
    config.validate()
    return config


CONFIG_HELP = (
    "read training flags from a YAML (or .json) file: keys are the flag names without '--', as in a run's "
    "config.json, e.g. 'lr: 0.05'; flags given on the command line override the file's. The run is the "
    "one those flags give on the command line (its folder, its config.json)"
)


def parse_config(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> Config:
    """Flags, and those of a ``--config`` file below them, to a validated ``Config``; bad input
    exits with status 2 and a one-line message."""
    parser = build_parser(prog)
    namespace = parse_flags(parser, argv)
    try:
        return config_from_namespace(namespace)
    except UsageError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def parse_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``argv`` as the training script reads it, through ``parser`` (the training parser, or one
    built on it): the command line over a ``--config`` file's flags, both over the defaults that
    the recipe, the student and the method decide; a bad file exits with status 2 and one line."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    first, _ = parser.parse_known_args(argv)
    from_file: dict[str, Any] = {}
    if first.config is not None:
        try:
            from_file = read_flags(Path(first.config))
        except UsageError as error:
            parser.error(str(error))
        parser.set_defaults(**from_file)
        first, _ = parser.parse_known_args(argv)
    # the recipe, the student and the method (from the command line, else the file) decide the other defaults
    parser.set_defaults(**{**run_recipe(first), **from_file})
    return parser.parse_args(argv)
