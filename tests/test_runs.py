"""Run keys: every setting survives the trip to a directory name and back."""

import pytest

from rbd.runs import RunSpec, parse_run_key

BASE = RunSpec("rbd", "fc", "mnist5k", 250, "gaussian", 2**-5, 5, 0)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"method": "sgd", "dim": 0, "distribution": "none"},
        {"distribution": "bernoulli-official", "dataset": "fashion_mnist", "model": "resnet8"},
        {"compartments": "compression:12.5", "augment": True},
        {"compartments": "chunk:1000", "normalize": False},
        {"switch": "sgd_first:3", "sgd_lr": 0.0625},
        {"method": "nes", "nes_sigma": 0.05, "lr": 3.0517578125e-05},
        {"seed": 17, "batch_size": 128, "epochs": 100},
        {"workers": 4, "bases": "split", "combine": "mean"},
    ],
)
def test_key_round_trip(changes):
    spec = RunSpec(**{**BASE.__dict__, **changes})
    assert parse_run_key(spec.key) == spec


def test_key_is_a_readable_path_and_omits_defaults():
    assert BASE.key == "mnist5k/fc/rbd/d250_gaussian/lr-0.03125_e-5_b-32/seed0"


@pytest.mark.parametrize(
    "key",
    [
        "mnist5k/fc/rbd/d250_gaussian/lr-0.03125_e-5_b-32",
        "mnist5k/fc/rbd/250_gaussian/lr-0.03125_e-5_b-32/seed0",
        "mnist5k/fc/rbd/d250_gaussian/lr-0.03125_e-5_zz-1/seed0",
    ],
)
def test_bad_keys_are_rejected(key):
    with pytest.raises(ValueError):
        parse_run_key(key)


def test_cli_args_are_shell_quoted():
    spec = RunSpec(**{**BASE.__dict__, "compartments": "compression:10"})
    assert "--compartments compression:10" in spec.shell_args()
    assert "--lr 0.03125" in spec.shell_args()
