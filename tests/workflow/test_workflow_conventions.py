"""The workflow as Snakemake users expect it: per-rule conda environments of third-party
packages, profiles that compose with a site profile, and the conventions of the
Snakemake workflow catalog that fit a top-level Snakefile (issue 14)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, _sbatch_line, _train_resources, snakemake

RULES = ROOT / "workflow" / "rules"
ENVS = ROOT / "workflow" / "envs"
QUICK = f"--configfile={ROOT / 'config/quick.yaml'}"
# Python module -> the conda-forge package that provides it.
CONDA_PACKAGE = {
    "torch": "pytorch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "pandas": "pandas",
    "matplotlib": "matplotlib-base",
    "cycler": "matplotlib-base",  # rbd/report/style.py imports it; matplotlib depends on it
    "seaborn": "seaborn-base",
    "yaml": "pyyaml",
    "jsonschema": "jsonschema",
    "tqdm": "tqdm",
    "mlxtend": "mlxtend",
}
# conda-forge package -> its PyPI name in pyproject.toml
PYPI_NAME = {"pytorch": "torch", "matplotlib-base": "matplotlib", "seaborn-base": "seaborn"}


def rules() -> dict[str, str]:
    """rule name -> its text, for every rule in workflow/rules/*.smk."""
    found = {}
    for path in sorted(RULES.glob("*.smk")):
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            found[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]
    assert "train" in found and "download_data" in found, sorted(found)
    return found


def directive(body: str, name: str) -> str | None:
    match = re.search(rf"^    {name}:\n        (.+)$", body, flags=re.M)
    return match[1].strip() if match else None


def env_packages(path: Path) -> dict[str, str]:
    """conda package -> version spec of an environment file; fails on anything else."""
    env = yaml.safe_load(path.read_text())
    assert set(env) <= {"name", "channels", "dependencies"}, (path, sorted(env))
    packages = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"{path.name}: only conda packages, not {dep!r}"
        match = re.fullmatch(r"([a-z0-9][a-z0-9_.\-]*)\s*([<>=!~].*)?", dep.strip())
        assert match, f"{path.name}: {dep!r} is not a conda package spec"
        packages[match[1]] = (match[2] or "").replace(" ", "")
    return packages


def test_every_rule_runs_in_an_env_of_workflow_envs():
    """`conda:` of every rule names a file in workflow/envs (Snakemake copies env files
    under .snakemake/conda/, so one that installs the project by a relative path, as the
    root environment.yml's `-e .` does, cannot work there)."""
    for name, body in rules().items():
        conda = directive(body, "conda")
        assert conda, f"rule {name} has no conda directive"
        path = (RULES / yaml.safe_load(conda)).resolve()
        assert path.parent == ENVS.resolve() and path.is_file(), (name, conda)


def test_env_files_hold_third_party_packages_only():
    files = sorted(ENVS.glob("*.yaml"))
    assert len(files) >= 2, files
    for path in files:
        text = path.read_text()
        assert "pip:" not in text and "-e " not in text, path.name
        packages = env_packages(path)
        assert "rbd" not in packages and "python" in packages, (path.name, packages)
        assert not any(p.startswith((".", "/", "file:", "git+")) for p in packages)


def _rbd_modules() -> dict[str, ast.AST]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / "rbd").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text())
    return found


def _imports(tree: ast.AST, modules) -> tuple[set[str], set[str]]:
    """(rbd modules, third-party top-level modules) a module imports, at any depth; an
    imported rbd name resolves to its submodule, else the module that holds it."""

    def resolve(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    own, other = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "rbd":
                own |= {resolve(f"{node.module}.{a.name}") for a in node.names}
            else:
                other.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (own.add(resolve(alias.name)) if top == "rbd" else other.add(top))
    return own, other - set(sys.stdlib_module_names) - {"__future__"}


# Verbs whose parser is built only when they run (rbd.cli.build_parser): their options'
# choices come from modules that import torch.
OWN_PARSER_ONLY = ("train", "download")


def verb_imports(verb: str) -> set[str]:
    """Third-party modules `rbd VERB` can import: its command's code, the parsers its
    command line builds, and every rbd module they reach (function-level imports
    included)."""
    modules = _rbd_modules()
    functions = {n.name: n for n in modules["rbd.cli"].body if isinstance(n, ast.FunctionDef)}
    handler = f"_cmd_{verb.replace('-', '_')}"
    assert handler in functions, f"rbd {verb}: no {handler} in rbd/cli.py"
    skipped = {f"_add_{v}_parser" for v in OWN_PARSER_ONLY if v != verb}
    assert skipped <= set(functions), skipped
    # The cli functions the verb can run: from main, the parser and its handler, every
    # function they name (called or handed on), except other verbs' handlers and parsers.
    names, todo_fns = set(), ["main", "build_parser", handler]
    while todo_fns:
        name = todo_fns.pop()
        if name in names or name in skipped:
            continue
        names.add(name)
        named = {n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name)}
        todo_fns += [n for n in named & set(functions) if n == handler or not n.startswith("_cmd_")]
    start = [functions[name] for name in sorted(names)]
    seen, todo, found = set(), [], set()
    for node in start:
        own, other = _imports(node, modules)
        todo += own
        found |= other
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        own, other = _imports(modules[name], modules)
        todo += own
        found |= other
    return found


def test_the_table_verbs_reach_no_torch_and_train_reaches_it():
    """The verb graph is read at all, and the torch-free table jobs stay so."""
    assert {"torch", "torchvision", "numpy"} <= verb_imports("train")  # read at all
    for verb in ("aggregate", "render", "plot", "paper-vs-ours", "pick-lr"):
        assert "torch" not in verb_imports(verb), verb


def rule_verb(body: str) -> str:
    if "params.launcher" in body:
        return "train"  # the launcher runs `python -m rbd train` (common.smk)
    match = re.search(r"-m rbd ([a-z][a-z-]*)", body)
    assert match, body
    return match[1]


def test_each_env_provides_what_its_rules_import():
    for name, body in rules().items():
        env = (RULES / yaml.safe_load(directive(body, "conda"))).resolve()
        packages = env_packages(env)
        for module in sorted(verb_imports(rule_verb(body))):
            assert module in CONDA_PACKAGE, (
                f"rbd imports {module}: add its conda package to CONDA_PACKAGE and to the envs"
            )
            assert CONDA_PACKAGE[module] in packages, (name, env.name, module)


def test_env_versions_are_pyprojects():
    """One source of the lower bounds: pyproject.toml (core and extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *sum(project.get("optional-dependencies", {}).values(),
                                             [])]  # fmt: skip
    bounds = {}
    for spec in specs:
        match = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec)
        bounds[match[1].lower()] = match[2].replace(" ", "")
    files = sorted(ENVS.glob("*.yaml"))
    assert files
    for path in files:
        for package, spec in env_packages(path).items():
            if package == "python":
                assert spec == project["requires-python"], path.name
            else:
                assert spec == bounds[PYPI_NAME.get(package, package)], (path.name, package)


def _fake_conda(bin_dir: Path) -> None:
    """A `conda` that answers the questions Snakemake asks before planning a dry run."""
    bin_dir.mkdir(parents=True)
    script = bin_dir / "conda"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  "info --json") echo \'{"conda_prefix": "/nonexistent", "platform": "linux-64"}\';;\n'
        '  "--version") echo "conda 24.7.1";;\n'
        '  "config --get channel_priority --json") echo \'{"get": {"channel_priority": '
        '"strict"}}\';;\n'
        "  *) exit 1;;\n"
        "esac\n"
    )
    script.chmod(0o755)


def test_conda_jobs_import_the_rbd_of_the_checkout(tmp_path):
    """Under --sdm conda every rbd command puts the checkout on PYTHONPATH itself, because
    Snakemake removes PYTHONPATH from a conda job's environment (snakemake/shell.py)."""
    _fake_conda(tmp_path / "bin")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", "-n", "-p",
         "--cores", "2", "--sdm", "conda", "--directory", work, QUICK, "figures/table1.md"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = f"env PYTHONPATH={ROOT} python -m rbd "
    commands = [line for line in proc.stdout.splitlines() if " -m rbd " in line]
    assert commands and all(c.startswith(f"Shell command: {prefix}") for c in commands), commands
    # The launcher is written when a real run starts (onstart), never by a dry run: a run
    # that only marks the outputs done (--touch) writes it without training.
    assert not (work / ".snakemake/rbd/train.sh").exists()
    touched = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", "--touch",
         "--cores", "1", "--sdm", "conda", "--directory", work, QUICK, "figures/table1.md"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert touched.returncode == 0, touched.stdout + touched.stderr
    launcher = (work / ".snakemake/rbd/train.sh").read_text()
    assert f"exec {prefix}train " in launcher, launcher

    # That prefix reaches the checkout's rbd from an interpreter that has none installed.
    base = Path(sys.base_prefix) / "bin" / "python3"
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = [base, "-c", "import rbd, sys; sys.stdout.write(rbd.__file__)"]
    if subprocess.run(probe, cwd=tmp_path, env=bare, capture_output=True).returncode == 0:
        pytest.skip(f"{base} has an rbd installed; cannot show where the jobs' rbd comes from")
    (tmp_path / "interp").mkdir()
    (tmp_path / "interp" / "python").symlink_to(base)
    bare["PATH"] = f"{tmp_path / 'interp'}{os.pathsep}{bare['PATH']}"
    words = prefix.split()[:3] + probe[1:]
    found = subprocess.run(words, cwd=tmp_path, env=bare, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout).resolve() == (ROOT / "rbd" / "__init__.py").resolve()


def test_the_slurm_profile_leaves_resources_to_the_rules_and_the_site():
    """Snakemake 9 composes profiles key by key: a `default-resources` or `set-resources`
    here would replace a site profile's whole list (account, partition)."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "default-resources" not in profile and "set-resources" not in profile, profile


@pytest.mark.parametrize("how", ["--workflow-profile", "--profile"])
def test_a_site_profiles_account_and_partition_reach_every_slurm_job(tmp_path, how):
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "config.yaml").write_text(
        "default-resources:\n  slurm_account: site_acct\n  slurm_partition: site_part\n"
        "set-resources:\n  train:\n    gpu_model: h100\n"
    )
    proc = snakemake(
        "-n", "--profile", site, how, ROOT / "profiles/slurm", "--directory", tmp_path / "w",
        QUICK, "figures/table1.md", "--config", "device=cuda",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = _train_resources(proc.stdout)
    assert jobs
    for run, res in jobs.items():
        assert res.get("slurm_account") == "site_acct", (run, res)
        assert res.get("slurm_partition") == "site_part", (run, res)
        line = _sbatch_line(res, int(res["threads"]))
        assert " -A site_acct " in line and " -p site_part " in line, line
        assert "--gpus=h100:1" in line and "--ntasks-per-gpu" not in line, line
        # the workflow's own sizes stay: runtime from rbd/workflow/cost.py, 4 GB
        assert int(res["runtime"]) >= 10 and res["mem_mb"] == "4000", res


def test_every_rule_logs_and_the_default_target_is_rule_all():
    """Catalog conventions: a log for every rule; `rule all` is the default target."""
    for name, body in rules().items():
        assert directive(body, "log"), f"rule {name} has no log"
    snakefile = (ROOT / "Snakefile").read_text()
    assert re.search(r"^rule all:\n    default_target: True\n", snakefile, flags=re.M)


def test_catalog_usage_file_describes_how_the_workflow_runs(tmp_path):
    """.snakemake-workflow-catalog.yml: the catalog's usage keys, each backed by a test."""
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    stack = usage["software-stack-deployment"]
    assert stack["conda"] is True  # test_every_rule_runs_in_an_env_of_workflow_envs
    assert stack["report"] is True  # test_workflow.py's tiny end-to-end run makes one
    assert stack["apptainer"] is False and stack["apptainer+conda"] is False
    flags = usage["mandatory-flags"]["flags"]
    assert isinstance(flags, (str, list)) and usage["mandatory-flags"]["desc"]
    words = flags.split() if isinstance(flags, str) else flags
    proc = snakemake("-n", *words, "--directory", tmp_path, QUICK, "figures/table1.md")
    assert proc.returncode == 0, proc.stderr


def _documented(readme: str, heading: str) -> set[str]:
    start = readme.index(heading)
    end = readme.find("\n## ", start + 1)
    rows = re.findall(r"^\| (.+?) \|", readme[start:end], flags=re.M)
    return {key for row in rows for key in re.findall(r"`([a-z0-9_]+)`", row)}


def test_config_readme_documents_every_schema_key():
    schema = yaml.safe_load((ROOT / "config/schemas/config.schema.yaml").read_text())
    readme = (ROOT / "config/README.md").read_text()
    top = schema["properties"]
    experiment = top["experiments"]["additionalProperties"]["properties"]
    for heading, keys in [
        ("## Top-level keys", top),
        ("## `defaults`", top["defaults"]["properties"]),
        ("## `experiments.<name>`", experiment),
    ]:
        missing = set(keys) - _documented(readme, heading)
        assert not missing, f"config/README.md, {heading}: {sorted(missing)} undocumented"
