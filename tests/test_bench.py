"""Smoke test of the benchmarks: each runs with --quick as a user would run it, and its table and
JSON have the expected shape. Speed goals belong to the full benchmarks, not to a timed test; the
one numeric check is that our decomposition's error matches tensorly's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import patience

ROOT = Path(__file__).resolve().parent.parent
ERROR_TOLERANCE = 1e-5


def run_benchmark(script: str, json_path: Path, *flags: str) -> tuple[str, dict[str, Any]]:
    """Run ``bench/<script> --quick`` on the CPU; its stdout and its JSON file. One thread, so
    that tests of others running at the same time do not stall it (oversubscribed OpenMP threads
    wait on each other)."""
    command = [
        sys.executable,
        str(ROOT / "bench" / script),
        "--quick",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
        str(json_path),
        *flags,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=patience(120))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, json.loads(json_path.read_text())


def check_common(stdout: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """What both benchmarks print and write: tables, the machine record, a final headline line."""
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith("headline: ") and lines[-1] == f"headline: {report['headline']}"
    assert {"date", "cpu", "cores", "torch", "torchvision", "tensorly", "numpy", "torch_threads"} <= set(
        report["machine"]
    )
    assert report["machine"]["torch_threads"] == 1
    assert {"load_average_start", "load_average_end", "other_processes_cpu_share"} <= set(report["load"])
    for title, rows in report["tables"].items():
        assert title in stdout and rows
    return [row for rows in report["tables"].values() for row in rows]


def test_bench_tucker_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark("bench_tucker.py", tmp_path / "tucker.json")
    rows = check_common(stdout, report)
    assert {row["op"] for row in rows} == {
        "decompose",
        "project",
        "recompose",
        "loss featuremap",
        "loss tucker",
        "loss tucker_recomp",
    }
    for row in rows:
        assert row["ours_ms"] > 0
        if row["op"] != "loss featuremap":  # ours only: the baseline of the Tucker losses
            assert row["tensorly_ms"] > 0 and row["tensorly_speedup"] > 0
    decompositions = [row for row in rows if row["op"] == "decompose"]
    assert {row["rank"] for row in decompositions} == set(report["settings"]["ranks"])
    for row in decompositions:
        assert 0 < row["ours_error"] < 1
        assert row["ours_error"] == pytest.approx(row["tensorly_error"], abs=ERROR_TOLERANCE)
        assert row["ours_error"] == pytest.approx(row["hosvd_error"], abs=ERROR_TOLERANCE)
    assert "faster than tensorly's tucker" in report["headline"]


def test_bench_step_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark("bench_step.py", tmp_path / "step.json")
    check_common(stdout, report)
    steps, passes, data, pairs = report["tables"].values()
    assert [row["pair"] for row in pairs] == [
        "resnet32x4 -> resnet8x4",
        "vgg13 -> MobileNetV2",
        "wrn_40_2 -> ShuffleV1",
    ]
    assert all(row["images_per_s"] > 0 for row in pairs)
    assert [row["method"] for row in steps] == ["featuremap", "tucker", "tucker_recomp"]
    for row in steps:
        for pipeline in ("ours", "ours_contiguous", "reference"):
            assert row[f"{pipeline}_images_per_s"] > 0
        assert row["speedup"] > 0 and row["channels_last_gain"] > 0
        assert ("overhead_vs_featuremap" in row) == (row["method"] != "featuremap")
    assert [row["pass"] for row in passes] == ["teacher forward", "student forward and backward"]
    assert all(row["channels_last_ms"] > 0 and row["contiguous_ms"] > 0 for row in passes)
    assert data[0]["ours_ms_per_batch"] > 0 and data[0]["reference_ms_per_batch"] > 0
    assert "overhead over featuremap" in report["headline"]


def test_bench_epoch_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark(
        "bench_epoch.py", tmp_path / "epoch.json", "--methods", "none", "crd", "--amp", "off"
    )
    (rows,) = report["tables"].values()
    check_common(stdout, report)
    assert [(row["method"], row["amp"], row["compile"]) for row in rows] == [
        ("none", "off", "no"),
        ("crd", "off", "no"),
    ]
    for row in rows:
        assert 0 < row["test_s"] < row["epoch_s"] and row["train_images_per_s"] > 0
        cifar_epoch_s = (
            row["run_hours"] * 3600 / report["settings"]["run_epochs"]
        )  # extrapolated from the measured rates
        assert cifar_epoch_s == pytest.approx(
            50_000 / row["train_images_per_s"] + row["test_s"] * 10_000 / 64, rel=1e-6
        )
    assert "CIFAR epochs on cpu" in report["headline"]


def test_bench_imagenet_input_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark(
        "bench_imagenet_input.py", tmp_path / "input.json", "--workers", "0"
    )  # workers: test_imagenet_data.py
    rows = check_common(stdout, report)
    assert [row["split"] for row in rows] == ["train (RandomResizedCrop + flip)", "eval (Resize + CenterCrop)"]
    for row in rows:
        assert (
            row["images"] == 12
            and row["ours_images_per_s"] > 0
            and row["torchvision_images_per_s"] > 0
            and row["speedup"] > 0
        )
    assert "torchvision's default on training" in report["headline"]


def test_bench_imagenet_share_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark("bench_imagenet_share.py", tmp_path / "share.json")
    losses, steps = report["tables"].values()
    check_common(stdout, report)
    assert [row["maps"] for row in losses] == ["256x14x14", "1024x14x14"]  # resnet34's and resnet50's layer3 at 224
    assert all(row["featuremap_ms"] > 0 and row["tucker_ms"] > 0 for row in losses)
    (step,) = steps
    assert step["pair"] == "resnet34 -> resnet18" and step["tucker_share"] == pytest.approx(
        step["tucker_loss_ms"] / step["tucker_step_ms"]
    )
    assert "of a resnet34 -> resnet18 step at batch 2 on cpu" in report["headline"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch was built without torch.distributed")
def test_bench_ranks_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark("bench_ranks.py", tmp_path / "ranks.json", "--repeats", "1")
    rows = check_common(stdout, report)
    assert [(row["candidate"], row["processes"], row["threads"]) for row in rows] == [
        ("one process", 1, 2),
        ("torchrun, 1 rank", 1, 2),
        ("torchrun, 2 ranks", 2, 1),
    ]
    assert rows[0]["vs_one_process"] == 1.0
    for row in rows:
        assert row["step_ms"] > 0 and row["images_per_s"] == pytest.approx(16 / (row["step_ms"] / 1000))
    assert "2 ranks take" in report["headline"]


def test_bench_grid_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark("bench_grid.py", tmp_path / "grid.json", "--modes", "eager", "cudagraphs")
    grid, steps = report["tables"].values()
    check_common(stdout, report)
    assert [(row["processes"], row["mps"]) for row in grid] == [(1, "n/a"), (2, "n/a")]  # no MPS on the CPU
    assert grid[0]["ratio"] == 1.0
    for row in grid:
        assert row["images_per_s"] > 0 and row["process_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["images_per_s"] / grid[0]["images_per_s"])
    assert [row["method"] for row in steps] == ["none", "kd", "featuremap", "tucker", "crd"]
    for row in steps:
        assert row["eager_ms"] > 0 and (row["cudagraphs_ms"], row["cudagraphs_speedup"]) == ("n/a", "n/a")  # GPU only
    assert "| n/a |" in stdout and "processes side by side" in report["headline"]


def test_bench_startup_quick(tmp_path: Path) -> None:
    stdout, report = run_benchmark("bench_startup.py", tmp_path / "startup.json", "--repeats", "1")
    rows = check_common(stdout, report)
    assert [row["command"] for row in rows][:3] == [
        "tucker_distillation.py --help",
        "tucker_distillation.py, a bad flag",
        "tucker_distillation.py, a finished run",
    ]
    assert all(row["cpu_s"] > 0 and row["wall_s"] > 0 for row in rows)
    assert report["headline"].startswith("a finished run's rerun costs ")
