"""The training runner: outputs, determinism, divergence, resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from rbd.train.loop import EPOCH_TIME_COLUMNS
from tests.helpers import ROOT, run_rbd

SMALL = ["--model", "fc", "--dataset", "mnist5k", "--train-limit", "512", "--threads", "1"]
REQUIRED_COLUMNS = {
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "grad_corr_mean",
    "seconds",
    "images_per_s",
}


def _train(out, *extra, epochs=2, method="rbd", lr="4", dim="250"):
    args = [
        "train",
        "--method",
        method,
        "--lr",
        lr,
        "--dim",
        dim,
        "--epochs",
        epochs,
        "--out",
        out,
        *SMALL,
        *extra,
    ]
    return run_rbd(*args, check=True)


def _metrics(run_dir):
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=list(EPOCH_TIME_COLUMNS))


def test_rbd_run_writes_metrics_and_record(tmp_path):
    _train(tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert REQUIRED_COLUMNS <= set(metrics.columns)
    assert list(metrics["epoch"]) == [1, 2]
    assert metrics["val_acc"].between(0, 100).all() and metrics["val_acc"].iloc[-1] > 20
    assert record["status"] == "done"
    assert record["num_params"] == 101_770 and record["dim"] == 250
    assert record["num_coordinates"] == 250
    assert record["compression"] == pytest.approx(101_770 / 250)
    assert record["method"] == "rbd" and record["config"]["lr"] == 4.0
    assert {"torch", "python", "rbd"} <= set(record["versions"])
    assert record["device"] == "cpu"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # Gaussian directions: E[cos(update, g)] ~ sqrt(d / (D + d + 1)) (paper.md).
    expected = math.sqrt(250 / (101_770 + 250 + 1))
    assert metrics["grad_corr_mean"].iloc[-1] == pytest.approx(expected, rel=0.10)


@pytest.mark.parametrize(
    "method,extra,updates",
    [
        # 512 images in batches of 32: 16 minibatches an epoch.
        ("rbd", [], 16),
        ("nes", ["--nes-batches", "shared"], 16),
        # The authors' NES: d = 5 offspring, each its own minibatch: 5 + 5 + 5 + 1.
        ("nes", [], 4),
    ],
)
def test_updates_per_epoch(tmp_path, method, extra, updates):
    _train(tmp_path / "run", *extra, method=method, lr="2^-8", dim="5")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(metrics["updates"]) == [updates, updates]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "done"


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _train(tmp_path / name, "--seed", seed, epochs=1)
    a, b, c = (_metrics(tmp_path / n) for n in "abc")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not a.equals(c)


def test_sgd_run_has_no_subspace(tmp_path):
    _train(tmp_path / "sgd", method="sgd", lr="2^-5", dim="0", epochs=1)
    metrics = pd.read_csv(tmp_path / "sgd" / "metrics.csv")
    assert metrics["val_acc"].iloc[-1] > 30  # chance is 10
    assert metrics["grad_corr_mean"].isna().all()


def test_absurd_learning_rate_is_recorded_as_diverged(tmp_path):
    proc = _train(tmp_path / "boom", method="sgd", lr="1e6", dim="0", epochs=2)
    record = json.loads((tmp_path / "boom" / "run.json").read_text())
    assert proc.returncode == 0
    assert record["status"] == "diverged"
    assert (tmp_path / "boom" / "metrics.csv").exists()


def test_finished_run_is_not_retrained(tmp_path):
    _train(tmp_path / "run", epochs=1)
    before = (tmp_path / "run" / "metrics.csv").stat().st_mtime_ns
    _train(tmp_path / "run", epochs=1)
    assert (tmp_path / "run" / "metrics.csv").stat().st_mtime_ns == before


def test_sigkill_mid_epoch_then_rerun_resumes_to_identical_metrics(tmp_path):
    args = ["--epochs", "3", "--checkpoint-minutes", "0.002"]
    _train(tmp_path / "whole", *args[2:], epochs=3)

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "rbd",
        "train",
        "--method",
        "rbd",
        "--lr",
        "4",
        "--dim",
        "250",
        "--out",
        str(out),
        *SMALL,
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # Wait for a mid-epoch checkpoint of the second epoch, then kill without warning.
        while time.monotonic() < deadline:
            ckpt = out / "checkpoint.pt"
            if ckpt.exists():
                from rbd.train.checkpoints import load_torch

                try:
                    state = load_torch(ckpt)
                except Exception:
                    state = None
                if state and state["epoch"] >= 1 and state["next_batch"] > 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("no mid-epoch checkpoint appeared")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "run.json").exists(), "final outputs must appear only when the run ends"

    _train(out, *args[2:], epochs=3)
    record = json.loads((out / "run.json").read_text())
    assert record["resumes"] >= 1
    pd.testing.assert_frame_equal(_metrics(out), _metrics(tmp_path / "whole"), check_exact=True)


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    """SIGKILL while a large checkpoint is being written: the old one still loads."""
    path = tmp_path / "checkpoint.pt"
    script = f"""
import torch, sys
from rbd.train.checkpoints import save_torch
save_torch({str(path)!r}, {{"epoch": 1, "w": torch.arange(10.0)}})
print("first", flush=True)
save_torch({str(path)!r}, {{"epoch": 2, "w": torch.zeros(150_000_000)}})
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "first"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".checkpoint.pt.*.tmp")):
            assert time.monotonic() < deadline, "the second write never started"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    from rbd.train.checkpoints import load_torch

    state = load_torch(path)
    assert state["epoch"] == 1 and state["w"].tolist() == list(range(10))
