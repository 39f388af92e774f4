"""The package's layers (rbd/__init__.py): every import, at module level or inside a
function, goes to the same layer or one below; the torch-only layers import only torch and
the standard library; the report and the workflow never import torch; no import circles.

Imports are read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "rbd"

# Bottom to top. `rbd` itself (the version) is below all; rbd.spec holds what every layer
# needs to know of a run, with the standard library only.
LAYERS = (
    "rbd", "rbd.spec", "rbd.bases", "rbd.optim", "rbd.train", "rbd.report", "rbd.workflow", "top",
)  # fmt: skip
TOP = ("rbd.cli", "rbd.warm", "rbd.__main__")
STANDARD_LIBRARY_ONLY = ("rbd.spec",)
TORCH_ONLY = ("rbd.bases", "rbd.optim")
NO_TORCH = ("rbd.report", "rbd.workflow")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    if module in TOP:
        return LAYERS.index("top")
    for i in range(len(LAYERS) - 2, 0, -1):
        if module == LAYERS[i] or module.startswith(LAYERS[i] + "."):
            return i
    assert module == "rbd", f"{module} is in no layer: add it to LAYERS or TOP"
    return 0


def _resolve(name: str) -> str:
    """The rbd module an imported name lives in (a submodule, else its package)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> list[str]:
    """Every module `module` imports anywhere in its source: rbd modules resolved to the
    module (`from rbd.bases import native` is rbd.bases.native), others by top name."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base == "rbd" or base.startswith("rbd."):
                found += [_resolve(f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append(base)
    out = []
    for name in found:
        out.append(_resolve(name) if name == "rbd" or name.startswith("rbd.") else name)
    return sorted(set(out) - {module})


def _third_party(names: list[str]) -> set[str]:
    tops = {n.split(".")[0] for n in names if not (n == "rbd" or n.startswith("rbd."))}
    return tops - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_up_a_layer(module):
    upward = [
        name
        for name in imports(module)
        if (name == "rbd" or name.startswith("rbd.")) and _layer(name) > _layer(module)
    ]
    assert not upward, f"{module} (layer {LAYERS[_layer(module)]}) imports {upward} from above"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(TORCH_ONLY)))
def test_torch_only_layers_import_only_torch_and_the_standard_library(module):
    assert _third_party(imports(module)) <= {"torch"}, module


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith(STANDARD_LIBRARY_ONLY))
)
def test_the_spec_imports_only_the_standard_library(module):
    assert _third_party(imports(module)) == set(), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(NO_TORCH)))
def test_report_and_workflow_never_import_torch(module):
    assert "torch" not in _third_party(imports(module)), module
    lower = [name for name in imports(module) if name.startswith(TORCH_ONLY)]
    assert not lower, f"{module} imports torch through {lower}"


def reachable(module: str) -> set[str]:
    """The rbd modules `module` can import, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        todo += imports(name)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(NO_TORCH)))
def test_report_and_workflow_reach_no_torch_through_the_layers_below(module):
    """Table and figure jobs start without torch: nothing they can reach imports it
    (rbd.train's own modules they read run directories with included)."""
    heavy = sorted(m for m in reachable(module) if "torch" in _third_party(imports(m)))
    assert not heavy, f"{module} reaches torch through {heavy}"


def test_no_import_circles():
    graph = {m: [n for n in imports(m) if n in MODULES] for m in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                # A package's __init__ re-exporting its own submodules is not a circle.
                if not all(m == cycle[0] or m.startswith(cycle[0] + ".") for m in cycle):
                    pytest.fail("import circle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layering_test_sees_a_violation(tmp_path, monkeypatch):
    """The rules catch an upward import and torch in the report (so they cannot pass
    vacuously)."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    import torch\n    from rbd.cli import main\n")
    monkeypatch.setitem(MODULES, "rbd.report.fake", fake)
    assert "rbd.cli" in imports("rbd.report.fake")
    with pytest.raises(AssertionError, match="from above"):
        test_no_import_goes_up_a_layer("rbd.report.fake")
    with pytest.raises(AssertionError):
        test_report_and_workflow_never_import_torch("rbd.report.fake")


def test_every_layer_is_a_package_with_modules():
    for layer in LAYERS[1:-1]:
        assert layer in MODULES, layer
        assert any(m.startswith(layer + ".") for m in MODULES), layer
