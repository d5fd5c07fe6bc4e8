"""Both analysis notebooks run top to bottom (papermill, the venv's python3 kernel) on a tiny real
experiments tree, and are committed without outputs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from conftest import SMOKE_CHANGES, STUDENT, TEACHER, TEACHER_RUN, run_training
from jupyter_client import KernelManager

ROOT = Path(__file__).resolve().parent.parent
AGGREGATOR = ROOT / "analyzer_results_aggregator.ipynb"
INSPECTION = ROOT / "analyzer_tucker_distillation.ipynb"
NOTEBOOKS = (AGGREGATOR, INSPECTION)
STUDENT_RUNS = [  # flags of each tiny student run in the tree
    ["--distillation", "none"],
    ["--distillation", "featuremap"],
    ["--distillation", "tucker", "--ranks", "BATCH_SIZE,16,8,8"],
    ["--distillation", "tucker", "--ranks", "BATCH_SIZE,32,8,8"],
    ["--distillation", "tucker", "--ranks", "BATCH_SIZE,32,8,8", "--seed", "1"],
    ["--distillation", "tucker_recomp", "--recomp_target", "both", "--ranks", "BATCH_SIZE,16,8,8"],
]
UNFINISHED = ["--distillation", "tucker_recomp", "--recomp_target", "teacher", "--ranks", "BATCH_SIZE,32,8,8"]
UNFINISHED_RUN = f"digits/{TEACHER}-{STUDENT}/tucker_recomp/teacher/B-32-8-8/{SMOKE_CHANGES}/seed0"
STUDENT_CHECKPOINT = f"digits/{TEACHER}-{STUDENT}/tucker/B-32-8-8/{SMOKE_CHANGES}/seed0/{STUDENT}.pth"


@pytest.fixture(scope="module")
def experiments(digits_teacher: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared teacher's run copied in, tiny students distilled from it, and one run that
    stopped before writing metrics.json."""
    teacher_experiments, _ = digits_teacher
    root = tmp_path_factory.mktemp("notebook-experiments")
    shutil.copytree(teacher_experiments / TEACHER_RUN, root / TEACHER_RUN)
    common = [
        "--teacher",
        TEACHER,
        "--student",
        STUDENT,
        "--epochs",
        "2",
        "--max_batches",
        "3",
        "--teacher_checkpoint",
        str(root / TEACHER_RUN / f"{TEACHER}.pth"),
    ]
    for flags in [*STUDENT_RUNS, UNFINISHED]:
        run_training(root, *common, *flags)
    (root / UNFINISHED_RUN / "metrics.json").unlink()  # as if the job had been killed
    return root


def execute(notebook: Path, output: Path, **parameters: Any) -> nbformat.NotebookNode:
    """Run a notebook with papermill from the repository root; it raises on an error cell."""
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
        log_output=False,
    )
    return nbformat.read(output, as_version=4)


def outputs(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def text(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text."""
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs(notebook))


def figures(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(notebook))


def assert_no_errors(notebook: nbformat.NotebookNode) -> None:
    errors = [o for o in outputs(notebook) if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    assert all(cell.execution_count for cell in notebook.cells if cell.cell_type == "code")


def test_kernel_is_this_venvs_python() -> None:
    """papermill starts ``python3``; jupyter_client turns its ``python`` into this interpreter."""
    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(command[0]).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebooks_are_committed_without_outputs(notebook: Path) -> None:
    content = nbformat.read(notebook, as_version=4)
    nbformat.validate(content)
    code = [cell for cell in content.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert code[0].metadata.get("tags") == ["parameters"]
    assert content.metadata.kernelspec.name == "python3"


def test_aggregator_on_experiments(experiments: Path, tmp_path: Path) -> None:
    output = tmp_path / "analysis" / "digits"  # not there yet: the notebook creates it
    notebook = execute(
        AGGREGATOR,
        tmp_path / "aggregator.ipynb",
        EXPERIMENTS_DIR=str(experiments),
        SUMMARY_DIR=str(output),
        DATASET="digits",
        BENCHMARK_FLAGS={"epochs": 2},
    )  # the students' runs; the teacher trained longer
    assert_no_errors(notebook)
    printed = text(notebook)
    assert "7 finished runs in 6 configurations" in printed and "1 without results" in printed
    assert UNFINISHED_RUN in printed and "unfinished" in printed
    # test accuracy, cross-entropy, the distillation losses (a panel per method), accuracy against rank
    assert figures(notebook) == 4
    pngs = ("test_accuracy.png", "train_cross_entropy.png", "train_distillation_loss.png", "accuracy_vs_rank.png")
    assert all((output / name).read_bytes().startswith(b"\x89PNG") for name in pngs)  # readable outside the notebook
    summary = (output / "summary.csv").read_text()
    for name in ("featuremap", "tucker_x0.25", "tucker_x0.5", "recomp_both_x0.25", "teacher", "student alone"):
        assert f"\n{name}," in summary
    assert (output / "summary.md").exists()
    # What to expect: the teacher and the student alone first; tucker_x0.5's two seeds paired with
    # the student alone's one seed: a difference, no interval.
    expect = (output / "what_to_expect.md").read_text()
    rows = [line.split(" | ")[0] for line in expect.splitlines() if line.startswith("| ")]
    assert rows[:3] == ["| method", "| teacher", "| student alone"] and len(rows) == 7
    assert "| student alone | 1 |" in expect and "| reference |" in expect and "paired t-test" in expect
    # The benchmark table: the students' pair, no published numbers for digits; the teacher's row
    # is empty, its run (6 epochs) being left out by BENCHMARK_FLAGS.
    assert f"| method | {TEACHER}→{STUDENT} |" in printed and "none is shown beside these digits runs" in printed
    benchmark = (output / "benchmark_last.md").read_text()
    rows = [line.split(" | ")[0] for line in benchmark.splitlines() if line.startswith("| ")][1:]
    assert rows == [
        "| teacher",
        "| student alone",
        "| featuremap",
        "| tucker_x0.25",
        "| tucker_x0.5",
        "| recomp_both_x0.25",
    ]
    assert "| teacher |  |" in benchmark and " ± " in benchmark.split("| tucker_x0.5 |")[1].splitlines()[0]  # two seeds
    assert "best epoch" in (output / "benchmark_best.md").read_text()


def test_aggregator_on_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "experiments"
    empty.mkdir()
    notebook = execute(AGGREGATOR, tmp_path / "aggregator.ipynb", EXPERIMENTS_DIR=str(empty))
    assert_no_errors(notebook)
    assert f"No finished runs under {empty}" in text(notebook)
    assert "The benchmark table is for cifar100 runs of a teacher→student pair (DATASET); there are none" in text(
        notebook
    )
    assert list(empty.iterdir()) == []  # no summary written for nothing


def test_inspection_notebook(experiments: Path, tmp_path: Path) -> None:
    notebook = execute(
        INSPECTION,
        tmp_path / "inspection.ipynb",
        DATASET="digits",
        TEACHER=TEACHER,
        STUDENT=STUDENT,
        EXPERIMENTS_DIR=str(experiments),
        STUDENT_CHECKPOINT=str(experiments / STUDENT_CHECKPOINT),
        N_IMAGES=16,
        CHANNEL_RANKS=[4, 32, 64],
        SPATIAL_RANKS=[2, 8],
        SHOWN_RANKS=[4, 32],
        SUBSPACE_RANK=8,
    )
    assert_no_errors(notebook)
    printed = text(notebook)
    assert f"teacher {TEACHER}: maps of shape (16, 64, 8, 8)" in printed
    assert f"student {STUDENT}: maps of shape (16, 64, 8, 8)" in printed
    assert "of the teacher map's energy" in printed
    assert figures(notebook) == 6  # maps, errors, spectra, energy, angles, reconstructions


def test_aggregator_shows_the_imagenet_table_beside_the_published_numbers(tmp_path: Path) -> None:
    from tests.test_analysis import imagenet_run

    experiments = tmp_path / "experiments"
    imagenet_run(
        experiments, [61.0, 70.0, 71.25], "kd", "resnet34", "resnet18"
    )  # fabricated: no ImageNet training here
    imagenet_run(experiments, [60.0, 71.0, 70.5], "dkd", "resnet50", "MobileNetV1")
    notebook = execute(
        AGGREGATOR, tmp_path / "aggregator.ipynb", EXPERIMENTS_DIR=str(experiments), SUMMARY_DIR=str(tmp_path)
    )
    assert_no_errors(notebook)
    printed = text(notebook)
    table = (tmp_path / "benchmark_imagenet_last.md").read_text()
    assert table in printed and "| method | resnet34→resnet18 | resnet50→MobileNetV1 |" in table
    assert "| kd | 71.25 (71.03) | – (70.50) |" in table and "| dkd | – (71.70) | 70.50 (72.05) |" in table
    assert "| dkd | – (71.70) | 71.00 (72.05) |" in (tmp_path / "benchmark_imagenet_best.md").read_text()
