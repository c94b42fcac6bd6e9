"""The package's floors: evaluation never imports a method, and no method imports another."""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

from ddkit.cli import app
from ddkit.distill import list_methods

SRC = Path(__file__).resolve().parents[1] / "src" / "ddkit"
# the modules that implement registered methods (shared bases and the MTT buffer are not methods)
METHOD_MODULES = {"coreset", "dm", "spectral", "gm", "kip", "frepo", "mtt", "cfm"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_evaluation_imports_no_method():
    for path in (SRC / "evaluate").glob("*.py"):
        bad = {n for n in _imports(path) if n.startswith("ddkit.distill")}
        assert not bad, f"{path.name} imports {bad}"


def test_no_method_imports_another_method():
    for name in METHOD_MODULES:
        others = {f"ddkit.distill.{m}" for m in METHOD_MODULES - {name}}
        bad = _imports(SRC / "distill" / f"{name}.py") & others
        assert not bad, f"distill/{name}.py imports {bad}"


def test_cli_lists_the_registered_methods():
    res = CliRunner().invoke(app, ["distill", "--help"], terminal_width=400)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for name in list_methods():
        assert name in text
