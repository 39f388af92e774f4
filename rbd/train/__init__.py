"""Training: the paper's data sets and models, a run's identity and directory, checkpoints,
the training loop (:mod:`rbd.train.loop`) and the launch of distributed workers.

``from rbd.train import train, TrainConfig`` imports the loop (and torch) on first use, so
that torch-free users of this layer (the report and the workflow read run identities
and write files through :mod:`rbd.train.runs` and :mod:`rbd.train.io`) never import it."""

import importlib

# Names of the training loop this package hands out on first use.
LOOP_EXPORTS = ("train", "TrainConfig", "check_settings", "resolve_device")


def __getattr__(name: str):
    if name in LOOP_EXPORTS:
        return getattr(importlib.import_module("rbd.train.loop"), name)
    raise AttributeError(f"module 'rbd.train' has no attribute {name!r}")
