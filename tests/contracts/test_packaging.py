"""Packaging: conda and pip name the same dependencies; schema enums match the package."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.helpers import ROOT


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
    from rbd.bases import DISTRIBUTIONS
    from rbd.optim import METHODS
    from rbd.spec import NES_BATCHES
    from rbd.train.data import DATASETS
    from rbd.train.models import INITS, MODELS

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
