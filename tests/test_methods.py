"""The list of methods is the one home of their names: each registered method has its file, its
golden test, its row in README's methods table and its section in docs/methods.md, and nothing
else in the code keeps a list of them by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from toolbox.methods import DISTILLERS, METHODS

REPO = Path(__file__).resolve().parent.parent


def golden_methods() -> set[str]:
    """The methods named by a ``@pytest.mark.golden(...)`` test anywhere in tests/."""
    named: set[str] = set()
    for path in (REPO / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.mark.golden":
                named |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)}
    return named


def test_each_method_is_one_file_named_after_it() -> None:
    files = {path.stem for path in (REPO / "toolbox" / "methods").glob("*.py")}
    shared = {"__init__", "base", "bases", "loss", "phases", "standardization"}
    assert files - shared == set(METHODS)
    for name, cls in DISTILLERS.items():
        assert (cls.__module__, cls.__name__) == (f"toolbox.methods.{name}", METHODS[name])


def test_each_method_with_a_loss_has_a_golden_test() -> None:
    assert golden_methods() == set(METHODS) - {"none"}


@pytest.mark.parametrize(
    "page, pattern",
    [
        ("README.md", "^\\| `{name}` \\| \\[toolbox/methods/{name}\\.py\\]\\(toolbox/methods/{name}\\.py\\) \\|"),
        ("docs/methods.md", "`{name}`"),
    ],
)
def test_each_method_is_documented(page: str, pattern: str) -> None:
    text = (REPO / page).read_text()
    missing = [name for name in METHODS if not re.search(pattern.format(name=name), text, re.MULTILINE)]
    assert not missing, f"{page} lacks {missing}"


def test_each_method_class_is_defined_once() -> None:
    """``git grep "class NAME"`` finds one definition: no copy of a method lives elsewhere."""
    sources = [path for path in (REPO / "toolbox").rglob("*.py")] + [REPO / "runner.py", REPO / "test_noise.py"]
    for name, cls in METHODS.items():
        defined = [path for path in sources if re.search(rf"^class {cls}\b", path.read_text(), re.MULTILINE)]
        assert defined == [REPO / "toolbox" / "methods" / f"{name}.py"], name
