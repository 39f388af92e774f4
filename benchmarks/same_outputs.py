"""Same outputs before and after a refactor: record short runs with one tree, compare two.

A refactor proves itself by identical outputs (issue 15, issue 26). This records, for a
checkout TREE, a set of short training runs that between them take every code path a
result depends on (each method and distribution, compartments, switching, forward
coordinates, the CNN, 1 and 2 distributed workers, a run killed mid-epoch and resumed),
and writes what each produced in a form that can be compared bit for bit:

- metrics.csv without its wall-time columns (the tree's own list of them),
- run.json without the finishing time, the seconds and the package versions,
- the checkpoint.pt each killed run left: each tensor's SHA-256 and every other
  value but wall times, read with ``weights_only=True``.

``--resume-from DIR`` resumes the killed runs from the checkpoints another tree's
recording left in DIR (an old checkpoint read by the new code). The runs use the
bundled mnist5k, so nothing is downloaded; a recording takes about 3 minutes on one
core. Usage::

    python benchmarks/same_outputs.py record --tree ../before --out /tmp/before
    python benchmarks/same_outputs.py record --tree . --out /tmp/after --resume-from /tmp/before
    python benchmarks/same_outputs.py compare /tmp/before /tmp/after

``compare`` prints one line per run and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Every run: fc on the bundled mnist5k, 192 training images (6 minibatches an epoch),
# 2 epochs, a checkpoint at every chance.
BASE = {"model": "fc", "dataset": "mnist5k", "dim": 50, "distribution": "gaussian",
        "epochs": 2, "seed": 3, "train_limit": 192, "threads": 1,
        "checkpoint_minutes": 1e-9}  # fmt: skip
RBD = {"method": "rbd", "lr": 4.0}
CASES = {
    "sgd": {"method": "sgd", "lr": 2**-5, "dim": 0, "distribution": "none"},
    "sgd-augment": {"method": "sgd", "lr": 2**-5, "dim": 0, "distribution": "none",
                    "augment": True},
    "rbd-gaussian": RBD,
    "rbd-uniform": RBD | {"distribution": "uniform"},
    "rbd-rademacher": RBD | {"distribution": "rademacher"},
    "rbd-bernoulli-official": RBD | {"distribution": "bernoulli-official"},
    "rbd-srht": RBD | {"distribution": "srht"},
    "rbd-fastfood": RBD | {"distribution": "fastfood"},
    "rbd-unnormalized-torch-init": RBD | {"normalize": False, "init": "torch", "lr": 0.5},
    "rbd-forward": RBD | {"derivatives": "forward"},
    "rbd-layer": RBD | {"compartments": "layer"},
    "rbd-chunk": RBD | {"compartments": "chunk:30000"},
    "rbd-compression": RBD | {"compartments": "compression:2000", "even_dims": True,
                              "compartment_scale": "network"},
    "rbd-sgd-first": RBD | {"switch": "sgd_first:1", "sgd_lr": 2**-5},
    "rbd-sgd-last": RBD | {"switch": "sgd_last:1", "sgd_lr": 2**-5},
    "rbd-cnn": RBD | {"model": "cnn", "lr": 0.5, "train_limit": 64, "augment": True},
    "fpd": {"method": "fpd", "lr": 16.0},
    "fpd-offset": {"method": "fpd", "lr": 16.0, "fpd_offset": True},
    "nes": {"method": "nes", "lr": 2**-5, "dim": 2},
    "nes-shared-normalized": {"method": "nes", "lr": 2**-5, "dim": 20,
                              "nes_batches": "shared", "nes_normalize": True},
    "rbd-1-worker": RBD | {"workers": 1},
    "rbd-2-workers": RBD | {"workers": 2},
    "rbd-2-workers-shared-mean": RBD | {"workers": 2, "sharing": "shared", "combine": "mean"},
    "rbd-2-workers-split": RBD | {"workers": 2, "sharing": "split"},
}  # fmt: skip
# Runs killed mid-epoch (KeyboardInterrupt from inside a step: the second epoch's third
# minibatch, NES's second update of that epoch) and resumed in the same directory.
KILLED = {"rbd-gaussian": 9, "rbd-layer": 9, "rbd-sgd-first": 9, "fpd-offset": 9, "nes": 5,
          "rbd-forward": 9}  # fmt: skip
RUN_JSON_VOLATILE = ("finished", "seconds", "versions")
# What a recording made before a declared change of names or formats calls by another name
# (issue 36: one word per idea; the checkpoint's format 2), applied to the older side.
RENAMED = {"bases": "sharing", "coordinates": "derivatives", "epoch_acc": "epoch_totals"}
# Settings added since, compared only where the older side has them: the newer side must
# hold them at these values (their defaults), so that the runs are the same runs.
ADDED = {"update_rule": "'sgd'", "beta2": "0.999", "l2": "0.0", "format": "2"}

# Runs in a child process whose `rbd` is the tree's (PYTHONPATH first): trains one case,
# killed at step `at` and resumed when at > 0, then prints its record as JSON.
DRIVER = r"""
import hashlib, json, shutil, sys
from pathlib import Path
import torch
settings, out, at, resume_from = json.loads(sys.argv[1])
out = Path(out)
import rbd.train.steps as steps
from rbd.optim.distributed import STEP_TIME_COLUMNS as STEP_TIME
from rbd.train import TrainConfig, train
from rbd.train.loop import EPOCH_TIME_COLUMNS as EPOCH_TIME

names = {"step": "train_step", "nes": "nes_offspring_step"}
cfg = TrainConfig(**settings)
run = train
if cfg.workers is not None:
    from rbd.train.launch import launch as run


# Wall times a checkpoint holds (the elapsed time, an epoch's seconds so far).
WALL_TIME = set(EPOCH_TIME) | set(STEP_TIME) | {"elapsed"}


def tensors(value, path, into):
    if path.rpartition("/")[2] in WALL_TIME:
        return into
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        into[path] = [str(t.dtype), list(t.shape),
                      hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
                      if t.numel() else ""]
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            tensors(value[k], f"{path}/{k}", into)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            tensors(v, f"{path}/{i}", into)
    else:
        into[path] = repr(value)
    return into


def checkpoint(path):
    return tensors(torch.load(path, weights_only=True), "", {})


record = {}
if at:
    if resume_from:
        shutil.copytree(Path(resume_from) / "cut", out)
    else:
        name = names["nes" if cfg.method == "nes" and cfg.nes_batches == "offspring" else "step"]
        real, calls = getattr(steps, name), [0]

        def cut(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        setattr(steps, name, cut)
        try:
            run(cfg, out)
            raise SystemExit("the run was not interrupted: no step " + str(at))
        except KeyboardInterrupt:
            pass
        setattr(steps, name, real)
        shutil.copytree(out, out.parent / "cut", ignore=shutil.ignore_patterns(".rbd-lock"))
    record["cut_checkpoint"] = checkpoint(out / "checkpoint.pt")
run(cfg, out)
lines = (out / "metrics.csv").read_text().splitlines()
header = lines[0].split(",")
keep = [i for i, c in enumerate(header) if c not in WALL_TIME]
record["metrics"] = [",".join(row.split(",")[i] for i in keep) for row in lines]
info = json.loads((out / "run.json").read_text())
record["run_json"] = {k: v for k, v in info.items() if k not in RUN_JSON_VOLATILE}
print(json.dumps(record, sort_keys=True))
"""


def record(tree: Path, out: Path, resume_from: Path | None, cases: list[str]) -> int:
    """Record every case with `tree`'s rbd into out/NAME.json (and out/NAME/ its files)."""
    out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONPATH": str(tree.resolve()), "OMP_NUM_THREADS": "1"}
    driver = DRIVER.replace("RUN_JSON_VOLATILE", repr(RUN_JSON_VOLATILE))
    failed = 0
    for name in cases:
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        at = KILLED.get(name, 0)
        source = str(resume_from / name) if (resume_from and at) else None
        args = [json.dumps([BASE | CASES[name], str(run_dir / "run"), at, source])]
        proc = subprocess.run([sys.executable, "-c", driver, *args], env=env,
                              capture_output=True, text=True, cwd=tree)  # fmt: skip
        if proc.returncode != 0:
            failed += 1
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        (out / f"{name}.json").write_text(proc.stdout.strip().splitlines()[-1] + "\n")
        print(f"{name}: recorded" + (" (killed and resumed)" if at else ""))
    return 1 if failed else 0


def _flat(value, path: str, into: dict) -> dict:
    """Every leaf of a recording by its path, the older names renamed (RENAMED)."""
    if isinstance(value, dict):
        for k, v in value.items():
            parts = k.split("/")
            k = "/".join(RENAMED.get(p, p) for p in parts)
            k = RENAMED.get(k, k)
            _flat(v, f"{path}/{k}" if path else k, into)
    else:
        into[path] = value
    return into


def _differences(ra: dict, rb: dict) -> list[str]:
    """The paths where b differs from a: a leaf only b has is a difference unless it is an
    ADDED setting at its default (checkpoints hold settings as repr strings, run.json as
    JSON values: either form is accepted)."""
    fa, fb = _flat(ra, "", {}), _flat(rb, "", {})
    diffs = []
    for path in sorted(set(fa) | set(fb)):
        if path in fa and path in fb:
            if fa[path] != fb[path]:
                diffs.append(path)
            continue
        name = path.rsplit("/", 1)[1]
        added = path in fb and name in ADDED
        if not added or ADDED[name] not in (repr(fb[path]), str(fb[path])):
            diffs.append(path)
    return diffs


def compare(a: Path, b: Path) -> int:
    """One line per run; 1 when any run differs or is missing on one side. ``a`` is the
    older recording: its names are renamed (RENAMED) before the comparison."""
    names = sorted({p.stem for p in a.glob("*.json")} | {p.stem for p in b.glob("*.json")})
    bad = 0
    for name in names:
        pa, pb = a / f"{name}.json", b / f"{name}.json"
        if not (pa.exists() and pb.exists()):
            print(f"{name}: only in {a if pa.exists() else b}")
            bad += 1
            continue
        diffs = _differences(json.loads(pa.read_text()), json.loads(pb.read_text()))
        print(f"{name}: " + ("identical" if not diffs else "DIFFERS in " + ", ".join(diffs[:8])))
        bad += bool(diffs)
    print(f"{len(names) - bad} of {len(names)} runs identical")
    return 1 if bad or not names else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record the short runs with one tree")
    rec.add_argument("--tree", type=Path, required=True, help="checkout whose rbd runs")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--resume-from", type=Path, help="resume killed runs from this recording")
    rec.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    cmp_ = sub.add_parser("compare", help="compare two recordings")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        return record(args.tree, args.out, args.resume_from, args.cases)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
