"""Packaging: conda and pip name the same dependencies; schema enums match the package."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import ROOT


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    return match[1].lower().replace("_", "-"), match[2].replace(" ", "")


def test_environment_yml_names_the_pyproject_dependencies():
    """The conda environment is the full install: the core and the train and workflow extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = project["dependencies"] + extras["train"] + extras["workflow"]
    wanted = dict(_split(r) for r in specs if not r.startswith("rbd["))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        (pip.extend(dep["pip"]) if isinstance(dep, dict) else conda.append(dep))
    listed = dict(_split(d) for d in conda + pip if not d.startswith("-e"))
    listed.pop("python"), listed.pop("pip")
    assert listed == wanted
    assert "-e .[dev,workflow]" in pip, "the conda env must install rbd itself, with its extras"


def test_schema_enums_match_the_package():
    from rbd.data import DATASETS
    from rbd.models import INITS, MODELS
    from rbd.optim import METHODS
    from rbd.projection import DISTRIBUTIONS
    from rbd.train import NES_BATCHES

    defs = yaml.safe_load((ROOT / "config/schemas/config.schema.yaml").read_text())["$defs"]
    assert set(defs["model"]["enum"]) == set(MODELS)
    assert set(defs["dataset"]["enum"]) == set(DATASETS)
    assert set(defs["method"]["enum"]) == set(METHODS)
    assert set(defs["distribution"]["enum"]) == set(DISTRIBUTIONS)
    assert set(defs["init"]["enum"]) == set(INITS)
    assert set(defs["nes_batches"]["enum"]) == set(NES_BATCHES)


def test_project_has_a_licence_and_a_citation():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["preferred-citation"]["title"].startswith("Improving Neural Network Training")


def _rbd_imports(path) -> set[str]:
    """The rbd modules a module imports, at top level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rbd"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rbd.")}
    return found


def test_rbd_modules_import_each_other_without_circles():
    modules = {p.stem: p for p in (ROOT / "rbd").glob("*.py")}
    graph = {name: _rbd_imports(path) & set(modules) for name, path in modules.items()}
    assert graph["train"] and "distributed" in graph["launch"]  # the graph is read at all

    def reaches(start, goal, seen=()):
        return any(
            n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start]
        )

    circles = sorted(name for name in graph if reaches(name, name))
    assert not circles, {name: sorted(graph[name]) for name in circles}
