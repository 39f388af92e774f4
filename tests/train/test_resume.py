"""Every method resumes exactly: interrupt mid-epoch after a checkpoint, rerun, compare."""

from __future__ import annotations

import pandas as pd
import pytest

import rbd.train.steps as steps_module
from rbd.train.loop import EPOCH_TIME_COLUMNS, train
from rbd.train.settings import TrainConfig

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


def test_a_checkpoint_from_before_the_updates_counter_resumes_and_keeps_the_column(
    tmp_path, monkeypatch
):
    import torch

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
    # Rewrite the checkpoint as an older version wrote it: no updates counter, no spec.
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch_acc"]["updates"] == 2  # epoch 2 stopped after its 2nd minibatch
    del ckpt["epoch_acc"]["updates"], ckpt["spec"]
    for row in ckpt["rows"]:
        del row["updates"]
    torch.save(ckpt, path)
    record = train(cfg, tmp_path)
    assert record["status"] == "done" and record["resumes"] == 1
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert "updates" in metrics.columns
    # epoch 1's count was never recorded; epoch 2 counts the 4 updates after the resume
    assert metrics["updates"].isna().iloc[0] and metrics["updates"].iloc[1] == 4
