"""docs/development.md's walk-throughs, applied to a copy of the project: a run setting, a
data set and an experiment kind, each added by the blocks the page shows, work end to end
(the CLI, run keys, config validation, the schema contract, a dry run of the workflow), and
each touches no more files than the page states."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGE = ROOT / "docs" / "development.md"
BLOCK = re.compile(
    r"<!-- walkthrough (?P<name>\w+): (?P<file>\S+), "
    r'(?P<how>before|replace): "(?P<anchor>[^\n]*)" -->'
    r"\n```\w*\n(?P<code>.*?)```",
    re.S,
)
# How many files each walk-through may touch (issue 36): a setting and a data set 3, a kind
# 2 plus its renderer.
MOST_FILES = {"setting": 3, "dataset": 3, "kind": 3}


def blocks() -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for m in BLOCK.finditer(PAGE.read_text()):
        entry = m.groupdict()
        entry["anchor"] = entry["anchor"].replace('\\"', '"')
        found.setdefault(entry["name"], []).append(entry)
    return found


def apply(name: str, into: Path) -> set[str]:
    """Apply walk-through ``name`` to the copy at ``into``; the files it touched."""
    touched = set()
    for block in blocks()[name]:
        path = into / block["file"]
        text = path.read_text()
        if block["how"] == "replace":
            assert text.count(block["anchor"]) == 1, (block["file"], block["anchor"])
            text = text.replace(block["anchor"], block["code"].rstrip("\n"))
        else:  # before the one line that starts with the anchor
            lines = text.splitlines(keepends=True)
            at = [i for i, line in enumerate(lines) if line.startswith(block["anchor"])]
            assert len(at) == 1, (block["file"], block["anchor"], len(at))
            code = block["code"]
            if code.startswith(("@", "def ", "class ")):  # a top-level definition
                code += "\n\n"
            text = "".join(lines[: at[0]]) + code + "".join(lines[at[0] :])
        path.write_text(text)
        touched.add(block["file"])
    return touched


@pytest.fixture
def copy(tmp_path) -> Path:
    """The project's code, configuration and tests, without results or the venv."""
    for part in ("rbd", "config", "workflow", "tests"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # fmt: skip
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    return tmp_path


def _env(copy: Path) -> dict:
    return {"PYTHONPATH": str(copy), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


def run(copy: Path, code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True,
                          text=True, env=_env(copy))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def cli_help(copy: Path, verb: str) -> str:
    """`rbd VERB --help` of the copy."""
    return run(copy, f"import sys; from rbd.cli import main; sys.exit(main(['{verb}', '-h']))")


def contract(copy: Path) -> None:
    """The copy's own schema contract test passes."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/workflow/test_config.py", "-k", "schema_holds or choices"],
        cwd=copy, capture_output=True, text=True, env=_env(copy),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_page_has_the_three_walkthroughs_within_their_file_counts():
    found = blocks()
    assert set(found) == set(MOST_FILES)
    for name, entries in found.items():
        assert len({e["file"] for e in entries}) <= MOST_FILES[name], name


@pytest.mark.slow
def test_a_run_setting(copy):
    assert len(apply("setting", copy)) == 2
    out = run(
        copy,
        """
import yaml
from rbd.spec import RunSpec, method_options, parse_run_key
from rbd.workflow.config import expand_experiment, validate_config
spec = RunSpec(method="nes", model="fc", dataset="mnist5k", dim=5, distribution="gaussian",
               lr=0.01, epochs=1, seed=0, nes_antithetic=True)
assert "_anti-1_" in spec.key and parse_run_key(spec.key) == spec, spec.key
assert method_options("nes", spec)["antithetic"] is True
config = yaml.safe_load(open("config/quick.yaml"))
config["experiments"]["table1"]["nes_antithetic"] = True
validate_config(config, "config/schemas/config.schema.yaml")
runs = expand_experiment(config, "table1")
assert {r.nes_antithetic for r in runs if r.method == "nes"} == {True}
assert {r.nes_antithetic for r in runs if r.method != "nes"} == {False}
print("ok")
""",
    )
    assert out.strip() == "ok"
    help_text = run(
        copy, "from rbd.cli import main; import sys; sys.argv=['rbd','train','-h']; main()"
    )
    assert "--nes-antithetic" in help_text
    contract(copy)


@pytest.mark.slow
def test_a_data_set(copy):
    assert len(apply("dataset", copy)) == 2
    out = run(
        copy,
        """
import yaml
from rbd.spec import num_params
from rbd.train.data import expected_files
from rbd.workflow.config import validate_config
assert num_params("fc", "kmnist") == 101_770
assert any("KMNIST/raw" in str(p) for p in expected_files("kmnist", "/data"))
config = yaml.safe_load(open("config/quick.yaml"))
config["learning_rates"]["sgd"]["fc-kmnist"] = 0.5
config["experiments"] = {"k": {"kind": "method_table", "models": ["fc"],
                               "datasets": ["kmnist"], "methods": ["sgd"]}}
validate_config(config, "config/schemas/config.schema.yaml")
print("ok")
""",
    )
    assert out.strip() == "ok"
    help_text = run(
        copy, "from rbd.cli import main; import sys; sys.argv=['rbd','download','-h']; main()"
    )
    assert "kmnist" in help_text
    contract(copy)


@pytest.mark.slow
def test_an_experiment_kind(copy):
    touched = apply("kind", copy)
    assert "rbd/report/plots.py" in touched and len(touched - {"rbd/report/plots.py"}) == 2
    out = run(
        copy,
        """
from rbd.report.kinds import KINDS, outputs
from rbd.report.plots import plot
import pandas as pd
assert outputs("x", "final_acc") == ["figures/x.pdf", "results/tables/x.csv"]
runs = pd.DataFrame({"model": ["fc", "fc"], "dataset": ["mnist5k"] * 2,
                     "method": ["sgd", "rbd"], "val_acc": [95.0, 90.0]})
fig = plot("final_acc", runs, "t")
assert [p.get_height() for p in fig.axes[0].patches] == [90.0, 95.0]
print("ok")
""",
    )
    assert out.strip() == "ok"
    help_text = run(
        copy, "from rbd.cli import main; import sys; sys.argv=['rbd','plot','-h']; main()"
    )
    assert "final_acc" in help_text
    config = copy / "config" / "k.yaml"
    config.write_text(
        (copy / "config" / "quick.yaml").read_text().split("experiments:")[0]
        + "experiments:\n  k:\n    kind: final_acc\n    models: [fc]\n    datasets: [mnist5k]\n"
        "    methods: [rbd, sgd]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", f"--configfile={config}",
         "--directory", copy / "work", "figures/k.pdf"],
        cwd=copy, capture_output=True, text=True,
        env=_env(copy),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aggregate_experiment" in proc.stdout and "plot_figure" in proc.stdout
    contract(copy)
