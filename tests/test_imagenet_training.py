"""Training on JPEG files: every method on ImageNet networks, torchvision-format teachers, --evaluate,
and runs stopped or killed within an epoch that resume to the weights of an uninterrupted run.

The data sets are written by the tests: 4 classes of 64x64 JPEGs in ImageNet's and Tiny-ImageNet's
layouts. Tiny-ImageNet's 64-pixel inputs keep the runs of every method fast; ImageNet's are
resized to 224 pixels, as on the real data set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import forget_stop_signal, patience, run_training
from toolbox.config import parse_config
from toolbox.config.choices import METHODS
from toolbox.errors import Interrupted
from toolbox.training import Trainer, evaluate_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 2
FAST = [
    "--batch_size",
    "4",
    "--eval_batch_size",
    "8",
    "--workers",
    "0",
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--log_every",
    "1",
]


def write_jpeg(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both layouts of the same 4 classes: 8 training and 2 validation images each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    tiny = root / "tiny-imagenet-200"
    (tiny / "val").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    annotations = []
    for wnid in WNIDS:
        for index in range(TRAIN_PER_CLASS):
            write_jpeg(root / "imagenet" / "train" / wnid / f"{wnid}_{index}.JPEG", rng)
            write_jpeg(tiny / "train" / wnid / "images" / f"{wnid}_{index}.JPEG", rng)
        for index in range(VAL_PER_CLASS):
            name = f"val_{wnid}_{index}.JPEG"
            write_jpeg(root / "imagenet" / "val" / wnid / name, rng)
            write_jpeg(tiny / "val" / "images" / name, rng)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (tiny / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained torchvision ResNets for 4 classes, saved as torchvision saves its weights: bare state dicts."""
    folder = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    for name in ("resnet18", "resnet34"):
        torch.save(getattr(torchvision.models, name)(num_classes=len(WNIDS)).state_dict(), folder / f"{name}.pth")
    return folder


def run_flags(data_dir: Path, experiments: Path, *flags: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--experiments_dir", str(experiments), *FAST, *flags]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_imagenet_networks_from_a_torchvision_teacher(
    method: str, data_dir: Path, teachers: Path, tmp_path: Path
) -> None:
    flags = run_flags(
        data_dir,
        tmp_path,
        "--dataset",
        "tiny-imagenet",
        "--distillation",
        method,
        "--teacher",
        "resnet18",
        "--student",
        "resnet18",
        "--teacher_checkpoint",
        str(teachers / "resnet18.pth"),
        "--ranks",
        "BATCH_SIZE,x0.5,x1,x1",
        "--max_batches",
        "1",
        "--experiment_name",
        "run",
        "--init_epochs",
        "1",
    )
    metrics = train(parse_config(flags))
    assert {"config.json", "metrics.json", "last.pt", "resnet18.pth", "Loss.png", "Accuracy.png"} <= {
        path.name for path in (tmp_path / "run").iterdir()
    }
    soft = [record["train_soft_loss"] for record in metrics.get("phase_history", [])][:1] or metrics["train_soft_loss"]
    assert np.isfinite(soft[0]) and (soft[0] == 0) == (method == "none")  # AB's and FSP's loss: in their initialisation
    assert metrics["test_acc"][0] >= 0 and np.isfinite(metrics["test_loss"][0])


def test_imagenet_images_give_224_pixel_maps_through_workers_and_evaluate_reads_the_checkpoint(
    data_dir: Path, teachers: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    flags = run_flags(
        data_dir,
        tmp_path,
        "--dataset",
        "imagenet",
        "--distillation",
        "tucker",
        "--teacher",
        "resnet34",
        "--student",
        "resnet18",
        "--teacher_checkpoint",
        str(teachers / "resnet34.pth"),
        "--ranks",
        "BATCH_SIZE,x0.5,x1,x1",
        "--max_batches",
        "2",
        "--workers",
        "1",
        "--experiment_name",
        "run",
    )
    metrics = train(parse_config(flags))
    assert np.isfinite(metrics["train_soft_loss"][0]) and metrics["train_soft_loss"][0] > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["feature_shapes"] == {"teacher": [256, 14, 14], "student": [256, 14, 14]}
    assert "step 1/2" in capsys.readouterr().out  # the progress line of --log_every 1
    result = evaluate_checkpoint(parse_config([*flags, "--evaluate", str(tmp_path / "run" / "resnet18.pth")]))
    assert result["test_acc"] == pytest.approx(metrics["test_acc"][0]) and result["test_loss"] == pytest.approx(
        metrics["test_loss"][0]
    )


def stop_after(monkeypatch: pytest.MonkeyPatch, steps: int, how: str) -> None:
    """Stop the run during its ``steps``-th step: a SIGTERM (handled: the run saves where it is), or
    an exception that no handler sees (a killed process: only the checkpoints already written remain)."""
    original, taken = Trainer.step, []

    def step(self: Trainer, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = original(self, *batch)
        taken.append(1)
        if len(taken) == steps:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return result

    monkeypatch.setattr(Trainer, "step", step)


def final_state(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def assert_same_run(resumed: dict, uninterrupted: dict, resumed_run: Path, uninterrupted_run: Path) -> None:
    for key in ("train_hard_loss", "train_soft_loss", "train_acc", "test_loss", "test_acc"):
        assert resumed[key] == uninterrupted[key], key
    a, b = final_state(resumed_run)["student"], final_state(uninterrupted_run)["student"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_run_stopped_within_an_epoch_of_jpegs_resumes_to_the_uninterrupted_weights(
    data_dir: Path, teachers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [
        "--dataset",
        "tiny-imagenet",
        "--distillation",
        "crd",
        "--teacher",
        "resnet18",
        "--student",
        "resnet18",
        "--teacher_checkpoint",
        str(teachers / "resnet18.pth"),
        "--epochs",
        "2",
        "--max_batches",
        "3",
        "--deterministic",
        "--experiment_name",
        "run",
    ]
    uninterrupted = train(parse_config(run_flags(data_dir, tmp_path / "a", *flags)))
    stop_after(monkeypatch, 5, "signal")  # step 2 of the second epoch
    with pytest.raises(Interrupted, match="holds epoch 2 up to batch 2"):
        train(parse_config(run_flags(data_dir, tmp_path / "b", *flags)))
    assert final_state(tmp_path / "b" / "run")["position"]["batch"] == 2
    monkeypatch.undo()
    forget_stop_signal()
    resumed = train(parse_config(run_flags(data_dir, tmp_path / "b", *flags)))
    assert_same_run(resumed, uninterrupted, tmp_path / "b" / "run", tmp_path / "a" / "run")


def test_a_killed_digits_run_resumes_from_its_last_mid_epoch_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [
        "--distillation",
        "none",
        "--student",
        "ResNetBaby",
        "--epochs",
        "2",
        "--max_batches",
        "4",
        "--checkpoint_every",
        "2",
        "--deterministic",
        "--device",
        "cpu",
        "--experiment_name",
        "run",
    ]
    uninterrupted = run_training(tmp_path / "a", *flags)
    stop_after(monkeypatch, 7, "kill")  # step 3 of the second epoch: the checkpoint of step 2 remains
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "b", *flags)
    state = final_state(tmp_path / "b" / "run")
    assert state["position"]["batch"] == 2 and len(state["history"]["test_acc"]) == 1
    monkeypatch.undo()
    resumed = run_training(tmp_path / "b", *flags)
    assert_same_run(resumed, uninterrupted, tmp_path / "b" / "run", tmp_path / "a" / "run")


def test_a_bad_image_is_one_line_and_a_bad_validation_image_costs_no_training(data_dir: Path, tmp_path: Path) -> None:
    """A file in train/ that is no image: one line naming it, exit 2, through worker processes too.
    One in val/: met in the epoch's test, after the epoch's training was saved (last.pt at its last
    batch), so that the rerun, once the file is replaced, tests the epoch without training it again."""
    data = tmp_path / "data"
    shutil.copytree(data_dir / "imagenet", data / "imagenet")
    script = [sys.executable, str(ROOT / "tucker_distillation.py"), *run_flags(data, tmp_path / "e")]
    plain = [
        *script,
        "--dataset",
        "imagenet",
        "--distillation",
        "none",
        "--student",
        "resnet18",
        "--workers",
        "2",
        "--experiment_name",
        "r",
    ]
    bad = data / "imagenet" / "train" / WNIDS[1] / "bad.JPEG"
    bad.write_text("not an image")
    result = subprocess.run(plain, capture_output=True, text=True, timeout=patience(300))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {bad} cannot be read as an image (cannot identify image file")
    bad.unlink()

    val = data / "imagenet" / "val" / WNIDS[2] / f"val_{WNIDS[2]}_0.JPEG"
    good = val.read_bytes()
    val.write_bytes(good[:50])
    result = subprocess.run(plain, capture_output=True, text=True, timeout=patience(300))
    assert result.returncode == 2 and f"error: {val} cannot be read as an image" in result.stderr, result.stderr
    saved = torch.load(tmp_path / "e" / "r" / "last.pt", weights_only=True)
    steps = TRAIN_PER_CLASS * len(WNIDS) // 4  # --batch_size 4
    assert saved["position"]["batch"] == steps and saved["history"]["test_acc"] == []
    val.write_bytes(good)
    result = subprocess.run(plain, capture_output=True, text=True, timeout=patience(300))
    assert result.returncode == 0, result.stderr
    assert f"after epoch 0 of 1, at batch {steps} of epoch 1" in result.stdout and "step 1/" not in result.stdout
