"""The flag layer: its vocabularies match the registries, and it answers without loading torch."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import patience
from toolbox import models
from toolbox.cli import CLOSED_PIPE
from toolbox.config import RUNTIME_FIELDS, Config, build_parser, choices
from toolbox.methods import DISTILLERS

REPO = Path(__file__).resolve().parent.parent
NO_TORCH = "import sys; sys.modules['torch'] = None; "  # any import of torch now fails


def test_the_vocabularies_are_the_registries() -> None:
    assert choices.METHODS == tuple(DISTILLERS)
    assert all(cls.__module__ == f"toolbox.methods.{name}" for name, cls in DISTILLERS.items())  # one file each
    assert choices.MODELS == tuple(models.MODELS)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code], cwd=REPO, capture_output=True, text=True, timeout=patience(60)
    )


def test_help_and_flag_errors_need_no_torch() -> None:
    script = (
        "import runpy; sys.argv = ['tucker_distillation.py', {}]; "
        "runpy.run_path('tucker_distillation.py', run_name='__main__')"
    )
    shown = run_without_torch(script.format("'--help'"))
    assert shown.returncode == 0, shown.stderr
    assert (
        "--distillation {none,featuremap,tucker,tucker_recomp,kd" in shown.stdout and "--crd_negatives" in shown.stdout
    )
    refused = run_without_torch(script.format("'--lr', '-1'"))
    assert refused.returncode == 2 and "--lr must be a positive number; got -1.0" in refused.stderr
    parsed = run_without_torch(
        "from toolbox.config import parse_config; print(parse_config(['--distillation', 'kd']).kd_temperature)"
    )
    assert parsed.stdout.strip() == "4.0", parsed.stderr


def help_blocks() -> dict[str, str]:
    """Each flag of ``tucker_distillation.py --help`` and the text shown for it."""
    text = build_parser("tucker_distillation.py").format_help().split("\nwhat to train:", 1)[1]
    blocks = re.split(r"\n  (?=--)", text.split("\nexit status:")[0])
    return {block.split()[0]: " ".join(block.split()) for block in blocks if block.startswith("--")}


def test_each_flag_states_its_default_once() -> None:
    blocks = help_blocks()
    assert len(blocks) == len(dataclasses.fields(Config))
    twice = {name: text for name, text in blocks.items() if text.lower().count("default") > 1}
    assert not twice
    assert "(default: 0.07)" in blocks["--crd_temperature"] and "(default: None)" not in " ".join(blocks.values())


def test_help_groups_show_which_flags_may_change_on_resume() -> None:
    parser = build_parser("tucker_distillation.py")
    may_change = {
        action.dest
        for group in parser._action_groups
        if "may change when a run resumes" in (group.title or "")
        for action in group._group_actions
    }
    assert may_change - {"experiment_name"} == RUNTIME_FIELDS
    assert "exit status" in parser.epilog and "75" in parser.epilog


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (
            [
                "tucker_distillation.py",
                "--dataset",
                "digits",
                "--distillation",
                "none",
                "--student",
                "ResNetBaby",
                "--epochs",
                "1",
                "--max_batches",
                "1",
                "--experiments_dir",
                "EXPERIMENTS",
            ],
            CLOSED_PIPE,
        ),
        (
            ["runner.py", "--dataset", "digits", "--epochs", "1", "--dry_run", "--experiments_dir", "EXPERIMENTS"],
            CLOSED_PIPE,
        ),
        (["test_noise.py", "--help"], 0),  # argparse drops a help it cannot write
    ],
    ids=["tucker_distillation.py", "runner.py", "test_noise.py"],
)
def test_a_closed_pipe_ends_quietly(tmp_path: Path, command: list[str], status: int) -> None:
    """``script ... | head``: the reader is gone before the script writes; no traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, *(str(tmp_path) if arg == "EXPERIMENTS" else arg for arg in command)],
            cwd=REPO,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=patience(120),
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (status, "")


@pytest.mark.parametrize(
    ("environment", "policy"),
    [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"), ({"SLURM_CPUS_PER_TASK": "4"}, None)],
)
def test_threads_wait_passively_unless_told_or_on_cores_of_their_own(environment: dict, policy: str) -> None:
    """Set before torch loads (OpenMP reads it once): importing the script does not load torch."""
    code = "import os, sys, tucker_distillation; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SLURM_CPUS_PER_TASK")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=patience(60),
    )
    assert done.stdout.split() == [str(policy), "False"], done.stderr
