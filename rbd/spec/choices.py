"""Every choice list and pattern a setting takes, named once: the optimisers, the loop, the
CLI and the config schema (held to these by tests/workflow/test_config.py) all read them here."""

from __future__ import annotations

from rbd.spec.facts import DATASET_FACTS, MODEL_FACTS

METHODS = ("sgd", "rbd", "fpd", "nes")
# Methods that draw random bases (every one but SGD): their run keys name the bases version.
BASES_METHODS = ("rbd", "fpd", "nes")
# Directions drawn value by value from a seed's splitmix64 stream, and those applied as
# fast transforms (rbd.bases).
DENSE = ("gaussian", "uniform", "rademacher", "bernoulli-official")
STRUCTURED = ("srht", "fastfood")
DISTRIBUTIONS = DENSE + STRUCTURED
# SGD's distribution and dim: it draws no bases.
NO_DISTRIBUTION = "none"
MODELS = tuple(MODEL_FACTS)
DATASETS = tuple(DATASET_FACTS)
# Initial weights: Keras's Glorot-uniform (the authors'), PyTorch's defaults, Keras's
# he_normal (Li et al.'s).
INITS = ("glorot", "torch", "he_normal")
# How RBD/FPD turn the coordinate gradient into the coordinate step (rbd.optim.update_rules).
UPDATE_RULES = ("sgd", "momentum", "adam")
# Compartments with normalize: rows scaled by 1/sqrt(n_k) or by 1/sqrt(D) (the authors').
COMPARTMENT_SCALES = ("compartment", "network")
# How RBD gets its coordinates: a backward pass then c = Phi g, or d forward-mode jvps.
DERIVATIVES = ("backward", "forward")
# Distributed RBD: each worker its own bases, one shared set, or d split across workers;
# and how the workers' updates are combined.
SHARING = ("worker", "shared", "split")
COMBINE = ("sum", "mean")
# NES: each offspring on its own minibatch (the authors'), or all on one.
NES_BATCHES = ("offspring", "shared")
SWITCH_KINDS = ("sgd_first", "sgd_last")

# The forms a compartments, switch or device setting takes (the schema anchors them).
COMPARTMENTS_PATTERN = (
    r"none|layer|chunk:[1-9][0-9]*|compression:([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)"
)
SWITCH_PATTERN = r"none|sgd_first:[1-9][0-9]*|sgd_last:[1-9][0-9]*"
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"

# How directions are drawn from seeds (rbd.bases's docstring). Run keys and run.json
# carry it, so results drawn with other bases are never mixed: version 1 drew each
# direction with a seeded torch.Generator (bits that depended on the device); version 2 is
# the splitmix64 stream of the direction's seed.
BASES_VERSION = 2
