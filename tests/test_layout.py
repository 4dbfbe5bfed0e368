"""The package's layout: packages in the order of the data flow, each importing only earlier
ones; no import circle among modules; one module that imports kaggle; a CLI that starts
without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import comp

PACKAGE = Path(comp.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def comp_imports(path: Path, known: set[str]) -> set[str]:
    """The comp modules a file imports, at its top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comp"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known and not PACKAGE.joinpath(*m.split(".")[1:]).is_dir()}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: comp_imports(path, known) - {name} for name, path in paths.items()}


def test_no_import_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


# comp's packages and top-level modules along the data flow: each may import only those
# before it. The shared ground first (errors to track, with the competition and a run's files), then the stages from the images to
# the leaderboard, then the orchestration that drives several of them, then the CLI.
ORDER = (
    "errors",
    "console",
    "files",
    "config",
    "hardware",
    "kaggle",
    "data",
    "runs",
    "metrics",
    "plots",
    "track",
    "models",
    "folds",
    "fit",
    "teach",
    "train",
    "tune",
    "predict",
    "report",
    "submit",
    "workspace",
    "kernels",
    "cli",
    "__main__",
)


def unit(module: str) -> str:
    """The package a module sits in, or the top-level module itself."""
    return module.split(".")[1] if "." in module else "__init__"


def test_packages_import_only_earlier_ones() -> None:
    units = {unit(m) for m in graph()} - {"__init__"}
    assert units == set(ORDER), f"place every package in ORDER: {sorted(units ^ set(ORDER))}"
    backwards = sorted(
        f"{a} imports {b} ({unit(b)} comes after {unit(a)})"
        for a, imported in graph().items()
        for b in imported
        if unit(a) != unit(b) and ORDER.index(unit(b)) > ORDER.index(unit(a))
    )
    assert not backwards, "\n".join(backwards)


def test_the_order_catches_a_backward_import(tmp_path: Path) -> None:
    # The check above would pass on an empty graph: show it sees an import from data to train.
    module = tmp_path / "m.py"
    module.write_text("from comp.train.recipe import resolve\n")
    known = {"comp.train.recipe", "comp.data.images"}
    assert comp_imports(module, known) == {"comp.train.recipe"}
    assert ORDER.index(unit("comp.train.recipe")) > ORDER.index(unit("comp.data.images"))


def test_one_module_imports_kaggle() -> None:
    importers = sorted(
        {
            module_name(path)
            for path in PACKAGE.rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if (
                isinstance(node, ast.Import)
                and any(a.name.split(".")[0] == "kaggle" for a in node.names)
            )
            or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kaggle")
        }
    )
    assert importers == ["comp.kaggle.client"]


def test_every_module_sits_in_a_package_or_is_a_top_level_one() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {
        "__init__",
        "__main__",
        "cli",
        "config",
        "console",
        "errors",
        "files",
        "metrics",
        "plots",
        "runs",
    }
    for package in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "TODO" not in doc, f"{package.name}/__init__.py says what it holds"
        unlisted = [
            m.stem
            for m in sorted(package.glob("*.py"))
            if m.stem != "__init__" and f"``{m.stem}``" not in doc
        ]
        assert not unlisted, f"{package.name}/__init__.py lists its modules; missing {unlisted}"


def test_the_tests_mirror_the_packages() -> None:
    # By folder: tests/<package>/ holds the tests of comp/<package>/, so a newcomer finds them.
    tests = Path(__file__).parent
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    test_dirs = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert test_dirs == packages, f"tests/ and comp/ differ on {sorted(test_dirs ^ packages)}"


def test_cli_starts_without_torch() -> None:
    code = "import sys, comp.cli; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
