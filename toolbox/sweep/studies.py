"""The grids runner.py submits by name: the original study (its default) and the benchmarks
(``--benchmark NAME``). Each is a set of axes (``toolbox.sweep.grid``); the flags given to runner.py
replace an axis. The methods of a grid come from ``toolbox.methods.METHODS``: a benchmark takes
every method but those it names as left out, or names a deliberate subset and says why.
"""

from __future__ import annotations

from toolbox.config.choices import IMAGENET_PAIRS, RECOMP_TARGETS, SAME_ARCH_PAIRS
from toolbox.methods import METHODS
from toolbox.sweep.grid import Axes

STUDY: Axes = {  # the original study: 17 configurations
    "distillation": ["featuremap", "tucker", "tucker_recomp"],
    "recomp_target": list(RECOMP_TARGETS),
    "ranks": ["BATCH_SIZE,32,8,8", "BATCH_SIZE,24,8,8", "BATCH_SIZE,16,8,8", "BATCH_SIZE,8,8,8"],
}
STUDY_RUNS = 3
"""Seeds per configuration, unless a benchmark says otherwise (``BENCHMARK_RUNS``) or --runs is given."""
NOT_BENCHMARKED = ("noise",)
"""Methods left out of the benchmark grids: the original's noise study is a study of its own (test_noise.py)."""
BENCHMARK: Axes = {  # the CRD/DKD CIFAR-100 benchmark's same-architecture table, every method beside
    "dataset": ["cifar100"],
    "recipe": ["crd"],
    "pair": [f"{teacher}-{student}" for teacher, student in SAME_ARCH_PAIRS],
    "distillation": [name for name in METHODS if name not in NOT_BENCHMARKED],
    "recomp_target": list(RECOMP_TARGETS),
    "ranks": ["BATCH_SIZE,x0.5,x1,x1"],  # half the teacher's channels, as the study's rank 32 of 64
}
IMAGENET_BENCHMARK: Axes = {  # the field's ImageNet table, with the Tucker methods beside
    "dataset": ["imagenet"],
    "recipe": ["imagenet"],
    "pair": [f"{teacher}-{student}" for teacher, student in IMAGENET_PAIRS],
    # a deliberate subset: the methods mdistiller (and DIST's authors) publish ImageNet settings and results for,
    # each an ImageNet run of days; and ours
    "distillation": [
        "none",
        "kd",
        "at",
        "crd",
        "dkd",
        "dist",
        "ofd",
        "reviewkd",
        "featuremap",
        "tucker",
        "tucker_recomp",
    ],
    "recomp_target": list(RECOMP_TARGETS),
    "ranks": ["BATCH_SIZE,x0.5,x1,x1"],
}
DIGITS_STUDY: Axes = {  # ./util.sh study: README's "What to expect" table, small enough for two CPU cores
    "dataset": ["digits"],
    "teacher": ["ResNet20"],
    "student": ["ResNetBaby"],
    "epochs": ["8"],
    "batch_size": ["64"],
    "lr": ["0.05"],
    # a deliberate subset: the original study's methods, RepDistiller's table and DKD, as the table was measured
    "distillation": [
        "none",
        "featuremap",
        "tucker",
        "tucker_recomp",
        "noise",
        "kd",
        "fitnet",
        "at",
        "sp",
        "pkt",
        "rkd",
        "vid",
        "crd",
        "dkd",
    ],
    "recomp_target": list(RECOMP_TARGETS),
    "ranks": ["BATCH_SIZE,16,8,8"],
    "tucker_core": ["original", "per_sample"],
}
BENCHMARKS = {"cifar100": BENCHMARK, "imagenet": IMAGENET_BENCHMARK, "digits": DIGITS_STUDY}
"""``--benchmark NAME`` -> its grid's axes."""
BENCHMARK_RUNS = {"imagenet": 1}
"""Seeds per configuration where a benchmark's field reports single runs (ImageNet); else STUDY_RUNS."""
