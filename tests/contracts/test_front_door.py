"""The README and the docs (issue 35): a short README whose first screen says what the
project is, how to start and what it found, with counts that follow from the committed
results; text that names hosts and commits rather than the circumstances of a machine;
config/README.md with a default for every key; nothing read from outside the checkout."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from rbd.report.paper import is_off
from tests.helpers import ROOT

README = ROOT / "README.md"
DOCS = [README, ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SUMMARY = ROOT / "docs" / "verification" / "full_protocol.csv"
# Words that tell the circumstances numbers were made in, or "here" for a machine.
FORBIDDEN = [
    r"\bsessions?\b",
    r"\bworkplace\b",
    r"\blent\b",
    r"\b(?:run|ran|measured|timed|tested|verified|available|installed|tried|trained)\s+here\b",
    r"\bhere\s*\(",
    r"\bnot\s+here\b",
    r"\bthis (?:machine|host)\b",
]
PAIRS = {("fc", "mnist"): "FC-MNIST", ("fc", "fashion_mnist"): "FC-FMNIST",
         ("cnn", "mnist"): "CNN-MNIST", ("cnn", "fashion_mnist"): "CNN-FMNIST"}  # fmt: skip
METHODS = ("sgd", "rbd", "fpd", "nes")


def _table1() -> dict[tuple[str, str, str], dict]:
    """(method, model, dataset) -> its summary row, for the Table 1 cells run."""
    cells = {}
    with open(SUMMARY, newline="") as f:
        for row in csv.DictReader(f):
            if row["cell"].startswith("table1:"):
                dataset, model, method = row["run_key"].split("/")[:3]
                cells[(method, model, dataset)] = row
    return cells


def _off(row: dict) -> bool:
    return is_off(float(row["val_acc"]), float(row["paper"]), float(row["paper_std"]))


def test_the_readme_is_short_and_its_first_screen_holds_the_essentials():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    first = "\n".join(lines[:40])
    needed = ["git clone", "random bases descent", "fixed projection descent", "**Status**",
              "](docs/verification/paper_vs_ours.png)", "make demo"]  # fmt: skip
    for text in needed:
        assert text in first, text


def test_the_status_counts_follow_from_the_committed_results():
    cells = _table1()
    outside = [key for key, row in cells.items() if _off(row)]
    below = [key for key in outside if float(cells[key]["diff"]) < 0]
    first = "\n".join(README.read_text().splitlines()[:40])
    assert f"all {len(cells)} cells run" in first
    assert f"**{len(cells) - len(outside)} within**" in first
    assert f"**{len(outside)} outside**" in first
    results = (ROOT / "docs" / "results.md").read_text()
    assert (
        f"Of the {len(cells)} Table 1 cells run, {len(cells) - len(outside)} lie within it and "
        f"{len(outside)} outside ({len(below)} below, {len(outside) - len(below)} above)."
    ) in " ".join(results.split())
    # Each cell's account sits under the heading its numbers put it in.
    start = results.index("### Outside the bound")
    middle = results.index("### Within the bound")
    end = results.index("\n## ", middle)
    for (method, model, dataset), row in cells.items():
        name = f"{method.upper()}, {PAIRS[(model, dataset)]}"
        part = results[start:middle] if _off(row) else results[middle:end]
        assert f"**{name}" in part, (name, "outside" if _off(row) else "within")


def test_the_readme_results_table_is_the_committed_one():
    cells = _table1()
    readme = README.read_text()
    for (model, dataset), pair in PAIRS.items():
        shown = []
        for method in METHODS:
            row = cells[(method, model, dataset)]
            text = f"{float(row['val_acc']):.2f} / {row['paper']}"
            shown.append(f"**{text}**" if _off(row) else text)
        assert f"| {pair} | " + " | ".join(shown) + " |" in readme, pair


def test_the_run_counts_of_the_presets_are_the_workflows():
    from rbd.workflow.config import experiment_runs, in_default_target, load_config_files

    readme = README.read_text()
    for preset, name in (("config.yaml", "paper"), ("quick.yaml", "quick")):
        config = load_config_files([ROOT / "config" / preset])
        runs = {spec.key for exp, specs in experiment_runs(config).items()
                if in_default_target(config, exp) for spec in specs}  # fmt: skip
        assert re.search(rf"\| {name}, `config/{preset}` \| {len(runs)}\b", readme), name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_name_hosts_and_commits_not_circumstances(doc):
    text = doc.read_text()
    for pattern in FORBIDDEN:
        found = [m.group(0) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
        assert not found, f"{doc.relative_to(ROOT)}: {found}"


def test_the_readme_links_every_page_of_the_docs():
    readme = README.read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"](docs/{page.name})" in readme, page.name


def _key_rows(text: str, heading: str) -> dict[str, list[str]]:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    rows = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 4:
            for key in re.findall(r"`([a-z0-9_]+)`", cells[0]):
                rows[key] = cells
    return rows


def test_config_readme_gives_every_key_its_default():
    from dataclasses import fields

    from rbd.spec import RunSpec

    text = (ROOT / "config" / "README.md").read_text()
    assert "| key | type | default | meaning |" in text
    schema = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
    top = schema["properties"]
    rows = _key_rows(text, "## Top-level keys")
    for key, spec in top.items():
        default = rows[key][2]
        if "default" in spec:
            value = spec["default"]
            value = str(value).lower() if isinstance(value, bool) else value
            assert str(value) in default or (value == {} and "`{}`" in default), (key, default)
        else:
            assert "required" in default, (key, default)
    run_defaults = {f.name: f.default for f in fields(RunSpec)}
    rows = _key_rows(text, "## `defaults`")
    for key in top["defaults"]["properties"]:
        default = rows[key][2]
        if key in top["defaults"].get("required", []):
            assert "required" in default, (key, default)
        elif isinstance(run_defaults.get(key), (bool, int, float, str)):
            value = run_defaults[key]
            value = str(value).lower() if isinstance(value, bool) else str(value)
            assert value in default, (key, default)
    rows = _key_rows(text, "## `experiments.<name>`")
    experiment = top["experiments"]["additionalProperties"]["properties"]
    assert set(experiment) <= set(rows) and all(rows[k][2] for k in experiment)


def test_config_readme_holds_configuration_not_results():
    text = (ROOT / "config" / "README.md").read_text()
    assert not re.search(r"\d+\.\d+ ?%", text), re.findall(r".{40}\d+\.\d+ ?%", text)
    assert "make demo" in text and "ms per" not in text


@pytest.mark.slow
def test_the_readme_training_loop_runs_as_written(tmp_path):
    readme = README.read_text()
    section = readme[readme.index("## Using the optimisers") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracies = [float(a) for a in re.findall(r"^epoch \d: ([\d.]+) %", proc.stdout, re.M)]
    assert len(accuracies) == 3 and accuracies[-1] > 70, proc.stdout


def test_nothing_is_read_from_outside_the_checkout():
    outside = re.compile(r"\.\./shared|parents\[1\]\.parent|ROOT\.parent|\.\./\.\./")
    paths = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("config/*.yaml"),
             *ROOT.glob("workflow/**/*.smk"), ROOT / "Makefile", ROOT / "Snakefile"]  # fmt: skip
    for path in paths:
        assert not outside.search(path.read_text()), path.relative_to(ROOT)
    verify = yaml.safe_load((ROOT / "config" / "verify.yaml").read_text())
    assert all(not folder.startswith(("/", "..")) for folder in verify["data_source"].values())


def test_the_workflow_page_shows_the_rule_graph_snakemake_draws():
    page = (ROOT / "docs" / "workflow.md").read_text()
    command = re.search(r"^\.venv/bin/(snakemake .*--rulegraph mermaid-js)$", page, re.M)[1]
    shown = page[page.index("<!-- rulegraph -->") : page.index("<!-- /rulegraph -->")]
    snakemake = ROOT / ".venv" / "bin" / "snakemake"
    program = str(snakemake) if snakemake.exists() else shutil.which("snakemake")
    if program is None:
        pytest.skip("Snakemake is not installed (the workflow extra)")
    proc = subprocess.run([program, *command.split()[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    def graph(text: str) -> tuple[set[str], set[tuple[str, str]]]:
        """The rules and the edges between them (Snakemake numbers rules in no fixed order)."""
        names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]", text, flags=re.M))
        edges = re.findall(r"^\s*(id\d+) --> (id\d+)", text, flags=re.M)
        return set(names.values()), {(names[a], names[b]) for a, b in edges}

    assert graph(proc.stdout) == graph(shown) and len(graph(shown)[1]) > 8


def test_the_c_floor_builds_from_the_checkout(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler: bench_engine.py then reports the floor as absent")
    binary = tmp_path / "floor"
    cmd = [compiler, "-O2", "-fopenmp", ROOT / "benchmarks" / "floor.c", "-o", binary, "-lm"]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    out = subprocess.run([binary, "4099", "3", "2"], capture_output=True, text=True, check=True)
    assert re.search(r"best [0-9.]+ ms", out.stdout), out.stdout
