"""Run keys: every setting survives the trip to a directory name and back."""

import pytest

from rbd.spec import RunSpec, parse_run_key

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
        {"workers": 4, "sharing": "split", "combine": "mean"},
    ],
)
def test_key_round_trip(changes):
    spec = RunSpec(**{**BASE.__dict__, **changes})
    assert parse_run_key(spec.key) == spec


def test_key_is_a_readable_path_and_omits_defaults():
    assert BASE.key == "mnist5k/fc/rbd/d250_gaussian/lr-0.03125_e-5_b-32_bv-2/seed0"


def test_keys_name_the_bases_version_of_every_method_that_draws_bases():
    """Results drawn with other bases never share a directory: a key from before the
    version was recorded reads as version 1; SGD draws none, so its keys stay as they were."""
    assert (
        parse_run_key("mnist5k/fc/rbd/d250_gaussian/lr-0.03125_e-5_b-32/seed0").bases_version == 1
    )
    for method in ("rbd", "fpd", "nes"):
        spec = RunSpec(**{**BASE.__dict__, "method": method})
        assert spec.bases_version == 2 and "_bv-2/" in spec.key
    sgd = RunSpec(**{**BASE.__dict__, "method": "sgd"})
    assert sgd.key == "mnist5k/fc/sgd/d250_gaussian/lr-0.03125_e-5_b-32/seed0"
    assert parse_run_key(sgd.key) == sgd


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


def test_cli_args_survive_a_shell_and_the_cli_parser(tmp_path):
    """What the train rule writes into its shell command is the run again: the words a
    POSIX shell makes of `shell_args()` are `cli_args()`, and `rbd train` parses them
    back into the same RunSpec."""
    import subprocess

    from rbd.cli import build_parser

    # a value with shell metacharacters (the CLI would reject it; quoting must not rely on it)
    spec = RunSpec(**{**BASE.__dict__, "compartments": "chunk:5 'x' \"y\" $(touch pwned); echo",
                      "augment": True,
                      "switch": "sgd_first:3", "sgd_lr": 0.0625, "nes_normalize": True,
                      "compartment_scale": "network", "even_dims": True, "fpd_offset": True,
                      "workers": 2, "sharing": "split"})  # fmt: skip
    words = subprocess.run(
        ["sh", "-c", f"printf '%s\\n' {spec.shell_args()}"], capture_output=True, text=True,
        check=True, cwd=tmp_path,
    ).stdout.splitlines()  # fmt: skip
    assert not (tmp_path / "pwned").exists()
    assert words == spec.cli_args()
    args = build_parser().parse_args(["train", *words, "--out", "x"])
    values = {k: v for k, v in vars(args).items() if k in RunSpec.__dataclass_fields__}
    assert RunSpec(**values) == spec
