"""Training: the data sets and models, checkpoints, the training loop
(:mod:`rbd.train.loop`) and the launch of distributed workers (:mod:`rbd.train.launch`)."""

from rbd.spec import TrainConfig
from rbd.train.loop import train
from rbd.train.settings import check_settings, resolve_device

__all__ = ["TrainConfig", "check_settings", "resolve_device", "train"]
