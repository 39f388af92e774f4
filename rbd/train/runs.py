"""A training run's identity: its settings, and the directory name that encodes them.

Snakemake matches `results/runs/{run}/run.json`; the run key is the only place
where settings become a path and back, so the workflow and the CLI cannot
disagree on what a directory holds.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields

from rbd import BASES_VERSION
from rbd.train.sizes import num_params

# The files of a run directory: the finished run's metrics and record, and the checkpoint
# of an unfinished one.
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
RUN_JSON = "run.json"


# The forms a compartments or switch setting takes (the config schema holds the same
# patterns; tests/test_config.py checks that they agree).
COMPARTMENTS_PATTERN = (
    r"none|layer|chunk:[1-9][0-9]*|compression:([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)"
)
SWITCH_PATTERN = r"none|sgd_first:[1-9][0-9]*|sgd_last:[1-9][0-9]*"


class RunDirectoryError(ValueError):
    """A run directory holds a run made with other settings, or a file that cannot be read."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a run's result (operational settings excluded)."""

    method: str
    model: str
    dataset: str
    dim: int
    distribution: str
    lr: float
    epochs: int
    seed: int
    batch_size: int = 32
    compartments: str = "none"
    normalize: bool = True
    augment: bool = False
    switch: str = "none"
    sgd_lr: float | None = None
    nes_sigma: float = 0.01
    # NES: "offspring" evaluates each offspring on its own minibatch, so one update
    # consumes d minibatches (the authors' code; an epoch is the training set seen once);
    # "shared" evaluates all d on one minibatch (one update per minibatch).
    nes_batches: str = "offspring"
    # Initial weights: "glorot" (Keras's defaults, as the authors' models) or "torch".
    init: str = "glorot"
    # Distributed RBD (rbd.optim.distributed); None: one process, no process group.
    workers: int | None = None
    bases: str = "worker"
    combine: str = "sum"
    # RBD's coordinates: "backward" (gradient, then c = Phi g) or "forward" (d jvps).
    coordinates: str = "backward"
    # NES: divide the update (not the perturbations) by sqrt(D), as the authors' NES
    # does by applying it through RBD's normalised product (models/nes.py).
    nes_normalize: bool = False
    # Compartments (with normalize): directions scaled by 1/sqrt(n_k) of their own
    # compartment ("compartment") or by 1/sqrt(D) of the network ("network", the
    # authors' auto_norm(D)); even_dims: compression d_k rounded up to even (theirs).
    compartment_scale: str = "compartment"
    even_dims: bool = False
    # FPD: forward and backward pass at theta + Phi^T c_prev (c_prev: the last step's
    # coordinate gradient), as the authors' FPD runs them (models/rbd.py).
    fpd_offset: bool = False
    # RBD, FPD: how the coordinate gradient becomes the coordinate step (sgd, momentum,
    # adam; rbd.optim.update_rules); SGD: torch.optim.SGD, SGD with momentum, or Adam on
    # the parameters. beta2: Adam's second-moment decay.
    update_rule: str = "sgd"
    beta2: float = 0.999
    # An L2 term l2 * sum of squared kernel weights (dense and convolution weights, not
    # biases) added to the loss the gradient is taken of, as Keras's l2 regulariser.
    l2: float = 0.0
    # How directions are drawn from seeds (rbd.BASES_VERSION); the key of every method
    # but SGD names it, so runs drawn with older bases keep their own directories.
    bases_version: int = BASES_VERSION

    @property
    def key(self) -> str:
        return run_key(self)

    def cli_args(self) -> list[str]:
        """`rbd train` flags that reproduce this run (without --out)."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            else:
                args += [flag, _fmt(value)]
        return args

    def shell_args(self) -> str:
        """The CLI flags, each quoted for a POSIX shell."""
        return shlex.join(self.cli_args())


def run_problems(spec: RunSpec) -> list[tuple[str, str]]:
    """(setting, why) for each setting of ``spec`` that cannot work with the others.

    The one list of these rules: the config (rbd.workflow.config), the command line
    (rbd.cli) and the training loop (rbd.train.settings.check_settings) each report
    them in their own words for the setting (a config key, a flag, a field).
    """
    problems = []
    if spec.method != "sgd" and spec.dim > (size := num_params(spec.model, spec.dataset)):
        problems.append(
            (
                "dim",
                f"dim={spec.dim} exceeds D = {size:,}, the parameters of "
                f"{spec.model} on {spec.dataset}; choose dim <= {size:,}",
            )
        )
    if spec.switch != "none" and not 0 < int(spec.switch.partition(":")[2]) < spec.epochs:
        problems.append(
            ("switch", f"{spec.switch!r} must switch strictly between epoch 0 and {spec.epochs}")
        )
    if spec.workers is not None and spec.method != "rbd":
        problems.append(
            ("workers", f"distributed training needs method 'rbd', not {spec.method!r}")
        )
    if spec.workers is not None and spec.switch != "none":
        problems.append(
            ("workers", f"distributed training needs switch 'none', not {spec.switch!r}")
        )
    if spec.coordinates != "backward" and (spec.method != "rbd" or spec.workers is not None):
        problems.append(("coordinates", f"{spec.coordinates!r} needs method 'rbd' without workers"))
    backward = spec.coordinates == "backward" and spec.workers is None
    if spec.update_rule != "sgd" and (spec.method == "nes" or not backward):
        problems.append(
            (
                "update_rule",
                f"{spec.update_rule!r} needs method sgd, rbd or fpd, one process and backward "
                f"coordinates (not method {spec.method!r}, coordinates {spec.coordinates!r}, "
                f"workers {spec.workers})",
            )
        )
    if spec.l2 < 0 or (spec.l2 > 0 and (spec.method == "nes" or not backward)):
        problems.append(
            (
                "l2",
                f"l2={spec.l2} must be >= 0, and > 0 only for a gradient taken by a backward "
                f"pass in one process (not method {spec.method!r}, coordinates "
                f"{spec.coordinates!r}, workers {spec.workers})",
            )
        )
    return problems


# Optional settings written into the key only when they differ from the default,
# so that adding a setting later does not rename existing runs.
_OPTION_TOKENS = {
    "compartments": "c",
    "normalize": "norm",
    "augment": "aug",
    "switch": "sw",
    "sgd_lr": "slr",
    "nes_sigma": "sig",
    "nes_batches": "nb",
    "init": "init",
    "workers": "w",
    "bases": "bases",
    "combine": "comb",
    "coordinates": "coord",
    "nes_normalize": "nnorm",
    "compartment_scale": "cs",
    "even_dims": "even",
    "fpd_offset": "off",
    "update_rule": "rule",
    "beta2": "b2",
    "l2": "l2",
}
# Written into every key of a method that draws bases, default or not: a key without
# it is a run of version 1, from before the version was recorded.
_VERSION_TOKEN = "bv"
_FIRST_BASES_VERSION = 1
_ESCAPES = (("_", "+"), (":", "@"))
_HEAD = re.compile(r"^d(?P<dim>\d+)_(?P<distribution>[a-z0-9-]+)$")
_TAIL = re.compile(r"^seed(?P<seed>\d+)$")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _escape(text: str) -> str:
    for raw, safe in _ESCAPES:
        text = text.replace(raw, safe)
    return text


def _unescape(text: str) -> str:
    for raw, safe in _ESCAPES:
        text = text.replace(safe, raw)
    return text


def run_key(spec: RunSpec) -> str:
    """`dataset/model/method/d{dim}_{dist}/lr-{lr}_e-{epochs}_b-{batch}[_opt-val]/seed{seed}`."""
    defaults = {f.name: f.default for f in fields(RunSpec)}
    tokens = [f"lr-{_fmt(spec.lr)}", f"e-{spec.epochs}", f"b-{spec.batch_size}"]
    for name, prefix in _OPTION_TOKENS.items():
        value = getattr(spec, name)
        if value != defaults[name]:
            tokens.append(f"{prefix}-{_escape(_fmt(value))}")
    if spec.method != "sgd":
        tokens.append(f"{_VERSION_TOKEN}-{spec.bases_version}")
    return "/".join(
        [
            spec.dataset,
            spec.model,
            spec.method,
            f"d{spec.dim}_{spec.distribution}",
            "_".join(tokens),
            f"seed{spec.seed}",
        ]
    )


def parse_run_key(key: str) -> RunSpec:
    """Inverse of `run_key`; raises ValueError naming the part it cannot read."""
    parts = key.strip("/").split("/")
    if len(parts) != 6:
        raise ValueError(f"run key {key!r} must have 6 parts, not {len(parts)}")
    dataset, model, method, head, options, tail = parts
    head_match, tail_match = _HEAD.match(head), _TAIL.match(tail)
    if not head_match:
        raise ValueError(f"run key part {head!r} is not 'd<dim>_<distribution>'")
    if not tail_match:
        raise ValueError(f"run key part {tail!r} is not 'seed<n>'")
    types = {f.name: f.type for f in fields(RunSpec)}
    by_prefix = {"lr": "lr", "e": "epochs", "b": "batch_size", _VERSION_TOKEN: "bases_version"}
    by_prefix |= {p: n for n, p in _OPTION_TOKENS.items()}
    values: dict = {} if method == "sgd" else {"bases_version": _FIRST_BASES_VERSION}
    for token in options.split("_"):
        prefix, sep, raw = token.partition("-")
        if not sep or prefix not in by_prefix:
            raise ValueError(f"run key option {token!r} is not one of {sorted(by_prefix)}")
        name = by_prefix[prefix]
        values[name] = _convert(_unescape(raw), types[name])
    return RunSpec(
        method=method,
        model=model,
        dataset=dataset,
        dim=int(head_match["dim"]),
        distribution=head_match["distribution"],
        seed=int(tail_match["seed"]),
        **values,
    )


def _convert(raw: str, type_name: str):
    if "bool" in type_name:
        return raw == "1"
    if "float" in type_name:
        return float(raw)
    if "int" in type_name:
        return int(raw)
    return raw
