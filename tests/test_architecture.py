"""The package's shape: sub-packages layered one way, no import circle, imports at the top, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "suite"
MAX_LINES = 450


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_import_linter_contracts_hold(monkeypatch):
    """The layers (cli > analysis > run > metrics > prompts > toy > model > core) and acyclic siblings in pyproject."""
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_the_layers_contract_fails_on_an_upward_import(tmp_path, monkeypatch):
    """The same kind of contract, on a two-layer package whose lower layer imports the upper one."""
    package = tmp_path / "layered"
    for layer in ("upper", "lower"):
        (package / layer).mkdir(parents=True)
        (package / layer / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "upper" / "a.py").write_text("from layered.lower import b\n")
    (package / "lower" / "b.py").write_text("")
    config = tmp_path / "layers.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "layered"\n\n[[tool.importlinter.contracts]]\nname = "layers"\n'
        'type = "layers"\nlayers = ["upper", "lower"]\ncontainers = ["layered"]\nexhaustive = true\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lint_imports(config_filename=str(config), no_cache=True) == 0
    (package / "lower" / "b.py").write_text("import layered.upper.a\n")
    assert lint_imports(config_filename=str(config), no_cache=True) == 1


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import circle among all modules (a package and its children included), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return [*stack[stack.index(imported) :], imported]
            if imported not in state and (found := visit(imported)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    """Stricter than acyclic siblings: a package's __init__ and its own modules may not import each other."""
    cycle = _cycle(grimp.build_graph("suite"))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    assert _cycle(graph) is None
    graph.add_import(importer="a.c", imported="a")
    graph.add_import(importer="a", imported="a.b")
    assert _cycle(graph) == ["a", "a.b", "a.c", "a"]


def _inner_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, has a comment) of every import inside a function or a TYPE_CHECKING block."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        enclosing = node
        while enclosing in parents:
            enclosing = parents[enclosing]
            inside_function = isinstance(enclosing, (ast.FunctionDef, ast.AsyncFunctionDef))
            type_checking = isinstance(enclosing, ast.If) and "TYPE_CHECKING" in ast.unparse(enclosing.test)
            if inside_function or type_checking:
                if isinstance(node, ast.ImportFrom):
                    module = "suite" + "." * node.level + (node.module or "") if node.level else node.module or ""
                else:
                    module = node.names[0].name
                found.append((node.lineno, module, "#" in lines[node.lineno - 1]))
                break
    return found


@pytest.mark.parametrize("path", _python_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_stay_at_the_top(path):
    """Only an optional heavy dependency is imported inside a function, with a comment naming it."""
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for line, module, commented in _inner_imports(path)
        if module.startswith("suite") or not commented
    ]
    assert not problems, "imports inside functions: " + ", ".join(problems)


def test_the_inner_import_check_sees_them(tmp_path):
    path = tmp_path / "module.py"
    path.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import suite.core\n"
        "def f():\n    import json\n    import tensorrt  # optional: TensorRT\n    from . import sibling\n"
    )
    assert _inner_imports(path) == [
        (3, "suite.core", False),
        (5, "json", False),
        (6, "tensorrt", True),
        (7, "suite.", False),  # a relative import is one of the package's own
    ]


@pytest.mark.parametrize("path", _python_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_modules_stay_small(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_every_sub_package_says_what_it_owns_and_may_import():
    for package in sorted(path.parent for path in PACKAGE.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "import" in docstring.lower(), f"{package.relative_to(ROOT)}/__init__.py: say what it may import"
