"""A training run's specification: every setting once, with what the rest of the code needs
to know of it, the run key that names its directory, and the rules between settings.

Each field of `RunSpec` (what changes a result) and `TrainConfig` (how a run executes)
carries metadata (`setting`): its help text, the methods that read it (others keep the
default, so that equal runs share one key), the optimiser argument it feeds, its run-key
token, its CLI type and choices, and whether a config experiment may give a list of it.
The CLI's train flags (rbd.cli), `RunSpec.cli_args`, the optimiser options
(`method_options`) and the config's expansion (rbd.workflow.config) are derived from it.

Snakemake matches `results/runs/{run}/run.json`; the run key is the only place where
settings become a path and back, so the workflow and the CLI cannot disagree on what a
directory holds.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field, fields

from rbd.spec.choices import (
    BASES_METHODS,
    BASES_VERSION,
    COMBINE,
    COMPARTMENT_SCALES,
    COMPARTMENTS_PATTERN,
    DATASETS,
    DERIVATIVES,
    DEVICE_PATTERN,
    DISTRIBUTIONS,
    INITS,
    METHODS,
    MODELS,
    NES_BATCHES,
    NO_DISTRIBUTION,
    SHARING,
    SWITCH_PATTERN,
    UPDATE_RULES,
)
from rbd.spec.facts import num_params

# The files of a run directory: the finished run's metrics and record, and the checkpoint
# of an unfinished one.
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
RUN_JSON = "run.json"

# The methods that read a setting, named once.
ALL = METHODS
SUBSPACE = ("rbd", "fpd")
GRADIENT = ("sgd", "rbd", "fpd")


def setting(
    default=dataclasses.MISSING,
    *,
    help: str,
    methods: tuple[str, ...] = ALL,
    option: str | None = None,
    takes: tuple[str, ...] | None = None,
    token: str | None = None,
    kind: str | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: str | None = None,
    grid: str | None = None,
    flag: bool = True,
    cli_default=None,
):
    """A dataclass field with its metadata.

    methods: the methods whose run keys carry it (the config's expansion resets it to the
        default for the others, so that equal runs share one key).
    option: the optimiser argument it is passed as (`method_options`), if any, to the
        optimisers of the methods in ``takes`` (default: ``methods``).
    token: its run-key token (written only when it differs from the default).
    kind: how the CLI parses it: "positive_int", "non_negative_int", "positive_float",
        "float", "lr", "str" (bools are --flag/--no-flag); choices/pattern: what it takes.
    grid: the config key that gives a list of it (e.g. "dims"); None: a scalar key of the
        same name; flag=False: not a `rbd train` flag; cli_default: the flag's default
        where the field has none.
    """
    meta = dict(
        help=help, methods=methods, option=option, takes=takes or methods, token=token,
        kind=kind, choices=choices, pattern=pattern, grid=grid, flag=flag,
        cli_default=cli_default,
    )  # fmt: skip
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a run's result (operational settings excluded)."""

    method: str = setting(help="the optimiser", choices=METHODS, grid="methods")
    model: str = setting(help="the network", choices=MODELS, grid="models")
    dataset: str = setting(help="the data set", choices=DATASETS, grid="datasets")
    dim: int = setting(
        help="subspace dimension d (SGD: 0)", kind="non_negative_int", grid="dims",
        cli_default=250,
    )  # fmt: skip
    distribution: str = setting(
        help="direction distribution (SGD: none)", choices=DISTRIBUTIONS + (NO_DISTRIBUTION,),
        grid="distributions", cli_default="gaussian",
    )  # fmt: skip
    lr: float = setting(
        help="learning rate: a number, 2^k, or base_learning_rate(2^k): the authors' "
        "notation, 2^k x batch size", kind="lr", grid="lrs",
    )  # fmt: skip
    epochs: int = setting(help="epochs", kind="positive_int", cli_default=5, grid=None)
    seed: int = setting(help="run seed", kind="non_negative_int", grid="seeds", cli_default=0)
    batch_size: int = setting(32, help="minibatch size", kind="positive_int")
    compartments: str = setting(
        "none", help="none, layer, chunk:<n> or compression:<f>", methods=BASES_METHODS,
        token="c", pattern=COMPARTMENTS_PATTERN, grid="compartments",
    )  # fmt: skip
    normalize: bool = setting(
        True, help="divide directions by sqrt(D) (else the update by d)", option="normalize",
        takes=SUBSPACE, token="norm",
    )  # fmt: skip
    augment: bool = setting(False, help="the paper's data augmentation", token="aug")
    switch: str = setting(
        "none", help="none, sgd_first:<epoch> or sgd_last:<epoch>", methods=BASES_METHODS,
        token="sw", pattern=SWITCH_PATTERN, grid="switches",
    )  # fmt: skip
    sgd_lr: float | None = setting(
        None, help="learning rate of the SGD phase when switching", token="slr", kind="lr",
        methods=BASES_METHODS,
    )  # fmt: skip
    nes_sigma: float = setting(
        0.01, help="NES: perturbation scale", methods=("nes",), option="sigma", token="sig",
        kind="positive_float",
    )  # fmt: skip
    # "offspring" evaluates each offspring on its own minibatch, so one update consumes d
    # minibatches (the authors' code; an epoch is the training set seen once); "shared"
    # evaluates all d on one minibatch (one update per minibatch).
    nes_batches: str = setting(
        "offspring", help="NES: each offspring on its own minibatch (the authors') or all on one",
        methods=("nes",), token="nb", choices=NES_BATCHES,
    )  # fmt: skip
    init: str = setting(
        "glorot", help="initial weights: glorot (Keras, as the authors), torch (PyTorch's "
        "defaults) or he_normal (Keras, as Li et al.)", token="init", choices=INITS,
    )  # fmt: skip
    # Distributed RBD (rbd.optim.distributed); None: one process, no process group.
    workers: int | None = setting(
        None, help="distributed RBD with W workers (torchrun's processes, else W spawned "
        "here)", methods=BASES_METHODS, token="w", kind="positive_int", grid="workers",
    )  # fmt: skip
    sharing: str = setting(
        "worker", help="distributed: own bases per worker, one shared set, or d split across "
        "workers", methods=BASES_METHODS, token="bases", choices=SHARING, grid="sharing",
    )  # fmt: skip
    combine: str = setting(
        "sum", help="distributed: sum (the authors') or mean of the workers' updates",
        methods=BASES_METHODS, token="comb", choices=COMBINE,
    )  # fmt: skip
    derivatives: str = setting(
        "backward", help="RBD: coordinates from the gradient (backward) or by d forward-mode "
        "jvps", methods=("rbd",), option="derivatives", token="coord", choices=DERIVATIVES,
    )  # fmt: skip
    # NES: divide the update (not the perturbations) by sqrt(D), as the authors' NES does by
    # applying it through RBD's normalised product (models/nes.py).
    nes_normalize: bool = setting(
        False, help="NES: divide the update (not the perturbations) by sqrt(D), as the authors",
        methods=("nes",), option="normalize_update", token="nnorm",
    )  # fmt: skip
    # Compartments (with normalize): directions scaled by 1/sqrt(n_k) of their own
    # compartment ("compartment") or by 1/sqrt(D) of the network ("network", the authors'
    # auto_norm(D)); even_dims: compression d_k rounded up to even (theirs).
    compartment_scale: str = setting(
        "compartment", help="compartments: directions / sqrt(n_k) of each, or / sqrt(D) "
        "(network, the authors')", methods=SUBSPACE, option="compartment_scale", token="cs",
        choices=COMPARTMENT_SCALES,
    )  # fmt: skip
    even_dims: bool = setting(
        False, help="compression:<f>: round each d_k up to an even number (the authors')",
        methods=SUBSPACE, option="even_dims", token="even",
    )  # fmt: skip
    fpd_offset: bool = setting(
        False, help="FPD: gradient at theta + Phi^T c_prev, as the authors' FPD (models/rbd.py)",
        methods=("fpd",), option="offset", token="off",
    )  # fmt: skip
    update_rule: str = setting(
        "sgd", help="RBD, FPD: the coordinates' update rule; SGD: SGD, momentum SGD or Adam",
        methods=GRADIENT, option="update_rule", token="rule", choices=UPDATE_RULES,
    )  # fmt: skip
    beta2: float = setting(
        0.999, help="Adam's second-moment decay", methods=GRADIENT, option="beta2",
        token="b2", kind="float",
    )  # fmt: skip
    l2: float = setting(
        0.0, help="add l2 * (sum of squared kernel weights) to the loss, as Keras's l2()",
        methods=GRADIENT, token="l2", kind="float",
    )  # fmt: skip
    # How directions are drawn from seeds; the key of every method but SGD names it, so
    # runs drawn with older bases keep their own directories.
    bases_version: int = setting(
        BASES_VERSION, help=f"how directions are drawn from seeds; this rbd draws version "
        f"{BASES_VERSION}", methods=BASES_METHODS, kind="positive_int",
    )  # fmt: skip

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


@dataclass(frozen=True)
class TrainConfig(RunSpec):
    """A run's settings plus how to execute it (which do not change its result)."""

    data_dir: str | None = setting(None, help="data root (default: $RBD_DATA_DIR)")
    overwrite: bool = setting(
        False, help="replace a run directory that holds a run with other settings"
    )
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N", pattern=DEVICE_PATTERN)
    threads: int | None = setting(None, help="torch's CPU threads", kind="positive_int")
    checkpoint_minutes: float = setting(
        10.0, help="minutes between checkpoints", kind="positive_float"
    )
    divergence_loss: float = setting(
        1e3, help="a training loss above this ends the run as diverged", kind="positive_float"
    )
    train_limit: int | None = setting(
        None, help="use only the first N training images (smoke tests)", kind="positive_int"
    )
    eval_batch_size: int = setting(1000, help="images per evaluation batch", flag=False)

    @property
    def spec(self) -> RunSpec:
        names = {f.name for f in fields(RunSpec)}
        return RunSpec(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def reads(method: str, name: str) -> bool:
    """Whether runs of ``method`` read setting ``name`` (RunSpec field)."""
    return method in RunSpec.__dataclass_fields__[name].metadata["methods"]


def grid_keys() -> dict[str, str]:
    """Config key -> RunSpec field for the settings an experiment may give as a list."""
    return {f.metadata["grid"]: f.name for f in fields(RunSpec) if f.metadata["grid"]}


def scalar_keys() -> tuple[str, ...]:
    """The settings an experiment (and `defaults`) may give as one value: those with no
    list form, but the run's learning rate of the SGD phase (set from learning_rates) and
    the bases version (this rbd's)."""
    fixed = ("sgd_lr", "bases_version")
    return tuple(f.name for f in fields(RunSpec) if not f.metadata["grid"] and f.name not in fixed)


def method_options(method: str, spec: RunSpec) -> dict:
    """The optimiser arguments ``spec`` gives a ``method`` optimiser beyond lr, dim,
    distribution, seed and compartments: the fields with an ``option`` that it takes."""
    return {
        f.metadata["option"]: getattr(spec, f.name)
        for f in fields(RunSpec)
        if f.metadata["option"] and method in f.metadata["takes"]
    }


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
    if spec.derivatives != "backward" and (spec.method != "rbd" or spec.workers is not None):
        problems.append(("derivatives", f"{spec.derivatives!r} needs method 'rbd' without workers"))
    backward = spec.derivatives == "backward" and spec.workers is None
    if spec.update_rule != "sgd" and (not reads(spec.method, "update_rule") or not backward):
        problems.append(
            (
                "update_rule",
                f"{spec.update_rule!r} needs method sgd, rbd or fpd, one process and backward "
                f"derivatives (not method {spec.method!r}, derivatives {spec.derivatives!r}, "
                f"workers {spec.workers})",
            )
        )
    if spec.l2 < 0 or (spec.l2 > 0 and (not reads(spec.method, "l2") or not backward)):
        problems.append(
            (
                "l2",
                f"l2={spec.l2} must be >= 0, and > 0 only for a gradient taken by a backward "
                f"pass in one process (not method {spec.method!r}, derivatives "
                f"{spec.derivatives!r}, workers {spec.workers})",
            )
        )
    return problems


# Run keys: optional settings are written only when they differ from the default, so that
# adding a setting later does not rename existing runs; the bases version is written into
# every key of a method that draws bases, default or not (a key without it is a run of
# version 1, from before the version was recorded: committed verification data has some).
_VERSION_TOKEN = "bv"
_FIRST_BASES_VERSION = 1
_ESCAPES = (("_", "+"), (":", "@"))
_HEAD = re.compile(r"^d(?P<dim>\d+)_(?P<distribution>[a-z0-9-]+)$")
_TAIL = re.compile(r"^seed(?P<seed>\d+)$")


def _option_tokens() -> dict[str, str]:
    return {f.name: f.metadata["token"] for f in fields(RunSpec) if f.metadata["token"]}


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
    for name, prefix in _option_tokens().items():
        value = getattr(spec, name)
        if value != defaults[name]:
            tokens.append(f"{prefix}-{_escape(_fmt(value))}")
    if spec.method in BASES_METHODS:
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
    types = {f.name: str(f.type) for f in fields(RunSpec)}
    by_prefix = {"lr": "lr", "e": "epochs", "b": "batch_size", _VERSION_TOKEN: "bases_version"}
    by_prefix |= {p: n for n, p in _option_tokens().items()}
    values: dict = {"bases_version": _FIRST_BASES_VERSION} if method in BASES_METHODS else {}
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
