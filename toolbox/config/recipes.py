"""Training recipes: the published settings a ``--recipe`` gives the flags not given.

A recipe's own values (epochs, batch, schedule, ...) are here; what it sets for one method's runs
beyond them (mdistiller's per-method ImageNet settings) sits in that method's file
(``Distiller.recipes``), as do logit standardisation's per-pair settings
(``Distiller.standardization_defaults``). Torch-free, as the rest of the flag layer: a method's
module (and torch) is loaded only for a recipe other than 'original' or for
``--logit_standardization``, runs that load it to train anyway.
"""

from __future__ import annotations

from typing import Any

from toolbox.methods import distiller_class

RECIPES: dict[str, dict[str, Any]] = {
    "original": {},  # the flags' own defaults
    "crd": {
        "epochs": 240,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "lr_milestones": "150,180,210",
        "lr_decay": 0.1,
    },
    # mdistiller's ImageNet solver (configs/imagenet/*/*.yaml, SOLVER)
    "imagenet": {
        "epochs": 100,
        "batch_size": 512,
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",
        "lr_milestones": "30,60,90",
        "lr_decay": 0.1,
        "dot_delta": 0.09,
    },  # configs/imagenet/*/dot.yaml's DOT.DELTA
}
"""Training recipes: what each changes from the flags' defaults."""
RECIPE_STUDENT_LR = {"crd": {"MobileNetV2": 0.01, "ShuffleV1": 0.01, "ShuffleV2": 0.01}}
"""Learning rates a recipe sets for some students instead of its own (RepDistiller's for these)."""
TEACHER_TRAINING = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "lr_milestones", "lr_decay")
"""The flags a default teacher's run takes from the teacher recipe, never from its students' flags."""
DATASET_TEACHERS = {"digits": {"epochs": 8, "batch_size": 64, "lr": 0.05}}
"""Data sets whose teachers have a recipe of their own under --recipe original: digits' is its study's
(``util.sh study``), a ResNet20 of about 98% in a minute of two CPU cores."""


def recipe_defaults(recipe: str, student: str, distillation: str = "none") -> dict[str, Any]:
    """The values ``recipe`` gives the flags for a run of ``distillation`` training ``student``
    (flags not named keep their defaults, or the method's): the recipe's, then the method's
    published settings under it."""
    values = dict(RECIPES[recipe])
    if student in RECIPE_STUDENT_LR.get(recipe, {}):
        values["lr"] = RECIPE_STUDENT_LR[recipe][student]
    if RECIPES[recipe]:  # 'original' is the flags' own defaults: no method sets anything under it
        values.update(distiller_class(distillation).recipes.get(recipe, {}))
    return values


def teacher_recipe(recipe: str, dataset: str, teacher: str) -> dict[str, Any]:
    """What the teacher recipe gives the training flags of the run that trains a student's teacher by
    default (flags not named keep their defaults): the recipe's for the teacher's architecture (the
    field's 240 epochs under 'crd'), or under 'original' the data set's own teacher recipe if it has
    one."""
    if not RECIPES[recipe]:
        return dict(DATASET_TEACHERS.get(dataset, {}))
    return {name: value for name, value in recipe_defaults(recipe, teacher).items() if name in TEACHER_TRAINING}


def run_recipe(config: Any) -> dict[str, Any]:
    """``recipe_defaults`` for the run ``config`` (a ``Config`` or the parser's namespace), with
    logit standardisation's published temperature and weights on top where it asks for them."""
    values = recipe_defaults(config.recipe, config.student, config.distillation)
    if config.logit_standardization:
        method = distiller_class(config.distillation)
        values.update(method.standardization_defaults(config.recipe, config.teacher, config.student))
    return values
