"""A training run's settings: what it trains (its RunSpec) and how it runs, its
phases when switching, and the checks that fail before any work."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields

import torch

from rbd.train.runs import RunSpec, run_problems

# NES: each offspring on its own minibatch (the authors'), or all on one.
NES_BATCHES = ("offspring", "shared")


SWITCH_KINDS = ("sgd_first", "sgd_last")
# Where a run trains: auto (CUDA when present), cpu, cuda or cuda:N (the schema's too).
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"


@dataclass(frozen=True)
class TrainConfig(RunSpec):
    """A run's settings plus how to execute it (which do not change its result)."""

    data_dir: str | None = None
    # Replace whatever the run directory holds instead of refusing other settings.
    overwrite: bool = False
    device: str = "auto"
    threads: int | None = None
    checkpoint_minutes: float = 10.0
    divergence_loss: float = 1e3
    train_limit: int | None = None
    eval_batch_size: int = 1000

    @property
    def spec(self) -> RunSpec:
        names = {f.name for f in fields(RunSpec)}
        return RunSpec(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained with one method (two phases when switching)."""

    method: str
    lr: float
    first_epoch: int
    end_epoch: int


def phases(cfg: TrainConfig) -> list[Phase]:
    if cfg.switch == "none":
        return [Phase(cfg.method, cfg.lr, 0, cfg.epochs)]
    kind, _, at = cfg.switch.partition(":")
    k = int(at)
    sgd_lr = cfg.sgd_lr if cfg.sgd_lr is not None else cfg.lr
    if kind == "sgd_first":
        parts = [Phase("sgd", sgd_lr, 0, k), Phase(cfg.method, cfg.lr, k, cfg.epochs)]
    elif kind == "sgd_last":
        parts = [Phase(cfg.method, cfg.lr, 0, k), Phase("sgd", sgd_lr, k, cfg.epochs)]
    else:
        raise ValueError(f"switch {cfg.switch!r}: use one of {SWITCH_KINDS} as '<kind>:<epoch>'")
    return [p for p in parts if p.end_epoch > p.first_epoch]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was requested but CUDA is not available here; "
            "use device 'auto' or 'cpu'"
        )
    return device


def check_settings(cfg: TrainConfig) -> None:
    """Settings that cannot work, found before any data is loaded (ValueError naming them)."""
    if cfg.nes_batches not in NES_BATCHES:
        raise ValueError(f"nes_batches {cfg.nes_batches!r}: choose one of {NES_BATCHES}")
    for setting, why in run_problems(cfg.spec):
        raise ValueError(f"{setting}: {why}")
    if not re.fullmatch(DEVICE_PATTERN, cfg.device):
        raise ValueError(f"device: {cfg.device!r} is not one of {DEVICE_PATTERN}")


def method_options(method: str, cfg: TrainConfig) -> dict:
    """The settings that only some methods take."""
    if method == "nes":
        return {"sigma": cfg.nes_sigma, "normalize_update": cfg.nes_normalize}
    rule = {"update_rule": cfg.update_rule, "beta2": cfg.beta2}
    if method == "sgd":
        return rule
    compartments = rule | {
        "normalize": cfg.normalize,
        "compartment_scale": cfg.compartment_scale,
        "even_dims": cfg.even_dims,
    }
    if method == "rbd":
        return compartments | {"coordinates": cfg.coordinates}
    return compartments | {"offset": cfg.fpd_offset}
