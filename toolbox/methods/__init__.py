"""The distillation methods: one file each, named by its ``--distillation`` name, and the one list of them.

``METHODS`` maps each name to the class in ``toolbox/methods/NAME.py``; ``--help``, the flag checks,
runner.py's grids, the analysis and the tests read this list, which is torch-free: a method's
module (and torch) loads when the method is first used. Adding a method is one file and one line
here (docs/methods.md, "Adding a method"). ``DISTILLERS`` is every class, loaded on first access.
The interface is ``toolbox.methods.base``; ``toolbox.distillation`` builds a run's distiller.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolbox.methods.base import Distiller

METHODS: dict[str, str] = {
    "none": "NoDistillation",
    "featuremap": "FeatureMapDistiller",
    "tucker": "TuckerDistiller",
    "tucker_recomp": "TuckerRecompDistiller",
    "kd": "LogitDistiller",
    "noise": "NoiseDistiller",
    "fitnet": "FitNetDistiller",
    "at": "AttentionDistiller",
    "sp": "SimilarityDistiller",
    "pkt": "PKTDistiller",
    "rkd": "RKDDistiller",
    "vid": "VIDDistiller",
    "crd": "CRDDistiller",
    "dkd": "DKDDistiller",
    "cc": "CCDistiller",
    "nst": "NSTDistiller",
    "kdsvd": "KDSVDDistiller",
    "dist": "DISTDistiller",
    "ofd": "OFDDistiller",
    "reviewkd": "ReviewKDDistiller",
    "ab": "ABDistiller",
    "ft": "FTDistiller",
    "fsp": "FSPDistiller",
    "nkd": "NKDDistiller",
    "ttm": "TTMDistiller",
    "wttm": "WTTMDistiller",
    "ickd": "ICKDDistiller",
}
"""``--distillation NAME`` -> the name of its class in ``toolbox/methods/NAME.py``, in ``--help``'s order."""


_classes: dict[str, Any] = dict.fromkeys(METHODS)
"""The classes loaded so far (None: not yet), in ``METHODS``' order; ``DISTILLERS`` is this dict."""


def distiller_class(name: str) -> type[Distiller]:
    """The class of method ``name``, its module imported on first use."""
    if _classes[name] is None:
        _classes[name] = getattr(importlib.import_module(f"{__name__}.{name}"), METHODS[name])
    return _classes[name]


def __getattr__(name: str) -> Any:
    """``DISTILLERS``: every method's class by name, in ``METHODS``' order (loads them all, and torch)."""
    if name == "DISTILLERS":
        for method in METHODS:
            distiller_class(method)
        return _classes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
