"""The flag layer: its vocabularies match the registries, and it answers without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from toolbox import choices, models
from toolbox.methods import DISTILLERS

REPO = Path(__file__).resolve().parent.parent
NO_TORCH = "import sys; sys.modules['torch'] = None; "  # any import of torch now fails


def test_the_vocabularies_are_the_registries() -> None:
    assert choices.METHODS == tuple(DISTILLERS)
    assert choices.MODELS == tuple(models.MODELS)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_help_and_flag_errors_need_no_torch() -> None:
    script = "import runpy; sys.argv = ['tucker_distillation.py', {}]; runpy.run_path('tucker_distillation.py', run_name='__main__')"
    shown = run_without_torch(script.format("'--help'"))
    assert shown.returncode == 0, shown.stderr
    assert "--distillation {none,featuremap,tucker,tucker_recomp,kd" in shown.stdout and "--crd_negatives" in shown.stdout
    refused = run_without_torch(script.format("'--lr', '-1'"))
    assert refused.returncode == 2 and "--lr must be a positive number; got -1.0" in refused.stderr
    parsed = run_without_torch("from toolbox.config import parse_config; print(parse_config(['--distillation', 'kd']).kd_temperature)")
    assert parsed.stdout.strip() == "4.0", parsed.stderr
