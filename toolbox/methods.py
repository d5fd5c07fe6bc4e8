"""The registry of distillation methods: ``--distillation NAME`` -> its class.

The original study's methods live in ``toolbox.distillation`` (with the interface), the field's
baselines in ``toolbox.baselines`` and in modules of their own (``toolbox.crd``, ``toolbox.relational``,
``toolbox.logit_methods``, ``toolbox.feature_fusion``, ``toolbox.two_phase``); a new method is one class
there, one line here and its name in ``toolbox.choices.METHODS`` (which ``--help`` reads without loading
torch; a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from torch import Tensor

from toolbox.baselines import (
    AttentionDistiller,
    DKDDistiller,
    FitNetDistiller,
    PKTDistiller,
    RKDDistiller,
    SimilarityDistiller,
    VIDDistiller,
)
from toolbox.config import Config, run_recipe
from toolbox.crd import CRDDistiller
from toolbox.feature_fusion import OFDDistiller, ReviewKDDistiller
from toolbox.distillation import (
    Distiller,
    FeatureMapDistiller,
    LogitDistiller,
    NoDistillation,
    NoiseDistiller,
    Setup,
    TuckerDistiller,
    TuckerRecompDistiller,
)
from toolbox.logit_methods import DISTDistiller
from toolbox.relational import CCDistiller, KDSVDDistiller, NSTDistiller
from toolbox.two_phase import ABDistiller, FSPDistiller, FTDistiller

DISTILLERS: dict[str, type[Distiller]] = {
    "none": NoDistillation,
    "featuremap": FeatureMapDistiller,
    "tucker": TuckerDistiller,
    "tucker_recomp": TuckerRecompDistiller,
    "kd": LogitDistiller,
    "noise": NoiseDistiller,
    "fitnet": FitNetDistiller,
    "at": AttentionDistiller,
    "sp": SimilarityDistiller,
    "pkt": PKTDistiller,
    "rkd": RKDDistiller,
    "vid": VIDDistiller,
    "crd": CRDDistiller,
    "dkd": DKDDistiller,
    "cc": CCDistiller,
    "nst": NSTDistiller,
    "kdsvd": KDSVDDistiller,
    "dist": DISTDistiller,
    "ofd": OFDDistiller,
    "reviewkd": ReviewKDDistiller,
    "ab": ABDistiller,
    "ft": FTDistiller,
    "fsp": FSPDistiller,
}


def with_defaults(config: Config) -> Config:
    """``config`` with the flags left unset (None) given the defaults for this run: its recipe's for
    the method (``--recipe imagenet``'s kd weights), else the method's own (as ``run_identity.method_default``).
    Flags that ``Config`` gives a value of its own (``epochs``, ``kd_temperature``, ...) keep it: the
    recipe's values for those come from ``parse_config``, so build a run's ``Config`` with it, e.g.
    ``parse_config(["--recipe", "imagenet", ...])``, not ``Config(recipe="imagenet")``."""
    own = {**DISTILLERS[config.distillation].defaults_for(config),
           **run_recipe(config)}
    return dataclasses.replace(config, **{name: value for name, value in own.items() if getattr(config, name) is None})


def build_distiller(config: Config, setup: Setup) -> Distiller:
    """The registered distiller for ``config.distillation``."""
    return DISTILLERS[config.distillation](config, setup)


def distiller_for(config: Config, teacher_out: Sequence[Tensor], student_out: Sequence[Tensor],
                  train_labels: Optional[Tensor] = None) -> Distiller:
    """The distiller of ``config`` (its method's defaults filled in) for networks with outputs like
    these: for tests, benchmarks and notebooks that hold outputs rather than models."""
    return build_distiller(with_defaults(config), Setup.of(teacher_out, student_out, train_labels))
