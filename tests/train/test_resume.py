"""Every method resumes exactly: interrupt mid-epoch after a checkpoint, rerun, compare."""

from __future__ import annotations

import pandas as pd
import pytest

import rbd.train.steps as steps_module
from rbd.spec import TrainConfig
from rbd.train.loop import EPOCH_TIME_COLUMNS, train

CASES = {
    "rbd": {"method": "rbd", "lr": 4.0},
    "fpd": {"method": "fpd", "lr": 16.0},
    # The authors' NES: 2 offspring, each on its own minibatch, 3 updates an epoch.
    "nes": {"method": "nes", "lr": 2**-5, "dim": 2},
    "nes-shared": {"method": "nes", "lr": 2**-5, "dim": 20, "nes_batches": "shared"},
    "rbd-layer-rademacher": {"method": "rbd", "lr": 4.0, "compartments": "layer",
                             "distribution": "rademacher"},
    "sgd-then-rbd": {"method": "rbd", "lr": 4.0, "switch": "sgd_first:1", "sgd_lr": 2**-5},
    "augmented-sgd": {"method": "sgd", "lr": 2**-5, "dim": 0, "distribution": "none",
                      "augment": True},
}  # fmt: skip
# The step function to interrupt, and at which call: the second epoch's third
# minibatch (6 minibatches an epoch), or NES's second update of that epoch.
INTERRUPT = {"nes": ("nes_offspring_step", 5)}
DEFAULT_INTERRUPT = ("train_step", 9)


def _config(**settings) -> TrainConfig:
    base = dict(model="fc", dataset="mnist5k", dim=50, distribution="gaussian", epochs=2, seed=3,
                train_limit=192, threads=1, checkpoint_minutes=1e-9)  # fmt: skip
    return TrainConfig(**(base | settings))


def _metrics(run_dir):
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=list(EPOCH_TIME_COLUMNS))


@pytest.mark.parametrize("case", CASES)
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, monkeypatch, case):
    cfg = _config(**CASES[case])
    train(cfg, tmp_path / "whole")

    name, at = INTERRUPT.get(case, DEFAULT_INTERRUPT)
    real_step, calls = getattr(steps_module, name), {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps_module, name, interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "metrics.csv").exists()
    monkeypatch.setattr(steps_module, name, real_step)

    record = train(cfg, tmp_path / "cut")
    assert record["resumes"] == 1 and record["status"] == "done"
    pd.testing.assert_frame_equal(
        _metrics(tmp_path / "cut"), _metrics(tmp_path / "whole"), check_exact=True
    )


def test_a_checkpoint_in_another_format_is_refused_in_one_line_not_misread(tmp_path, monkeypatch):
    """A checkpoint written by another version of rbd (format 1: no `format`, its epoch sums
    as `epoch_acc`) stops the run with a RunDirectoryError naming the file and the formats,
    and the run directory is left as it was."""
    import torch

    from rbd.spec import RunDirectoryError

    cfg = _config(**CASES["rbd"])
    real_step, calls = steps_module.train_step, {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps_module, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path)
    monkeypatch.setattr(steps_module, "train_step", real_step)
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == 2 and ckpt["epoch_totals"]["updates"] == 2
    ckpt["epoch_acc"] = ckpt.pop("epoch_totals")
    del ckpt["format"]
    torch.save(ckpt, path)
    before = path.read_bytes()
    with pytest.raises(RunDirectoryError, match=r"checkpoint\.pt is in checkpoint format 1") as err:
        train(cfg, tmp_path)
    assert "\n" not in str(err.value) and "reads format 2" in str(err.value)
    assert path.read_bytes() == before and not (tmp_path / "metrics.csv").exists()
