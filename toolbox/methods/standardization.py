"""Logit standardisation (Sun et al., CVPR 2024), an option on the methods published with it (kd, dkd):
each sample's logits z-scored over the classes before the temperature.

``standardized`` is the ``normalize`` of the authors' code (sunshangquan/logit-standardization-KD at
f6e5aa5), which ``toolbox.methods.loss`` applies to both networks' logits. Its tools/train.py turns a
KD run into KD+LS with ``--base-temp T --kd-weight W``; the published runs' T and W per pair sit in
the methods' files (``kd.LS_KD``, ``dkd.LS_DKD``), read from the names of its logs/KD/*.txt and
logs/DKD/*.txt files, which its README's CIFAR-100 tables link.
"""

from __future__ import annotations

import torch
from torch import Tensor

STANDARDIZATION_EPS = 1e-7  # added to the standard deviation, as the authors' normalize
LS_TEMPERATURE, LS_WEIGHT = 2.0, 9.0  # tools/train.py's defaults of --base-temp and --kd-weight


def standardized(logits: Tensor) -> Tensor:
    """Each row's z-score: minus its mean, over its standard deviation (Bessel-corrected, torch's
    default, as the authors') plus 1e-7; in float32 at least."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (logits - logits.mean(1, keepdim=True)) / (STANDARDIZATION_EPS + logits.std(1, keepdim=True))
