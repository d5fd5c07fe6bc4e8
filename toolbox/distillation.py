"""The distillation interface's face: a run's distiller from its flags.

Every method is one file of ``toolbox/methods/`` behind the interface of ``toolbox.methods.base``
(``Distiller``, ``Setup``, ``Step``), listed once in ``toolbox.methods.METHODS``. This module builds
the distiller a run trains with: the method's defaults and its recipe's settings filled in.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from torch import Tensor

from toolbox.config import Config, run_recipe
from toolbox.methods import distiller_class
from toolbox.methods.base import Distiller, Setup, Step

__all__ = ["Distiller", "Setup", "Step", "build_distiller", "distiller_for", "with_defaults"]


def with_defaults(config: Config) -> Config:
    """``config`` with the flags left unset (None) given the defaults for this run: its recipe's for
    the method (``--recipe imagenet``'s kd weights), else the method's own (as
    ``toolbox.rundir.identity.method_default``). Flags that ``Config`` gives a value of its own
    (``epochs``, ``kd_temperature``, ...) keep it: the recipe's values for those come from
    ``parse_config``, so build a run's ``Config`` with it, e.g. ``parse_config(["--recipe", "imagenet",
    ...])``, not ``Config(recipe="imagenet")``."""
    own = {**distiller_class(config.distillation).defaults_for(config), **run_recipe(config)}
    return dataclasses.replace(config, **{name: value for name, value in own.items() if getattr(config, name) is None})


def build_distiller(config: Config, setup: Setup) -> Distiller:
    """The registered distiller for ``config.distillation``."""
    return distiller_class(config.distillation)(config, setup)


def distiller_for(
    config: Config, teacher_out: Sequence[Tensor], student_out: Sequence[Tensor], train_labels: Optional[Tensor] = None
) -> Distiller:
    """The distiller of ``config`` (its method's defaults filled in) for networks with outputs like
    these: for tests, benchmarks and notebooks that hold outputs rather than models."""
    return build_distiller(with_defaults(config), Setup.of(teacher_out, student_out, train_labels))
