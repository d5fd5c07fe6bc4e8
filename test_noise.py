#!/usr/bin/env python
"""The noise-injection study: distil through the student's map with Gaussian noise added, which a
small generation module (3x3 conv, ReLU, 3x3 conv) turns back into a feature map pulled towards
the teacher's (the ``noise`` method of ``toolbox/distillation.py``).

    python test_noise.py --dataset digits --teacher ResNet20 --student ResNetBaby --epochs 12
    python test_noise.py --noise_stds 0.5 1 2 --dataset digits --teacher ResNet20 --student ResNetBaby --epochs 12

Every flag of tucker_distillation.py is accepted (--config and --recipe too), with --distillation fixed to noise.
--noise_stds
sweeps noise levels, one run folder per level (by default .../noise/std0.5/seed0, .../noise/std1/
seed0, ...), planned by the same grid code as runner.py's --grid noise_std=...; every level is
checked before the first one trains. As with tucker_distillation.py, a
finished level is skipped and an unfinished one resumes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from toolbox.cli import main_guard, quiet_on_closed_pipe, wait_passively
from toolbox.config import Config, build_parser, config_from_namespace, parse_flags

wait_passively()  # before torch loads

from toolbox.errors import UsageError  # noqa: E402
from toolbox.sweep import grid_points  # noqa: E402
from toolbox.training import train  # noqa: E402


def build_noise_parser() -> argparse.ArgumentParser:
    """The training parser with ``noise`` as the method and a list of noise levels."""
    parser = build_parser(prog="test_noise.py", description=__doc__.split("\n\n")[0])
    parser.set_defaults(distillation="noise")
    method = next(action for action in parser._actions if action.dest == "distillation")
    method.help = "only 'noise' here, the noise-injection study; the other methods train with tucker_distillation.py"
    parser.add_argument(
        "--noise_stds",
        type=float,
        nargs="+",
        metavar="STD",
        default=None,
        help="noise levels to sweep, one run each (instead of the single --noise_std)",
    )
    return parser


def sweep_configs(argv: Optional[Sequence[str]] = None) -> list[Config]:
    """One validated ``Config`` per noise level; bad input exits with status 2 and one line."""
    parser = build_noise_parser()
    namespace = parse_flags(parser, argv)  # as tucker_distillation.py reads them: --config, the recipe's defaults
    stds = namespace.noise_stds or [namespace.noise_std]
    try:
        if namespace.distillation != "noise":
            raise UsageError(
                f"--distillation: test_noise.py trains the noise method only; use tucker_distillation.py "
                f"for {namespace.distillation!r}"
            )
        if namespace.noise_stds and namespace.noise_std != Config.noise_std:
            raise UsageError("give --noise_std (one level) or --noise_stds (several), not both")
        if len(set(stds)) < len(stds):
            raise UsageError(f"--noise_stds repeats a level: {' '.join(f'{std:g}' for std in stds)}")
        if len(stds) > 1 and namespace.experiment_name is not None:
            raise UsageError(
                "--experiment_name names a single run folder; leave it out when sweeping --noise_stds "
                "(each level gets its own default name)"
            )
        points = grid_points({"distillation": ["noise"], "noise_std": [repr(std) for std in stds]})
        return [
            config_from_namespace(argparse.Namespace(**{**vars(namespace), "noise_std": float(point["noise_std"])}))
            for point in points
        ]
    except UsageError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def main(argv: Optional[Sequence[str]] = None) -> int:
    configs = sweep_configs(argv)

    def run() -> None:
        for config in configs:  # each run prints its folder (named after its level) and its best accuracy
            train(config)

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
