"""How a run's settings become its phases and device, and the check that fails before any
work (the settings themselves, with their rules, are rbd.spec's)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch

from rbd.spec import TrainConfig, run_problems


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained with one method (two phases when switching)."""

    method: str
    lr: float
    first_epoch: int
    end_epoch: int


def phases(cfg: TrainConfig) -> list[Phase]:
    """The run's phases: one, or SGD and the method in the order its switch says."""
    if cfg.switch == "none":
        return [Phase(cfg.method, cfg.lr, 0, cfg.epochs)]
    kind, _, at = cfg.switch.partition(":")
    k = int(at)
    sgd_lr = cfg.sgd_lr if cfg.sgd_lr is not None else cfg.lr
    if kind == "sgd_first":
        parts = [Phase("sgd", sgd_lr, 0, k), Phase(cfg.method, cfg.lr, k, cfg.epochs)]
    else:  # sgd_last (check_settings has held the switch to its pattern)
        parts = [Phase(cfg.method, cfg.lr, 0, k), Phase("sgd", sgd_lr, k, cfg.epochs)]
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
    """Settings that cannot work, found before any data is loaded (ValueError naming the
    first): a value outside its choices or pattern (rbd.spec's field metadata), then the
    rules between settings (run_problems)."""
    for f in fields(cfg):
        value, choices, pattern = getattr(cfg, f.name), f.metadata["choices"], f.metadata["pattern"]
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name}: {value!r} is not one of {choices}")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ValueError(f"{f.name}: {value!r} is not one of {pattern}")
    for setting, why in run_problems(cfg.spec):
        raise ValueError(f"{setting}: {why}")
