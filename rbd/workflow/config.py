"""Workflow configuration: validation against the schema, and expansion into runs.

The schema (`config/schemas/config.schema.yaml`) is the contract users read;
this module adds the checks a schema cannot express (a dim larger than the
model, an unreadable learning rate) and turns each experiment into its grid
of `RunSpec`s. Errors name the offending key and the allowed values.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import yaml

from rbd.report.kinds import KINDS
from rbd.spec import NO_DISTRIBUTION, ConfigError, RunSpec, run_problems
from rbd.spec.run import grid_keys, reads, scalar_keys

DEFAULT_SCHEMA = Path("config/schemas/config.schema.yaml")
_POWER_OF_TWO = re.compile(r"^\s*2\s*\^\s*(-?\d+)\s*$")
# The authors' notation (machinable.yaml): base_learning_rate(2**k) is evaluated by
# config_base_learning_rate as 2^k * batch_size (vendor/img/models/image.py multiplies
# by its IPU replicas too, 1 in every experiment of the paper; the distributed model,
# models/rbd_dist.py, by the batch size only, which is what our workers follow).
_BASE_RATE = re.compile(r"^\s*base_learning_rate\(\s*2\s*(?:\^|\*\*)\s*(-?\d+)\s*\)\s*$")
# Experiment keys that hold lists to take the product over, and the RunSpec field each
# feeds; the scalar settings an experiment may override (the same keys form `defaults`):
# both from rbd.spec's field metadata.
GRID_KEYS = grid_keys()
SCALAR_KEYS = scalar_keys()
# The config key that sets each RunSpec field given as a list (errors name it).
_CONFIG_KEY = {field: key for key, field in GRID_KEYS.items()}
# Settings that only matter with compartments (RBD and FPD): dropped without them.
COMPARTMENT_KEYS = ("compartment_scale", "even_dims")


def parse_lr(value, key: str = "lr", *, batch_size: int | None = None) -> float:
    """The learning rate a run trains with, from a number, '2^k' (the paper's notation),
    or 'base_learning_rate(2^k)' (the authors' config: 2^k x batch_size)."""
    expected = "a positive number, '2^k' or 'base_learning_rate(2^k)'"
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if isinstance(value, int | float):
        lr = float(value)
    elif match := _BASE_RATE.match(str(value)):
        if batch_size is None:
            raise ConfigError(
                f"{key}: {value!r} needs the run's batch size; give the rate as a number or '2^k'"
            )
        lr = 2.0 ** int(match[1]) * batch_size
    else:
        match = _POWER_OF_TWO.match(str(value))
        if not match:
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        lr = 2.0 ** int(match[1])
    if not lr > 0:
        raise ConfigError(f"{key}: the learning rate must be positive, got {value!r}")
    return lr


def load_schema(path: str | Path = DEFAULT_SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: dict, schema: dict | str | Path = DEFAULT_SCHEMA) -> None:
    """Fill in the schema's defaults of the keys left out (the only place defaults live),
    then raise ConfigError for the first problem found, naming the key path."""
    import jsonschema

    if not isinstance(schema, dict):
        schema = load_schema(schema)
    for key, prop in schema.get("properties", {}).items():
        if "default" in prop and key not in config:
            config[key] = copy.deepcopy(prop["default"])
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(e.path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    for name, exp in config.get("experiments", {}).items():
        missing = [m for m in KINDS[exp["kind"]].requires if m not in exp["methods"]]
        if missing:
            raise ConfigError(
                f"config key experiments.{name}.methods: an experiment of kind "
                f"{exp['kind']!r} needs {missing} too (its baseline); add them"
            )
        runs = expand_experiment(config, name)
        for spec in runs:
            _check_run(spec, f"experiments.{name}")


def _describe(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return (
            f"config key {path}: unknown key(s) {', '.join(map(repr, extra))}; "
            f"allowed: {', '.join(allowed)}"
        )
    if error.validator == "enum":
        return (
            f"config key {path}: {error.instance!r} is not allowed; "
            f"choose one of {', '.join(map(str, error.validator_value))}"
        )
    return f"config key {path}: {error.message}"


def _check_run(spec: RunSpec, where: str) -> None:
    for setting, why in run_problems(spec):
        raise ConfigError(f"config key {where}.{_CONFIG_KEY.get(setting, setting)}: {why}")


def learning_rate(
    config: dict, method: str, model: str, dataset: str, *, batch_size: int = 32
) -> float:
    """The configured rate for (method, model, dataset), as the run trains with it; the key
    path is named if missing."""
    table = config.get("learning_rates", {}).get(method, {})
    pair = f"{model}-{dataset}"
    if pair not in table:
        raise ConfigError(
            f"config key learning_rates.{method}.{pair} is missing (needed by an experiment); "
            f"give a number or '2^k'"
        )
    return parse_lr(table[pair], f"learning_rates.{method}.{pair}", batch_size=batch_size)


def _experiment(config: dict, name: str) -> dict:
    experiments = config.get("experiments", {})
    if name not in experiments:
        raise ConfigError(
            f"experiment {name!r} is not in config key experiments; "
            f"configured: {', '.join(experiments) or 'none'}"
        )
    return experiments[name]


def _sweep_rates(exp: dict, method: str, name: str, scale: dict) -> list[float] | None:
    """The experiment's `lrs` for `method` (a list for all methods, or method -> list)."""
    lrs = exp.get("lrs")
    if isinstance(lrs, dict):
        lrs = lrs.get(method)
    if lrs is None:
        return None
    key = f"experiments.{name}.lrs" + (f".{method}" if isinstance(exp["lrs"], dict) else "")
    return [parse_lr(lr, key, **scale) for lr in lrs]


def expand_experiment(config: dict, name: str) -> list[RunSpec]:
    """The experiment's runs: the product of its lists, defaults filled in, in a stable order.

    Settings that do not apply to a run are normalised so that equal runs
    share one key: SGD has no dim, distribution, compartments or switch, and only
    NES has a sigma and offspring batches.
    """
    exp, defaults = _experiment(config, name), config.get("defaults", {})
    grid = {}
    for key, field in GRID_KEYS.items():
        if key == "lrs":
            continue
        default_key = "seeds" if key == "seeds" else field
        values = exp.get(key, defaults.get(default_key))
        if values is None:
            continue
        grid[field] = values if isinstance(values, list) else [values]
    scalars = {k: exp.get(k, defaults.get(k)) for k in SCALAR_KEYS}
    scalars = {k: v for k, v in scalars.items() if v is not None}
    runs = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values, strict=True)) | scalars
        method, model, dataset = settings["method"], settings["model"], settings["dataset"]
        # A setting given per method ({method: value}): this method's value, else the default.
        settings = {
            k: v.get(method, getattr(RunSpec, k)) if isinstance(v, dict) else v
            for k, v in settings.items()
        }
        scale = {"batch_size": settings.get("batch_size", RunSpec.batch_size)}
        rates = _sweep_rates(exp, method, name, scale) or [
            learning_rate(config, method, model, dataset, **scale)
        ]
        # Settings the method does not read keep their defaults (rbd.spec's `methods`).
        settings = {k: v for k, v in settings.items() if reads(method, k)}
        if method == "sgd":
            # One SGD run serves every dim and distribution.
            settings |= {"dim": 0, "distribution": NO_DISTRIBUTION}
        if settings.get("compartments", "none") == "none":
            settings = {k: v for k, v in settings.items() if k not in COMPARTMENT_KEYS}
        if settings.get("workers") is None:
            # Sharing and combining only exist with workers.
            settings = {k: v for k, v in settings.items() if k not in ("sharing", "combine")}
        if settings.get("switch", "none") != "none":
            settings["sgd_lr"] = learning_rate(config, "sgd", model, dataset, **scale)
        runs += [RunSpec(**settings, lr=lr) for lr in rates]
    return list(dict.fromkeys(runs))


def in_default_target(config: dict, name: str) -> bool:
    """Whether experiment `name` belongs to the default target: not a sweep (an opt-in
    kind) and not marked `opt_in: true` (verification runs, for example)."""
    exp = _experiment(config, name)
    return not KINDS[exp["kind"]].opt_in and not exp.get("opt_in", False)


def experiment_runs(config: dict) -> dict[str, list[RunSpec]]:
    return {name: expand_experiment(config, name) for name in config.get("experiments", {})}


def preset_path(name: str, config_dir: str | Path) -> Path:
    """The file of preset `name`: config/config.yaml for "paper", else config/<name>.yaml."""
    path = Path(config_dir) / ("config.yaml" if name == "paper" else f"{name}.yaml")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name) or not path.is_file():
        shipped = sorted(
            "paper" if p.name == "config.yaml" else p.stem
            for p in Path(config_dir).glob("*.yaml")
            if "experiments" in (yaml.safe_load(p.read_text()) or {})
        )
        raise ConfigError(
            f"config key preset: no preset {name!r} (no {path}); choose one of "
            f"{', '.join(shipped)}, or give a complete config with --configfile=PATH"
        )
    return path


def resolve_preset(config: dict, config_dir: str | Path) -> dict:
    """The configuration a Snakemake call asked for.

    A complete config (one with `experiments`, e.g. --configfile=config/quick.yaml) is
    used as it is. Otherwise the keys given (`--config preset=quick`, override files
    without `experiments`) are merged, key by key, over the preset they name (`preset`,
    default "paper"), so that no override can silently fall back to another preset.
    """
    if "experiments" in config:
        return config
    name = str(config.get("preset", "paper"))
    base = yaml.safe_load(preset_path(name, config_dir).read_text()) or {}
    return _merge(base, config)


def resolve_config(config: dict, root: str | Path) -> dict:
    """The configuration a Snakemake call asked for, resolved (`resolve_preset`) and
    validated, with every default filled in: the one call the Snakefile makes. ``root``:
    the checkout (its config/ and config/schemas/)."""
    resolved = copy.deepcopy(resolve_preset(config, Path(root) / "config"))
    validate_config(resolved, Path(root) / DEFAULT_SCHEMA)
    return resolved


def load_config_files(paths, config_dir: str | Path = DEFAULT_SCHEMA.parent.parent) -> dict:
    """Read config files, later ones overriding: a complete config (with `experiments`)
    replaces what came before, other files merge key by key; a result without
    `experiments` is merged over the preset it names (`resolve_preset`), as the
    Snakefile does."""
    config: dict = {}
    for path in paths:
        layer = yaml.safe_load(Path(path).read_text()) or {}
        config = layer if "experiments" in layer else _merge(config, layer)
    return resolve_preset(config, config_dir)


def _merge(base: dict, layer: dict) -> dict:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
