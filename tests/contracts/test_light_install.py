"""The core install is light: `pip install .` gives the optimisers and the engine on torch alone."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT

# What only the workflow extra brings, beyond the train extra.
WORKFLOW_ONLY = ("snakemake", "pandas", "seaborn", "matplotlib", "jsonschema")
# What only the extras bring (train: torchvision, tqdm, mlxtend, yaml; workflow: the rest).
EXTRAS_ONLY = (
    "snakemake",
    "pandas",
    "seaborn",
    "matplotlib",
    "yaml",
    "jsonschema",
    "mlxtend",
    "tqdm",
    "torchvision",
)
# One RBD step on a small model, then the extras-only modules that rbd imported
# (torch itself imports tqdm where it is installed).
ONE_RBD_STEP = textwrap.dedent(f"""
    import sys
    import torch
    by_torch = set(sys.modules)
    import rbd, rbd.bases, rbd.optim.ddp_hook, rbd.optim.distributed
    from rbd.optim import RBD

    model = torch.nn.Linear(5, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = RBD(model.parameters(), lr=0.5, dim=3, seed=0)
    torch.nn.functional.mse_loss(model(torch.randn(4, 5)), torch.randn(4, 2)).backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "no step"
    print("imported:", sorted(m for m in {EXTRAS_ONLY!r} if m in set(sys.modules) - by_torch))
""")


def test_the_core_modules_import_nothing_from_the_extras():
    """In this (full) venv: importing the core and stepping RBD loads no extras-only module."""
    proc = subprocess.run(
        [sys.executable, "-c", ONE_RBD_STEP], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("imported: []"), proc.stdout


def _closure(name: str) -> list[importlib.metadata.Distribution]:
    """The installed distribution `name` and everything it requires, with the extras it
    asks for (markers evaluated for this interpreter)."""
    found, todo, done = {}, [(name, frozenset())], set()
    while todo:
        key, extras = todo.pop()
        key = canonicalize_name(key)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        found[key] = dist = importlib.metadata.distribution(key)
        for spec in dist.requires or []:
            req = Requirement(spec)
            wanted = req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            )
            if wanted:
                todo.append((req.name, frozenset(req.extras)))
    return list(found.values())


def _link_only(dists, folder: Path) -> None:
    """Symlinks in `folder` to the top-level files and packages of `dists`, nothing else."""
    folder.mkdir()
    for dist in dists:
        for top in {f.parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__") or top.endswith(".pth") or (folder / top).exists():
                continue
            (folder / top).symlink_to(Path(dist.locate_file(top)).resolve())


@pytest.mark.slow
def test_pip_install_without_extras_trains_rbd_on_torch_alone(tmp_path):
    """`pip install .` into a fresh venv whose only third-party packages are torch and
    torch's own requirements.

    Honest where it matters, cheap where it can be: installing this machine's 5.5 GB
    CUDA torch into a new venv would take minutes, so torch's distributions (torch and
    its declared requirements, read from their metadata) are symlinked into one folder
    that a .pth file puts on the new venv's path; nothing else of the project's venv is
    visible (pandas must not be found). pip then resolves rbd's core requirements
    against that environment for real: a core requirement beyond torch would be
    installed and show in pip's "Successfully installed" line, and rbd's metadata must
    list nothing but torch outside an extra. The package is built from a copy of the
    sources, so the checkout gets no build/ folder.
    """
    assert "\npip install .  " in (ROOT / "README.md").read_text()  # the command run here
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "rbd", source / "rbd", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _link_only(_closure("torch"), tmp_path / "torch-only")
    (Path(site) / "torch_only.pth").write_text(f"{tmp_path / 'torch-only'}\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", source],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    installed = [line for line in pip.stdout.splitlines() if line.startswith("Successfully inst")]
    assert installed == ["Successfully installed rbd-0.1.0"], pip.stdout[-2000:]

    check = textwrap.dedent("""
        import importlib.metadata, importlib.util, sys
        import rbd
        assert rbd.__file__.startswith(sys.prefix), rbd.__file__  # the installed copy
        assert importlib.util.find_spec("pandas") is None, "the venv is not light"
        print(sorted(r for r in importlib.metadata.requires("rbd") if "extra ==" not in r))
    """)
    outside = tmp_path / "elsewhere"  # not the checkout, whose rbd/ would shadow the install
    outside.mkdir()
    runs = [
        subprocess.run([python, "-c", script], capture_output=True, text=True, env=env, cwd=outside)
        for script in (check, ONE_RBD_STEP)
    ]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert runs[0].stdout.strip() == "['torch>=2.3']", runs[0].stdout
    assert runs[1].stdout.strip().endswith("imported: []"), runs[1].stdout


@pytest.mark.slow
def test_rbd_train_runs_without_the_workflow_extra(tmp_path):
    """The train extra is enough for `rbd train`: a short run with the workflow extra's
    packages made unimportable (None in sys.modules, as if not installed)."""
    script = textwrap.dedent(f"""
        import sys
        for name in {WORKFLOW_ONLY!r}:
            sys.modules[name] = None
        from rbd.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    out = tmp_path / "run"
    args = ["train", "--method", "rbd", "--model", "fc", "--dataset", "mnist5k", "--dim", "10",
            "--lr", "1", "--epochs", "1", "--train-limit", "256", "--out", out]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "run.json").is_file() and (out / "metrics.csv").is_file()


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        (("numpy", "torchvision", "yaml"), ["train", "--help"], "train"),
        (("pandas",), ["aggregate", "--experiment", "t", "--out", "t.csv", "run"], "workflow"),
    ],
)
def test_the_command_names_the_missing_extra_in_one_line(blocked, args, extra):
    """`rbd` on an install without its extra says which extra to install, no traceback."""
    script = textwrap.dedent(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None
        from rbd.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"pip install 'rbd[{extra}]'" in proc.stderr
