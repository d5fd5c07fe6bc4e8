"""The field's architectures and recipe in training: cross-architecture pairs end to end on digits,
the CRD recipe and its step schedule, the evaluation entry, the deterministic switch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, run_training
from toolbox.config import parse_config
from toolbox.config.choices import format_ranks, parse_ranks
from toolbox.errors import UsageError
from toolbox.methods.base import connector
from toolbox.models import build_model, stage_shapes
from toolbox.rundir import default_teacher_checkpoint, experiment_name, resolve, teacher_config
from toolbox.training.prepare import make_scheduler
from toolbox.tucker import absolute_ranks, tucker

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("wrn_40_2", "ShuffleV1", "BATCH_SIZE,32,8,8")]  # resnet32x4->resnet8x4, vgg13->MobileNetV2: test_benchmark.py
METHODS = [
    ["--distillation", "featuremap"],
    ["--distillation", "tucker"],
    ["--distillation", "tucker_recomp", "--recomp_target", "both"],
]


@pytest.fixture(scope="module")
def field_teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained teachers saved as RepDistiller saves its ckpt_epoch_240.pth (weights under "model")."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for teacher, _, _ in PAIRS:
        torch.manual_seed(0)
        paths[teacher] = folder / f"{teacher}.pth"
        torch.save(
            {
                "model": build_model(teacher, 10).state_dict(),
                "epoch": 240,
                "accuracy": torch.tensor(10.0),
                "optimizer": {"state": {}},
            },
            paths[teacher],
        )
    return paths


@pytest.mark.parametrize("method", METHODS, ids=lambda m: "-".join(m[1::2]))
@pytest.mark.parametrize("teacher, student, ranks", PAIRS, ids=lambda v: v if "," not in v else "")
def test_cross_architecture_pairs_train_end_to_end(
    tmp_path: Path, field_teachers: dict[str, Path], teacher: str, student: str, ranks: str, method: list[str]
) -> None:
    metrics = run_training(
        tmp_path,
        *method,
        "--teacher",
        teacher,
        "--student",
        student,
        "--ranks",
        ranks,
        "--teacher_checkpoint",
        str(field_teachers[teacher]),
        "--epochs",
        "1",
        "--max_batches",
        "3",
    )
    (run,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    assert {"config.json", "last.pt", f"{student}.pth", "Loss.png", "Accuracy.png"} <= {p.name for p in run.iterdir()}
    assert metrics["train_soft_loss"][0] > 0 and len(metrics["test_acc"]) == 1


@pytest.mark.parametrize(
    "student_shape, teacher_shape, kind",
    [
        ((64, 8, 8), (64, 8, 8), torch.nn.Identity),
        ((32, 8, 8), (64, 8, 8), torch.nn.Conv2d),
        ((960, 4, 4), (128, 8, 8), torch.nn.ConvTranspose2d),
        ((32, 16, 16), (64, 8, 8), torch.nn.Conv2d),
        ((32, 6, 6), (64, 4, 4), torch.nn.Conv2d),
    ],
)
def test_the_connector_maps_the_students_stage_onto_the_teachers(student_shape, teacher_shape, kind) -> None:
    module = connector(student_shape, teacher_shape)
    assert type(module) is kind
    assert module(torch.randn(2, *student_shape)).shape == (2, *teacher_shape)


def test_a_smaller_student_map_than_can_be_mapped_is_a_clear_error() -> None:
    with pytest.raises(
        UsageError, match="--feature_layer: the student's map 32x2x2 cannot be mapped onto the teacher's 64x8x8"
    ):
        connector((32, 2, 2), (64, 8, 8))


def test_feature_layer_is_checked_against_both_architectures() -> None:
    assert (
        len(stage_shapes("ResNet50")) - 1 == 4
        and resolve(
            parse_config(["--student", "ResNet50", "--teacher", "ResNet50", "--feature_layer", "4"])
        ).feature_layer
        == 4
    )
    with pytest.raises(
        UsageError, match="--feature_layer must be from 0 .the stem. to 3 for ResNet50 and ResNet112; got 4"
    ):
        resolve(parse_config(["--student", "ResNet50", "--feature_layer", "4"]))  # the teacher ResNet112 has 3 stages


# ---------------------------------------------------------------- the recipes


def test_the_crd_recipe_sets_its_defaults_and_explicit_flags_win() -> None:
    crd = parse_config(["--recipe", "crd", "--student", "resnet8x4"])
    assert (crd.epochs, crd.batch_size, crd.lr, crd.schedule, crd.lr_milestones, crd.lr_decay) == (
        240,
        64,
        0.05,
        "step",
        "150,180,210",
        0.1,
    )
    assert parse_config(["--recipe", "crd", "--student", "ShuffleV2"]).lr == 0.01
    assert parse_config(["--recipe", "crd", "--student", "ShuffleV2", "--lr", "0.02"]).lr == 0.02
    assert experiment_name(crd) == "cifar100/ResNet112-resnet8x4/tucker/B-32-8-8/recipe=crd/seed0"
    assert experiment_name(parse_config(["--recipe", "crd", "--epochs", "100"])).endswith(
        "/recipe=crd,epochs=100/seed0"
    )
    original = parse_config([])
    assert (original.epochs, original.batch_size, original.lr, original.schedule) == (150, 512, 0.1, "cosine")


def test_a_crd_student_finds_the_teacher_trained_with_the_teachers_crd_learning_rate() -> None:
    student = parse_config(["--recipe", "crd", "--teacher", "resnet32x4", "--student", "ShuffleV1"])
    assert student.lr == 0.01
    teacher_run = parse_config(["--recipe", "crd", "--distillation", "none", "--student", "resnet32x4"])
    assert default_teacher_checkpoint(student).parent.as_posix().endswith(experiment_name(teacher_run))


IMAGENET_PAIRS = [("resnet34", "resnet18"), ("resnet50", "MobileNetV1")]
SOLVER = {
    "epochs": 100,
    "batch_size": 512,
    "lr": 0.2,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "step",
    "lr_milestones": "30,60,90",
    "lr_decay": 0.1,
}
"""mdistiller's configs/imagenet/*/kd.yaml, SOLVER."""
IMAGENET_METHODS = {  # mdistiller's configs/imagenet/<pair>/<method>.yaml over its cfg.py defaults, per pair
    "kd": lambda pair: {"kd_temperature": 1.0, "ce_weight": 0.5, "beta": 0.5},
    "dkd": lambda pair: {
        "kd_temperature": 1.0,
        "dkd_warmup": 1,
        "ce_weight": 1.0,
        "beta": 1.0,
        "dkd_alpha": 1.0,
        "dkd_beta": {"resnet34": 0.5, "resnet50": 2.0}[pair[0]],
    },
    "crd": lambda pair: {"batch_size": 256, "lr": 0.1, "crd_dim": 128, "beta": 0.8, "ce_weight": 1.0},
    "tucker": lambda pair: {"beta": 125.0, "ce_weight": 1.0},  # not in mdistiller: the study's weights, the solver's
}


def imagenet(*flags: str):
    return resolve(parse_config(["--recipe", "imagenet", "--dataset", "imagenet", *flags]))


@pytest.mark.parametrize("method", IMAGENET_METHODS)
@pytest.mark.parametrize("teacher, student", IMAGENET_PAIRS, ids=[f"{t}-{s}" for t, s in IMAGENET_PAIRS])
def test_the_imagenet_recipe_resolves_to_mdistillers_settings(teacher: str, student: str, method: str) -> None:
    config = imagenet("--distillation", method, "--teacher", teacher, "--student", student)
    expected = {**SOLVER, **IMAGENET_METHODS[method]((teacher, student))}
    assert {name: getattr(config, name) for name in expected} == expected
    # the recipe's values are the run's defaults: its name says recipe=imagenet, and nothing more
    assert config.experiment_name.endswith("/recipe=imagenet/seed0"), config.experiment_name
    assert config.experiment_name.startswith(f"imagenet/{teacher}-{student}/{method}/")


def test_crds_embeddings_take_the_pooled_widths_mdistiller_configures() -> None:
    # configs/imagenet/r34_r18/crd.yaml: CRD.FEAT.STUDENT_DIM 512, TEACHER_DIM 512; r50_mv1: 1024, 2048
    pooled = {
        arch: stage_shapes(arch, image_size=224)[-1][0] for arch in ("resnet18", "resnet34", "MobileNetV1", "resnet50")
    }
    assert pooled == {"resnet18": 512, "resnet34": 512, "MobileNetV1": 1024, "resnet50": 2048}


def test_explicit_flags_win_over_the_imagenet_recipe() -> None:
    config = imagenet(
        "--distillation",
        "kd",
        "--teacher",
        "resnet34",
        "--student",
        "resnet18",
        "--kd_temperature",
        "4",
        "--ce_weight",
        "0.1",
        "--lr",
        "0.1",
    )
    assert (config.kd_temperature, config.ce_weight, config.beta, config.lr, config.epochs) == (4.0, 0.1, 0.5, 0.1, 100)
    assert (
        config.experiment_name
        == "imagenet/resnet34-resnet18/kd/ce_weight=0.1,kd_temperature=4,recipe=imagenet,lr=0.1/seed0"
    )
    crd = imagenet("--distillation", "crd", "--teacher", "resnet50", "--student", "MobileNetV1", "--batch_size", "512")
    assert (crd.batch_size, crd.lr) == (512, 0.1)
    assert crd.experiment_name == "imagenet/resnet50-MobileNetV1/crd/recipe=imagenet,batch_size=512/seed0"


@pytest.mark.parametrize("method", ["kd", "crd"])
def test_an_imagenet_students_teacher_run_has_the_recipes_plain_values(method: str) -> None:
    student = parse_config(
        [
            "--recipe",
            "imagenet",
            "--dataset",
            "imagenet",
            "--distillation",
            method,
            "--teacher",
            "resnet34",
            "--student",
            "resnet18",
        ]
    )
    teacher = teacher_config(student)
    assert {name: getattr(teacher, name) for name in SOLVER} == SOLVER  # crd's batch 256 and lr 0.1 are crd's own
    assert (teacher.kd_temperature, teacher.ce_weight, teacher.beta) == (4.0, None, None)
    plain = parse_config(
        ["--recipe", "imagenet", "--dataset", "imagenet", "--distillation", "none", "--student", "resnet34"]
    )
    assert experiment_name(teacher) == experiment_name(plain) == "imagenet/teacher/resnet34/recipe=imagenet/seed0"


def test_the_step_schedule_decays_after_each_milestone_as_repdistiller() -> None:
    config = parse_config(["--recipe", "crd", "--lr_milestones", "2,4", "--epochs", "6"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(config, optimizer)
    lrs = []
    for epoch in range(1, 7):  # RepDistiller: lr * 0.1 ** (number of milestones below this 1-based epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(0.05 * 0.1 ** sum(epoch > m for m in (2, 4)))
        optimizer.step()  # an epoch of training
        scheduler.step()


@pytest.mark.parametrize("value", ["", "0,10", "10,5", "a,b"])
def test_bad_milestones_are_one_line_errors(value: str) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--lr_milestones", value])


# ---------------------------------------------------------------- evaluation, determinism


def test_evaluate_prints_the_accuracy_the_run_recorded(tmp_path: Path) -> None:
    metrics = run_training(
        tmp_path,
        "--distillation",
        "none",
        "--student",
        "ResNetBaby",
        "--epochs",
        "2",
        "--max_batches",
        "3",
        "--deterministic",
        "--experiment_name",
        "r",
    )
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["deterministic"] is True
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tucker_distillation.py"),
            *TINY,
            "--student",
            "ResNetBaby",
            "--evaluate",
            str(tmp_path / "r" / "ResNetBaby.pth"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"test accuracy {metrics['best_test_acc']:.2f}%" in result.stdout
    wrong = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tucker_distillation.py"),
            *TINY,
            "--student",
            "resnet20",
            "--evaluate",
            str(tmp_path / "r" / "ResNetBaby.pth"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (
        wrong.returncode == 2
        and len(wrong.stderr.strip().splitlines()) == 1
        and "does not fit resnet20" in wrong.stderr
    )


# ---------------------------------------------------------------- Tucker ranks on any map


@pytest.mark.parametrize(
    "arch, layer",
    [("resnet20", 1), ("resnet32x4", 3), ("vgg13", 4), ("ShuffleV1", 3), ("ResNet50", 4), ("MobileNetV2", 4)],
)
def test_relative_ranks_fit_every_stage_of_every_architecture(arch: str, layer: int) -> None:
    shape = stage_shapes(arch)[layer]
    ranks = absolute_ranks(parse_ranks("BATCH_SIZE,x0.5,x1,x1"), shape)
    assert ranks == (None, max(1, round(shape[0] / 2)), shape[1], shape[2])
    maps = torch.randn(6, *shape)
    core, factors = tucker(maps, ranks)
    assert core.shape == (6, *ranks[1:]) and factors[1].shape == (shape[0], ranks[1])


def test_relative_ranks_round_trip_and_name_runs() -> None:
    assert format_ranks(parse_ranks("BATCH_SIZE,x0.25,x1,8")) == "BATCH_SIZE,x0.25,x1,8"
    assert experiment_name(parse_config(["--ranks", "BATCH_SIZE,x0.5,x1,x1"])).endswith("/tucker/B-x0.5-x1-x1/seed0")


@pytest.mark.parametrize(
    "text, message",
    [
        ("BATCH_SIZE,x0,8,8", "a relative channel rank is x followed by a fraction"),
        ("BATCH_SIZE,x1.5,8,8", "in \\(0, 1\\]"),
        ("BATCH_SIZE,xhalf,8,8", "e.g. x0.5"),
    ],
)
def test_bad_relative_ranks_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_ranks(text)


def test_a_rank_too_large_for_a_map_names_the_map() -> None:
    with pytest.raises(
        UsageError, match="the height rank 8 exceeds the feature map's height size 4 \\(map shape 512x4x4\\)"
    ):
        absolute_ranks(parse_ranks("BATCH_SIZE,32,8,8"), stage_shapes("vgg13")[3])
