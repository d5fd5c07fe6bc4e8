"""The code's layers, from the top: the scripts -> training, analysis, sweep -> the run folder ->
the methods -> data, models, distributed, Tucker -> config, cli, utils, stop -> errors and the list
of methods. An import never runs back up (a module imports its own layer or those below), and no
modules import each other in a circle: a reader finds each concept in one place and reads down."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = [  # bottom first; a module belongs to the first entry that names it or a package above it
    ["toolbox.errors", "toolbox.methods"],  # toolbox.methods: the torch-free list (its __init__)
    ["toolbox.config", "toolbox.cli", "toolbox.utils", "toolbox.stop"],
    [
        "toolbox.data_loader",
        "toolbox.datasets",
        "toolbox.models",
        "toolbox.nets",
        "toolbox.distributed",
        "toolbox.tucker",
    ],
    ["toolbox.methods.", "toolbox.distillation"],  # every module of the package but its __init__
    ["toolbox.rundir"],
    ["toolbox.training", "toolbox.analysis", "toolbox.sweep"],
    ["tucker_distillation", "runner", "test_noise"],
]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def layer(module: str) -> int:
    for index, names in enumerate(LAYERS):
        for name in names:
            if name.endswith(".") and module.startswith(name):
                return index
            if not name.endswith(".") and (module == name or module.startswith(name + ".")):
                if not (name == "toolbox.methods" and module != name):
                    return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The project's modules that ``path`` imports at run time (``from toolbox import x`` names module x)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type annotations only are not imports at run time
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in ("toolbox", "runner", "tucker_distillation", "test_noise"):
                found.add(node.module)
                found |= {
                    f"{node.module}.{alias.name}"
                    for alias in node.names
                    if (REPO / node.module.replace(".", "/") / f"{alias.name}.py").exists()
                    or (REPO / node.module.replace(".", "/") / alias.name / "__init__.py").exists()
                }
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "toolbox"}
    return found


def sources() -> list[Path]:
    return [
        *sorted((REPO / "toolbox").rglob("*.py")),
        REPO / "tucker_distillation.py",
        REPO / "runner.py",
        REPO / "test_noise.py",
    ]


def test_no_import_runs_up_a_layer() -> None:
    upward = [
        f"{module_name(path)} imports {imported}"
        for path in sources()
        for imported in imports(path)
        if layer(imported) > layer(module_name(path))
    ]
    assert not upward


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = {module_name(path): imports(path, top_level_only=True) for path in sources()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for imported in sorted(graph.get(module, ())):
            assert seen.get(imported) != 1, " -> ".join([*path, imported])
            if imported not in seen:
                visit(imported, [*path, imported])
        seen[module] = 2

    for module in graph:
        if module not in seen:
            visit(module, [module])
