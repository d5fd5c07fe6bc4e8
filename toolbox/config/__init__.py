"""The flag layer's face: ``Config`` (every training flag), its parser, the ``--config`` file reader,
the recipes. Torch-free, so that ``--help`` and bad flags answer at once.

Modules: ``flags`` (``Config`` and its checks), ``parser`` (the command line), ``file`` (``--config``
files), ``recipes``, ``choices`` (the flags' vocabularies), ``naming`` (values in run names).
"""

from toolbox.config.flags import RUNTIME_FIELDS, Config, flag_default, milestones
from toolbox.config.parser import build_parser, config_from_namespace, parse_config, parse_flags
from toolbox.config.recipes import RECIPES, TEACHER_TRAINING, recipe_defaults, run_recipe, teacher_recipe

__all__ = [
    "RECIPES",
    "RUNTIME_FIELDS",
    "TEACHER_TRAINING",
    "Config",
    "build_parser",
    "config_from_namespace",
    "flag_default",
    "milestones",
    "parse_config",
    "parse_flags",
    "recipe_defaults",
    "run_recipe",
    "teacher_recipe",
]
