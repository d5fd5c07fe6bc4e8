"""Every training flag, its default and its help, in one place.

``Config`` is the single source: the command-line parser is generated from its fields, so a flag
cannot drift from the value the training loop reads, and the resolved ``Config`` is what each run
saves as ``config.json``. This module does not load torch: ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from toolbox.choices import (
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
from toolbox.errors import UsageError
from toolbox.logit_settings import standardization_defaults
from toolbox.naming import validate_experiment_name

RECIPES: dict[str, dict[str, Any]] = {
    "original": {},  # the flags' own defaults
    "crd": {"epochs": 240, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
            "lr_milestones": "150,180,210", "lr_decay": 0.1},
    # mdistiller's ImageNet solver (configs/imagenet/*/*.yaml, SOLVER)
    "imagenet": {"epochs": 100, "batch_size": 512, "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step",
                 "lr_milestones": "30,60,90", "lr_decay": 0.1, "dot_delta": 0.09},  # configs/imagenet/*/dot.yaml's DOT.DELTA
}
"""Training recipes: what each changes from the flags' defaults."""
RECIPE_STUDENT_LR = {"crd": {"MobileNetV2": 0.01, "ShuffleV1": 0.01, "ShuffleV2": 0.01}}
"""Learning rates a recipe sets for some students instead of its own (RepDistiller's for these)."""
RECIPE_METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "imagenet": {  # mdistiller's configs/imagenet/{r34_r18,r50_mv1}/<method>.yaml, where they differ from its cfg.py
        "kd": {"kd_temperature": 1.0, "ce_weight": 0.5, "beta": 0.5},  # KD.TEMPERATURE, KD.LOSS.CE_WEIGHT, KD_WEIGHT
        "dkd": {"kd_temperature": 1.0, "dkd_warmup": 1},  # DKD.T, DKD.WARMUP (DKD.BETA per pair: logit_settings.DKD_BETA)
        "crd": {"batch_size": 256, "lr": 0.1},  # SOLVER.BATCH_SIZE, SOLVER.LR (CRD.FEAT.DIM stays 128)
        # not mdistiller's: DIST's configs/strategies/distill/resnet_dist.yaml (hunto/image_classification_sota),
        # tau 1, 8 GPUs x batch 32 at lr 0.1 (its other settings are this solver's)
        "dist": {"kd_temperature": 1.0, "batch_size": 256, "lr": 0.1},
        "ofd": {"batch_size": 128, "lr": 0.05, "beta": 1e-4},  # r50_mv1/ofd.yaml (its only one): OFD.LOSS.FEAT_WEIGHT
        # REVIEWKD.WARMUP_EPOCHS, STU_PREACT (REVIEWKD_WEIGHT per pair: feature_fusion.REVIEWKD_BETA)
        "reviewkd": {"batch_size": 256, "lr": 0.1, "reviewkd_warmup": 1, "reviewkd_student_preact": True},
    },
}
"""What a recipe sets for one method's runs beyond its own values: the published per-method settings
of the recipe's source (the methods not named keep their defaults, as mdistiller's AT does)."""


def recipe_defaults(recipe: str, student: str, distillation: str = "none") -> dict[str, Any]:
    """The values ``recipe`` gives the flags for a run of ``distillation`` training ``student``
    (flags not named keep their defaults, or the method's)."""
    values = dict(RECIPES[recipe])
    if student in RECIPE_STUDENT_LR.get(recipe, {}):
        values["lr"] = RECIPE_STUDENT_LR[recipe][student]
    values.update(RECIPE_METHODS.get(recipe, {}).get(distillation, {}))
    return values


def run_recipe(config: Any) -> dict[str, Any]:
    """``recipe_defaults`` for the run ``config`` (a ``Config`` or the parser's namespace), with
    logit standardisation's published temperature and weights on top where it asks for them."""
    values = recipe_defaults(config.recipe, config.student, config.distillation)
    if config.logit_standardization:
        values.update(standardization_defaults(config.recipe, config.distillation, config.teacher, config.student))
    return values


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
        raise UsageError(f"{flag} must be increasing positive epochs separated by commas, e.g. 150,180,210; got {text!r}")
    return values


def flag(default: Any, help: str, *, type: Optional[type] = None, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field that is also a command-line flag."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass
class Config:
    # The sections below are --help's groups (FLAG_GROUPS).
    # What to train
    distillation: str = flag("tucker", "distillation method ('none' trains without a teacher, e.g. the teacher itself)", choices=METHODS)
    dataset: str = flag("cifar100", "data set ('digits' is offline, built from scikit-learn's 8x8 digits; 'imagenet' and 'tiny-imagenet' are read from JPEG files under --data_dir, see README.md)", choices=DATASETS)
    teacher: str = flag("ResNet112", "teacher architecture ('resnet18', 'resnet34', 'resnet50' are torchvision's ImageNet ResNets, 'MobileNetV1' mdistiller's; 'ResNet50' is the CIFAR bottleneck network)", choices=MODELS)
    student: str = flag("ResNet56", "architecture being trained", choices=MODELS)
    # The distillation loss
    ce_weight: Optional[float] = flag(None, "weight of the cross-entropy: total = ce_weight * cross-entropy + beta * soft loss (default: 1; kd 0.1, as RepDistiller and mdistiller train it on CIFAR-100, 0.5 with --recipe imagenet)", type=float)
    beta: Optional[float] = flag(None, "weight of the distillation loss (default: the method's own: 125 for the original's feature-map losses; kd 0.9, fitnet 100, at 1000, sp 3000, pkt 30000, rkd 1, vid 1, crd 0.8, dkd 1, cc 0.02, nst 50, kdsvd 1, dist 2, ofd 0.001, reviewkd 5 (or per pair), ft 200, the published CIFAR-100 settings; ab and fsp have no loss after their initialisation phase)", type=float)
    loss: str = flag("l1", "featuremap, tucker, tucker_recomp, noise: distance between the L2-normalised, flattened maps or cores", choices=SOFT_LOSSES)
    feature_layer: Optional[int] = flag(None, "distilled stage, from 1 to the architecture's number of stages (0 is the stem; default 3, fitnet's hint layer 2): for the CIFAR ResNets 3 is layer3 (64x8x8 on 32x32 images), 2 is 32x16x16, 1 is 16x32x32", type=int)
    ranks: str = flag("BATCH_SIZE,32,8,8", "Tucker ranks for (batch, channel, height, width); BATCH_SIZE keeps the batch mode whole; xF is a fraction of the map's mode, e.g. BATCH_SIZE,x0.5,x1,x1 on any architecture")
    recomp_target: str = flag("teacher", "tucker_recomp: reconstruct the teacher map, the student map (projected on the teacher's factors), or both", choices=RECOMP_TARGETS)
    tucker_backend: str = flag("fast", "'fast': tensorly's result in closed form, from float64 Gram eigendecompositions; 'tensorly': tensorly's tucker, as the original called it", choices=BACKENDS)
    hooi_iters: int = flag(HOOI_MAX_SWEEPS, "most HOOI sweeps, on either back end (tensorly's n_iter_max; it stops earlier at its tolerance, 1e-4); 0: the SVD initialisation alone")
    tucker_core: str = flag("original", "tucker: 'original' compares cores with the full-rank modes (batch, spatial) rotated as tensorly rotates them, the study's loss; 'per_sample' leaves them unrotated, comparing each sample's own core (--tucker_backend fast only)", choices=TUCKER_CORES)
    kd_temperature: float = flag(4.0, "kd, dkd, dist, and the KD term of --kd_weight: softmax temperature")
    dkd_alpha: float = flag(1.0, "dkd: weight of the target-class term (TCKD)")
    dkd_beta: Optional[float] = flag(None, "dkd: weight of the non-target-class term (NCKD); default 8, or mdistiller's per pair: 2 for resnet56->resnet20 and resnet110->resnet32, 6 for vgg13->vgg8, vgg13->MobileNetV2, wrn_40_2->wrn_16_2 and wrn_40_2->wrn_40_1; on ImageNet 0.5 for resnet34->resnet18, 2 for resnet50->MobileNetV1", type=float)
    dkd_warmup: int = flag(20, "dkd: epochs over which the loss weight rises linearly to beta")
    crd_dim: int = flag(128, "crd: dimension of the contrastive embeddings")
    crd_negatives: int = flag(16384, "crd: negatives per sample, drawn from other classes")
    crd_temperature: float = flag(0.07, "crd: temperature of the contrastive softmax")
    crd_momentum: float = flag(0.5, "crd: momentum of the memory bank's update")
    rkd_distance: float = flag(25.0, "rkd: weight of the distance term")
    rkd_angle: float = flag(50.0, "rkd: weight of the angle term")
    init_epochs: int = flag(30, "ab, ft, fsp: epochs of RepDistiller's initialisation phase, trained before --epochs with the distillation loss alone (ft: the paraphraser's reconstruction) and their own optimiser at a constant lr (the run's --lr; ft 0.01 for a ResNet or WRN student); 0 skips it")
    reviewkd_warmup: int = flag(20, "reviewkd: epochs over which the loss weight rises linearly to beta")
    reviewkd_student_preact: bool = flag(False, "reviewkd: fuse the student's stage maps before their last ReLU (mdistiller's STU_PREACT; on with --recipe imagenet) rather than after it")
    noise_std: float = flag(1.0, "noise: standard deviation of the Gaussian noise added to the student's map")
    dist_beta: float = flag(1.0, "dist: weight of the inter-class relation (each sample's class probabilities, Pearson-correlated between the networks)")
    dist_gamma: float = flag(1.0, "dist: weight of the intra-class relation (each class's probabilities over the batch, Pearson-correlated)")
    kd_weight: Optional[float] = flag(None, "weight of a KD term (Hinton's, at --kd_temperature) added to any method's loss with a teacher: total = ce_weight * cross-entropy + beta * soft loss + kd_weight * KD (default 0: none); --distillation crd --kd_weight 1 is the CRD paper's CRD+KD", type=float)
    logit_standardization: bool = flag(False, "kd, dkd: z-score each sample's teacher and student logits over the classes before the temperature (Sun et al., CVPR 2024); the temperature and weights not given become that paper's for the pair (mostly T 2, KD weight 9)")
    # Optimisation (SGD with momentum; the original's cosine schedule, or the CRD benchmark's steps)
    recipe: str = flag("original", "training recipe, which sets the flags below unless they are given: 'original' is the study's (150 epochs, batch 512, lr 0.1, cosine); 'crd' is the CIFAR-100 benchmark's of RepDistiller and mdistiller (240 epochs, batch 64, lr 0.05 or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 students, x0.1 at epochs 150, 180, 210); 'imagenet' is mdistiller's ImageNet solver (100 epochs, batch 512, lr 0.2, weight decay 1e-4, x0.1 at epochs 30, 60, 90; kd: T 1, ce_weight 0.5, beta 0.5; dkd: T 1, warm-up 1 epoch; crd: batch 256, lr 0.1; dist: T 1, batch 256, lr 0.1, DIST's; ofd: batch 128, lr 0.05, beta 1e-4; reviewkd: batch 256, lr 0.1, warm-up 1 epoch, the student's pre-activation maps; --optimizer dot: delta 0.09)", choices=tuple(RECIPES))
    epochs: int = flag(150, "training epochs")
    batch_size: int = flag(512, "training batch size")
    lr: float = flag(0.1, "initial learning rate")
    momentum: float = flag(0.9, "SGD momentum")
    weight_decay: float = flag(5e-4, "SGD weight decay")
    optimizer: Optional[str] = flag(None, "'sgd' (the default), or 'dot': mdistiller's Distillation-Oriented Trainer, SGD whose momentum is --momentum - --dot_delta for the cross-entropy's gradient and --momentum + --dot_delta for the distillation loss's (methods with a teacher, one process)", type=str, choices=("sgd", "dot"))
    dot_delta: Optional[float] = flag(None, "dot: how far the two momenta lie from --momentum (default 0.075, mdistiller's CIFAR-100 DOT.DELTA; 0.09 with --recipe imagenet)", type=float)
    schedule: str = flag("cosine", "learning-rate schedule: 'cosine' anneals to 0 over the epochs; 'step' multiplies it by --lr_decay after each epoch in --lr_milestones", choices=("cosine", "step"))
    lr_milestones: str = flag("150,180,210", "step schedule: the epochs after which the learning rate decays")
    lr_decay: float = flag(0.1, "step schedule: the factor applied at each milestone")
    seed: int = flag(0, "seed for initialisation, data order and augmentation")
    max_batches: Optional[int] = flag(None, "stop each training epoch after this many batches (smoke runs)", type=int)
    sync_bn: bool = flag(False, "under torchrun: BatchNorm normalises with the statistics of the whole global batch (SyncBatchNorm) instead of each rank's part (what mdistiller and RepDistiller do); no effect in one process")
    # Where things are (all but experiment_name may change when a run resumes)
    data_dir: str = flag("data", "data sets are read from (and CIFAR downloaded into) this folder")
    experiments_dir: str = flag("experiments", "run folders are created under this folder")
    experiment_name: Optional[str] = flag(None, "run folder, relative to --experiments_dir (default: derived from the flags: cifar100/ResNet112-ResNet56/tucker/B-32-8-8/seed0 when no flag is given; every other flag given another value is added, except the speed and location flags, e.g. .../B-32-8-8/lr=0.01/seed0)", type=str)
    teacher_checkpoint: Optional[str] = flag(None, "teacher weights: ours or the original's ({'weights': state_dict}), a RepDistiller/mdistiller ckpt_epoch_*.pth, or a torchvision state dict; default: the plain run of --teacher with seed 0 and the same training flags under --experiments_dir (a run is tied to its teacher's content: a resumed run refuses a different file)", type=str)
    # Speed (none of these changes which run it is: a run may resume with other values)
    device: str = flag("auto", "'auto' (CUDA when present, else the CPU), 'cpu', 'cuda', 'cuda:1', ...")
    amp: str = flag("auto", "mixed precision: 'auto' is bf16 autocast on a GPU that supports it and off on the CPU", choices=("auto", "bf16", "off"))
    compile: bool = flag(False, "torch.compile the teacher and the student for the full training batch: one static graph each, compiled in the first steps; the epoch's last, smaller batch and the evaluation run eagerly, and the distillation losses stay eager")
    compile_mode: Optional[str] = flag(None, "--compile: torch.compile's mode (torch's own when not given); on a GPU, 'reduce-overhead' and 'max-autotune' replay the graphs as CUDA graphs, which cut the launch overhead of short steps", type=str, choices=COMPILE_MODES)
    channels_last: bool = flag(True, "channels-last memory format for the models and batches")
    eval_batch_size: int = flag(1024, "batch size for evaluation")
    threads: Optional[int] = flag(None, "CPU threads for torch (default: torch's choice, one per core); they sleep while they wait for each other unless OMP_WAIT_POLICY says otherwise (README, Speed)", type=int)
    deterministic: bool = flag(False, "deterministic algorithms (torch and cuDNN) for bit-for-bit reproducible runs, at their speed cost")
    evaluate: Optional[str] = flag(None, "evaluate this checkpoint of --student (ours, the original's or a RepDistiller/mdistiller ckpt_epoch_*.pth) on --dataset's test split, print its accuracy and loss, and exit", type=str)
    workers: Optional[int] = flag(None, "imagenet, tiny-imagenet: DataLoader processes decoding the JPEGs (default: min(8, the CPUs this process may use)); 0 decodes in the training process. CIFAR and digits are kept on the device and need none", type=int)
    log_every: int = flag(100, "print a progress line (step, images/s, losses, the epoch's ETA) every this many training steps; 0: none")
    tensorboard_every: int = flag(0, "write the cross-entropy and distillation loss of every this many training steps to TensorBoard event files in the run folder's steps/, beside the per-epoch curves that every run writes (README, TensorBoard); they are read from the device only where a progress line or a checkpoint reads it anyway, so a step never waits for them; 0: per-epoch curves only")
    checkpoint_every: int = flag(1000, "save last.pt within an epoch every this many training steps, so that a killed run resumes from there (five times an ImageNet epoch at batch 256; CIFAR and digits epochs have fewer steps, so they save once an epoch); 0: only at the end of each epoch. A stop signal saves where the run stopped either way")

    def validate(self) -> None:
        """Reject values that parse but make no sense, naming the flag and what would be valid."""
        for name in ("epochs", "batch_size", "eval_batch_size", "max_batches", "threads", "crd_dim", "crd_negatives"):
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
        for name in ("lr", "kd_temperature", "crd_temperature"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"--{name} must be a positive number; got {value}")
        for name in ("beta", "ce_weight", "momentum", "weight_decay", "noise_std", "hooi_iters", "dkd_alpha", "dkd_beta",
                     "dkd_warmup", "rkd_distance", "rkd_angle", "dist_beta", "dist_gamma", "kd_weight", "dot_delta",
                     "init_epochs", "reviewkd_warmup"):
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


IO_ERROR = 74  # sysexits' EX_IOERR: a write failed (full disk, permissions)

RUNTIME_FIELDS = frozenset(
    {"deterministic", "evaluate", "device", "amp", "compile", "compile_mode", "channels_last", "eval_batch_size", "threads",
     "data_dir", "experiments_dir", "teacher_checkpoint", "workers", "log_every", "tensorboard_every", "checkpoint_every"}
)
"""Fields that may differ when a run resumes: they change speed or location, not the experiment."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit status 2), not the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
  75  stopped by SIGUSR1 or SIGTERM: rerun the same command to resume"""

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
    parser = OneLineParser(prog=prog, description=description, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser
    for item in dataclasses.fields(Config):
        meta = item.metadata
        if item.name in FLAG_GROUPS:
            group = parser.add_argument_group(FLAG_GROUPS[item.name])
        if isinstance(item.default, bool):
            group.add_argument(f"--{item.name}", action=argparse.BooleanOptionalAction, default=item.default,
                               help=flag_help(item))
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


CONFIG_HELP = ("read training flags from a YAML (or .json) file: keys are the flag names without '--', as in a run's "
               "config.json, e.g. 'lr: 0.05'; flags given on the command line override the file's. The run is the "
               "one those flags give on the command line (its folder, its config.json)")


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
        from toolbox.config_file import read_flags  # PyYAML loads only for a file (and config_file imports this module)

        try:
            from_file = read_flags(Path(first.config))
        except UsageError as error:
            parser.error(str(error))
        parser.set_defaults(**from_file)
        first, _ = parser.parse_known_args(argv)
    # the recipe, the student and the method (from the command line, else the file) decide the other defaults
    parser.set_defaults(**{**run_recipe(first), **from_file})
    return parser.parse_args(argv)


def wait_passively() -> None:
    """Let torch's CPU threads sleep, not spin, while they wait for each other: on a CPU that
    another busy process shares, spinning threads make training several times slower; waiting
    passively keeps the speed of the cores left (bench/RESULTS.md, "Threads on a shared CPU").
    OpenMP reads this once, when torch loads: call it before. A value already set wins, and a
    SLURM job given its own CPUs keeps OpenMP's default (a short spin, then sleep): on cores that
    nothing else uses, spinning is faster."""
    if "SLURM_CPUS_PER_TASK" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


CLOSED_PIPE = 141  # what a shell reports for a process killed by SIGPIPE


def quiet_on_closed_pipe(main: Callable[[], int]) -> int:
    """Run a script's ``main``; when the reader of its output has gone (``| head``), end quietly
    instead of with a BrokenPipeError traceback (Python's documentation, "Note on SIGPIPE")."""
    try:
        status = main()
        sys.stdout.flush()  # inside the try: a pending write can fail here too
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's last flush does not fail again
        return CLOSED_PIPE


def main_guard(run, *args) -> int:
    """Run an entry point, turning the project's errors into one line on stderr and an exit code
    (README.md lists them)."""
    from toolbox.errors import DivergedError, Interrupted, IOFailure

    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun every rank meets the same error: rank 0 says it
    try:
        run(*args)
    except (UsageError, DivergedError, Interrupted, IOFailure) as error:
        if speaks:
            print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # not a failed write of the run's: quiet_on_closed_pipe ends the script
        raise
    except RuntimeError as error:
        if not lost_rank(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: rank {os.environ.get('RANK', '0')} lost another rank of this run ({first_line[-200:]}); the run "
              "folder holds its last save: rerun the same command to resume", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a folder that became read-only, ...
        if speaks:
            print(f"error: {os_error_line(error)}; fix that (free space, permissions) and rerun the same "
                  f"command: the run resumes from its last save", file=sys.stderr)
        return IO_ERROR
    return 0


def lost_rank(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective failing because another rank of a data-parallel run died
    (gloo and NCCL raise RuntimeErrors): every survivor then says so in one line, not a traceback."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed

    text = str(error)
    return isinstance(error, torch.distributed.DistError) or any(
        clue in text for clue in ("Connection reset by peer", "Connection closed by peer", "NCCL", "gloo"))


def os_error_line(error: OSError) -> str:
    """``path: reason``, the part of a failed write's one-line message that names it."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"
