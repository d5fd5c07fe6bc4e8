"""Every training flag, its default and its help, in one place.

``Config`` is the single source: the command-line parser is generated from its fields, so a flag
cannot drift from the value the training loop reads, and the resolved ``Config`` is what each run
saves as ``config.json``. This module does not load torch: ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from toolbox.config.choices import (
    BACKENDS,
    COMPILE_MODES,
    DATASETS,
    HOOI_MAX_SWEEPS,
    METHODS,
    MODELS,
    RECOMP_TARGETS,
    SOFT_LOSSES,
    TUCKER_CORES,
    parse_ranks,
)
from toolbox.config.naming import validate_experiment_name
from toolbox.config.recipes import RECIPES
from toolbox.errors import UsageError


def flag_default(name: str) -> Any:
    """The default of flag ``name`` as ``Config`` declares it (None where the method decides)."""
    return next(item.default for item in dataclasses.fields(Config) if item.name == name)


def milestones(text: str, flag: str = "--lr_milestones") -> list[int]:
    """``150,180,210`` -> [150, 180, 210]: increasing positive epochs."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values) or values != sorted(set(values)):
        raise UsageError(
            f"{flag} must be increasing positive epochs separated by commas, e.g. 150,180,210; got {text!r}"
        )
    return values


def flag(default: Any, help: str, *, type: Optional[type] = None, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field that is also a command-line flag."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass
class Config:
    # The sections below are --help's groups (toolbox.config.parser.FLAG_GROUPS).
    # What to train
    distillation: str = flag(
        "tucker",
        "distillation method ('none' trains without a teacher, e.g. the teacher itself; README's methods table)",
        choices=METHODS,
    )
    dataset: str = flag(
        "cifar100",
        "data set ('digits' is offline, built from scikit-learn's 8x8 digits; 'imagenet' and 'tiny-imagenet' are "
        "read from JPEG files under --data_dir: docs/imagenet.md)",
        choices=DATASETS,
    )
    teacher: str = flag(
        "ResNet112",
        "teacher architecture ('resnet18', 'resnet34', 'resnet50' are torchvision's ImageNet ResNets, "
        "'MobileNetV1' mdistiller's; 'ResNet50' is the CIFAR bottleneck network)",
        choices=MODELS,
    )
    student: str = flag("ResNet56", "architecture being trained", choices=MODELS)
    # The distillation loss
    ce_weight: Optional[float] = flag(
        None,
        "weight of the cross-entropy: total = ce_weight * cross-entropy + beta * soft loss (default: 1; kd 0.1, as "
        "RepDistiller and mdistiller train it on CIFAR-100, 0.5 with --recipe imagenet)",
        type=float,
    )
    beta: Optional[float] = flag(
        None,
        "weight of the distillation loss (default: the method's published CIFAR-100 weight, README's methods "
        "table; 125 for the original's feature-map losses)",
        type=float,
    )
    loss: str = flag(
        "l1",
        "featuremap, tucker, tucker_recomp, noise: distance between the L2-normalised, flattened maps or cores",
        choices=SOFT_LOSSES,
    )
    feature_layer: Optional[int] = flag(
        None,
        "distilled stage, from 1 to the architecture's number of stages (0 is the stem; default 3, fitnet's hint "
        "layer 2): for the CIFAR ResNets 3 is layer3 (64x8x8 on 32x32 images), 2 is 32x16x16, 1 is 16x32x32",
        type=int,
    )
    ranks: str = flag(
        "BATCH_SIZE,32,8,8",
        "Tucker ranks for (batch, channel, height, width); BATCH_SIZE keeps the batch mode whole; xF is a fraction "
        "of the map's mode, e.g. BATCH_SIZE,x0.5,x1,x1 on any architecture",
    )
    recomp_target: str = flag(
        "teacher",
        "tucker_recomp: reconstruct the teacher map, the student map (projected on the teacher's factors), or both",
        choices=RECOMP_TARGETS,
    )
    tucker_backend: str = flag(
        "fast",
        "'fast': tensorly's result in closed form, from float64 Gram eigendecompositions; 'tensorly': tensorly's "
        "tucker, as the original called it",
        choices=BACKENDS,
    )
    hooi_iters: int = flag(
        HOOI_MAX_SWEEPS,
        "most HOOI sweeps, on either back end (tensorly's n_iter_max; it stops earlier at its tolerance, 1e-4); "
        "0: the SVD initialisation alone",
    )
    tucker_core: str = flag(
        "original",
        "tucker: 'original' compares cores with the full-rank modes (batch, spatial) rotated as tensorly rotates "
        "them, the study's loss; 'per_sample' leaves them unrotated, comparing each sample's own core "
        "(--tucker_backend fast only)",
        choices=TUCKER_CORES,
    )
    kd_temperature: float = flag(4.0, "kd, dkd, dist, and the KD term of --kd_weight: softmax temperature")
    dkd_alpha: float = flag(1.0, "dkd: weight of the target-class term (TCKD)")
    dkd_beta: Optional[float] = flag(
        None,
        "dkd: weight of the non-target-class term (NCKD); default 8, or mdistiller's per pair "
        "(toolbox/methods/dkd.py, DKD_BETA)",
        type=float,
    )
    dkd_warmup: int = flag(20, "dkd: epochs over which the loss weight rises linearly to beta")
    crd_dim: int = flag(128, "crd: dimension of the contrastive embeddings")
    crd_negatives: int = flag(16384, "crd: negatives per sample, drawn from other classes")
    crd_temperature: float = flag(0.07, "crd: temperature of the contrastive softmax")
    crd_momentum: float = flag(0.5, "crd: momentum of the memory bank's update")
    rkd_distance: float = flag(25.0, "rkd: weight of the distance term")
    rkd_angle: float = flag(50.0, "rkd: weight of the angle term")
    init_epochs: int = flag(
        30,
        "ab, ft, fsp: epochs of RepDistiller's initialisation phase, trained before --epochs with the distillation "
        "loss alone (ft: the paraphraser's reconstruction) and their own optimiser at a constant lr (the run's --lr; "
        "ft 0.01 for a ResNet or WRN student); 0 skips it",
    )
    reviewkd_warmup: int = flag(20, "reviewkd: epochs over which the loss weight rises linearly to beta")
    reviewkd_student_preact: bool = flag(
        False,
        "reviewkd: fuse the student's stage maps before their last ReLU (mdistiller's STU_PREACT; on with "
        "--recipe imagenet) rather than after it",
    )
    noise_std: float = flag(1.0, "noise: standard deviation of the Gaussian noise added to the student's map")
    dist_beta: float = flag(
        1.0,
        "dist: weight of the inter-class relation (each sample's class probabilities, Pearson-correlated between "
        "the networks)",
    )
    dist_gamma: float = flag(
        1.0, "dist: weight of the intra-class relation (each class's probabilities over the batch, Pearson-correlated)"
    )
    nkd_temperature: float = flag(
        3.0, "nkd: temperature of the non-target classes' distributions (the target term is at 1; --recipe imagenet: 1)"
    )
    nkd_gamma: float = flag(3.5, "nkd: weight of the non-target term (--recipe imagenet: 1.5)")
    ttm_gamma: Optional[float] = flag(
        None,
        "ttm, wttm: exponent of the power transform of the teacher's probabilities, a temperature of 1/gamma on the "
        "teacher alone (ttm 0.1, wttm 0.2 when not given)",
        type=float,
    )
    kd_weight: Optional[float] = flag(
        None,
        "weight of a KD term (Hinton's, at --kd_temperature) added to any method's loss with a teacher (default 0: "
        "none); --distillation crd --kd_weight 1 is the CRD paper's CRD+KD",
        type=float,
    )
    logit_standardization: bool = flag(
        False,
        "kd, dkd: z-score each sample's teacher and student logits over the classes before the temperature (Sun et "
        "al., CVPR 2024); the temperature and weights not given become that paper's for the pair (mostly T 2, W 9)",
    )
    # Optimisation (SGD with momentum; the original's cosine schedule, or the CRD benchmark's steps)
    recipe: str = flag(
        "original",
        "training recipe, which sets the flags below unless they are given: 'original' is the study's (150 epochs, "
        "batch 512, lr 0.1, cosine); 'crd' the CIFAR-100 benchmark's of RepDistiller and mdistiller (240 epochs, "
        "batch 64, lr 0.05, 0.01 for MobileNetV2/ShuffleV1/ShuffleV2, x0.1 at epochs 150, 180, 210); 'imagenet' "
        "mdistiller's ImageNet solver (100 epochs, batch 512, lr 0.2, weight decay 1e-4, x0.1 at epochs 30, 60, 90) "
        "with each method's published ImageNet settings (docs/training.md, Recipes)",
        choices=tuple(RECIPES),
    )
    epochs: int = flag(150, "training epochs")
    batch_size: int = flag(512, "training batch size")
    lr: float = flag(0.1, "initial learning rate")
    momentum: float = flag(0.9, "SGD momentum")
    weight_decay: float = flag(5e-4, "SGD weight decay")
    optimizer: Optional[str] = flag(
        None,
        "'sgd' (the default), or 'dot': mdistiller's Distillation-Oriented Trainer, SGD whose momentum is "
        "--momentum - --dot_delta for the cross-entropy's gradient and --momentum + --dot_delta for the "
        "distillation loss's (methods with a teacher, one process)",
        type=str,
        choices=("sgd", "dot"),
    )
    dot_delta: Optional[float] = flag(
        None,
        "dot: how far the two momenta lie from --momentum (default 0.075, mdistiller's CIFAR-100 DOT.DELTA; 0.09 "
        "with --recipe imagenet)",
        type=float,
    )
    schedule: str = flag(
        "cosine",
        "learning-rate schedule: 'cosine' anneals to 0 over the epochs; 'step' multiplies it by --lr_decay after "
        "each epoch in --lr_milestones",
        choices=("cosine", "step"),
    )
    lr_milestones: str = flag("150,180,210", "step schedule: the epochs after which the learning rate decays")
    lr_decay: float = flag(0.1, "step schedule: the factor applied at each milestone")
    teacher_epochs: Optional[int] = flag(
        None,
        "methods with a teacher: epochs of the run that trains the default teacher; not given: the teacher recipe's, "
        "whatever the student's --epochs (--recipe's for the teacher; under 'original' the data set's own, digits 8, "
        "else 150)",
        type=int,
    )
    teacher_batch_size: Optional[int] = flag(
        None,
        "methods with a teacher: batch size of the default teacher's run; not given: the teacher recipe's",
        type=int,
    )
    teacher_lr: Optional[float] = flag(
        None,
        "methods with a teacher: learning rate of the default teacher's run; not given: the teacher recipe's",
        type=float,
    )
    seed: int = flag(0, "seed for initialisation, data order and augmentation")
    max_batches: Optional[int] = flag(None, "stop each training epoch after this many batches (smoke runs)", type=int)
    sync_bn: bool = flag(
        False,
        "under torchrun: BatchNorm normalises with the statistics of the whole global batch (SyncBatchNorm) "
        "instead of each rank's part (what mdistiller and RepDistiller do); no effect in one process",
    )
    # Where things are (all but experiment_name may change when a run resumes)
    data_dir: str = flag("data", "data sets are read from (and CIFAR downloaded into) this folder")
    experiments_dir: str = flag("experiments", "run folders are created under this folder")
    experiment_name: Optional[str] = flag(
        None,
        "run folder, relative to --experiments_dir (default: derived from the flags: "
        "cifar100/ResNet112-ResNet56/tucker/B-32-8-8/seed0 when no flag is given; every other flag given another "
        "value is added, except the speed and location flags, e.g. .../B-32-8-8/lr=0.01/seed0)",
        type=str,
    )
    teacher_checkpoint: Optional[str] = flag(
        None,
        "teacher weights: ours or the original's ({'weights': state_dict}), a RepDistiller/mdistiller "
        "ckpt_epoch_*.pth, or a torchvision state dict; default: the plain run of --teacher with seed 0 under "
        "--experiments_dir, trained by the teacher recipe (--teacher_epochs) with the student's other flags; a "
        "resumed run keeps the teacher it started with and refuses a teacher file of other content",
        type=str,
    )
    # Speed (none of these changes which run it is: a run may resume with other values)
    device: str = flag("auto", "'auto' (CUDA when present, else the CPU), 'cpu', 'cuda', 'cuda:1', ...")
    amp: str = flag(
        "auto",
        "mixed precision: 'auto' is bf16 autocast on a GPU that supports it and off on the CPU",
        choices=("auto", "bf16", "off"),
    )
    compile: bool = flag(
        False,
        "torch.compile the teacher and the student for the full training batch: one static graph each, compiled in "
        "the first steps; the epoch's last, smaller batch and the evaluation run eagerly, as do the distillation "
        "losses",
    )
    compile_mode: Optional[str] = flag(
        None,
        "--compile: torch.compile's mode (torch's own when not given); on a GPU, 'reduce-overhead' and "
        "'max-autotune' replay the graphs as CUDA graphs, which cut the launch overhead of short steps",
        type=str,
        choices=COMPILE_MODES,
    )
    channels_last: bool = flag(True, "channels-last memory format for the models and batches")
    eval_batch_size: int = flag(1024, "batch size for evaluation")
    threads: Optional[int] = flag(
        None,
        "CPU threads for torch (default: torch's choice, one per core); they sleep while they wait for each other "
        "unless OMP_WAIT_POLICY says otherwise (docs/training.md, Speed)",
        type=int,
    )
    deterministic: bool = flag(
        False, "deterministic algorithms (torch and cuDNN) for bit-for-bit reproducible runs, at their speed cost"
    )
    evaluate: Optional[str] = flag(
        None,
        "evaluate this checkpoint of --student (ours, the original's or a RepDistiller/mdistiller ckpt_epoch_*.pth) "
        "on --dataset's test split, print its accuracy and loss, and exit",
        type=str,
    )
    workers: Optional[int] = flag(
        None,
        "imagenet, tiny-imagenet: DataLoader processes decoding the JPEGs (default: min(8, the CPUs this process "
        "may use)); 0 decodes in the training process. CIFAR and digits are kept on the device and need none",
        type=int,
    )
    log_every: int = flag(
        100,
        "print a progress line (step, images/s, losses, the epoch's ETA) every this many training steps; 0: none",
    )
    tensorboard_every: int = flag(
        0,
        "write the cross-entropy and distillation loss of every this many training steps to TensorBoard event files "
        "in the run folder's steps/, beside the per-epoch curves that every run writes (docs/training.md, "
        "TensorBoard); 0: per-epoch curves only",
    )
    checkpoint_every: int = flag(
        1000,
        "save last.pt within an epoch every this many training steps, so that a killed run resumes from there "
        "(CIFAR and digits epochs have fewer steps: they save once an epoch); 0: only at the end of each epoch. A "
        "stop signal saves where the run stopped either way",
    )

    def validate(self) -> None:
        """Reject values that parse but make no sense, naming the flag and what would be valid."""
        positive = ("epochs", "batch_size", "teacher_epochs", "teacher_batch_size", "eval_batch_size", "max_batches")
        for name in (*positive, "threads", "crd_dim", "crd_negatives"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be a positive integer; got {value}")
        for name in ("workers", "log_every", "tensorboard_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name} must be 0 or a positive integer; got {value}")
        milestones(self.lr_milestones)
        if not 0 <= self.crd_momentum < 1:
            raise UsageError(f"--crd_momentum must be in [0, 1); got {self.crd_momentum}")
        if not 0 < self.lr_decay <= 1:
            raise UsageError(f"--lr_decay must be in (0, 1]; got {self.lr_decay}")
        for name in ("lr", "teacher_lr", "kd_temperature", "crd_temperature", "nkd_temperature", "ttm_gamma"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UsageError(f"--{name} must be a positive number; got {value}")
        for name in NON_NEGATIVE:
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"--{name} must be zero or a positive number; got {value}")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed must be from 0 to 2**32 - 1 (numpy's range); got {self.seed}")
        if self.compile_mode is not None and not self.compile:
            raise UsageError(f"--compile_mode {self.compile_mode} needs --compile; add it, or leave out --compile_mode")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise UsageError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}")
        parse_ranks(self.ranks)
        if self.feature_layer is not None and self.feature_layer < 0:
            raise UsageError(f"--feature_layer must be 0 (the stem) or a stage number; got {self.feature_layer}")
        if self.experiment_name is not None:
            validate_experiment_name(self.experiment_name)
        for name in ("evaluate", "teacher_checkpoint"):
            if getattr(self, name) == "":  # would read as no --evaluate (and train), or as the current folder
                raise UsageError(f"--{name} needs the path of a checkpoint file; got ''")


NON_NEGATIVE = (
    "beta",
    "ce_weight",
    "momentum",
    "weight_decay",
    "noise_std",
    "hooi_iters",
    "dkd_alpha",
    "dkd_beta",
    "dkd_warmup",
    "rkd_distance",
    "rkd_angle",
    "dist_beta",
    "dist_gamma",
    "nkd_gamma",
    "kd_weight",
    "dot_delta",
    "init_epochs",
    "reviewkd_warmup",
)
"""Flags that may be zero but not negative."""
RUNTIME_FIELDS = frozenset(
    {
        "deterministic",
        "evaluate",
        "device",
        "amp",
        "compile",
        "compile_mode",
        "channels_last",
        "eval_batch_size",
        "threads",
        "data_dir",
        "experiments_dir",
        "teacher_checkpoint",
        "workers",
        "log_every",
        "tensorboard_every",
        "checkpoint_every",
    }
)
"""Fields that may differ when a run resumes: they change speed or location, not the experiment."""
