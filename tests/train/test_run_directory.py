"""A run directory belongs to one run: other settings are refused, bad state is named."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rbd.spec import CHECKPOINT, RUN_JSON, TrainConfig
from rbd.spec.io import write_json
from rbd.train.loop import train
from tests.helpers import run_rbd

SMALL = ["--model", "fc", "--dataset", "mnist5k", "--train-limit", "64", "--threads", "1"]


def _train(out, *extra, lr="4", epochs="1"):
    return run_rbd(
        "train", "--method", "rbd", "--dim", "20", "--lr", lr, "--epochs", epochs,
        "--out", out, *SMALL, *extra,
    )  # fmt: skip


def _one_line_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_finished_run_directory_refuses_other_settings(tmp_path):
    out = tmp_path / "run"
    assert _train(out).returncode == 0
    first = json.loads((out / RUN_JSON).read_text())
    proc = _train(out, lr="2")
    _one_line_error(proc, "lr 4.0 there, 2.0 asked", "--overwrite")
    assert json.loads((out / RUN_JSON).read_text()) == first  # untouched
    # the same settings again: nothing to do, the finished record
    again = _train(out)
    assert again.returncode == 0 and "already finished" in again.stderr
    # --overwrite replaces it
    replaced = _train(out, "--overwrite", lr="2")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / RUN_JSON).read_text())["config"]["lr"] == 2.0


def cfg(**changes):
    base = dict(
        method="rbd", model="fc", dataset="mnist5k", dim=20, distribution="gaussian",
        lr=4.0, epochs=2, seed=0, train_limit=64, threads=1,
    )  # fmt: skip
    return TrainConfig(**(base | changes))


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    train(cfg(epochs=1), tmp_path)
    record = json.loads((tmp_path / RUN_JSON).read_text())
    # Turn the finished run into an interrupted one with a checkpoint of seed 0.
    (tmp_path / RUN_JSON).unlink()
    (tmp_path / "metrics.csv").unlink()
    import torch

    torch.save({"spec": record["config"] | {"seed": 0}, "model": {}}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"seed 0 there, 5 asked"):
        train(cfg(seed=5), tmp_path)


def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_restarts(tmp_path, caplog):
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / f"{CHECKPOINT}.bad-1").write_bytes(b"an earlier one")
    with caplog.at_level("WARNING", logger="rbd.train"):
        record = train(cfg(epochs=1), tmp_path)
    assert record["status"] == "done" and record["resumes"] == 0
    assert (tmp_path / f"{CHECKPOINT}.bad-2").read_bytes() == b"PK\x03\x04 truncated"
    assert (tmp_path / f"{CHECKPOINT}.bad-1").read_bytes() == b"an earlier one"
    assert any("checkpoint.pt.bad-2" in r.getMessage() for r in caplog.records)


def test_an_unreadable_run_json_is_an_error_naming_it(tmp_path):
    (tmp_path / RUN_JSON).write_text("{ not json")
    (tmp_path / "metrics.csv").write_text("epoch\n1\n")
    proc = _train(tmp_path)
    _one_line_error(proc, str(tmp_path / RUN_JSON))


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o027)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640


def test_dim_above_d_fails_before_the_data_loads(tmp_path):
    # mnist from an empty data directory: the dim error must come first
    proc = run_rbd(
        "train", "--method", "rbd", "--model", "fc", "--dataset", "mnist", "--dim", "200000",
        "--lr", "1", "--out", tmp_path / "run", "--data-dir", tmp_path / "empty",
    )  # fmt: skip
    assert proc.returncode == 2
    _one_line_error(proc, "dim=200000", "101,770")


def test_a_missing_data_set_is_one_line(tmp_path):
    proc = run_rbd(
        "train", "--method", "sgd", "--model", "fc", "--dataset", "mnist", "--dim", "0",
        "--distribution", "none", "--lr", "1", "--out", tmp_path / "run",
        "--data-dir", tmp_path / "empty",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "rbd train: error:" in proc.stderr and "rbd download" in proc.stderr


def test_a_locked_run_directory_refuses_a_second_process(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from rbd.spec.io import run_lock\n"
         f"with run_lock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _train(tmp_path)
        _one_line_error(proc, f"is in use by pid {holder.pid}")
        assert not (tmp_path / RUN_JSON).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
    (tmp_path / ".rbd-lock").write_text("pid 4194303 on gone-host since 2026-01-01 00:00:00\n")
    with caplog.at_level("INFO", logger="rbd.spec.io"):
        record = train(cfg(epochs=1), tmp_path)
    assert record["status"] == "done"
    assert any("pid 4194303 on gone-host" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("broken", ["run.json", "metrics.csv"])
def test_aggregating_an_unreadable_run_file_names_it_in_one_line(tmp_path, broken):
    out = tmp_path / "run"
    assert _train(out).returncode == 0
    if broken == "run.json":
        (out / broken).write_text("{ truncated")
    else:
        (out / broken).write_bytes(b'epoch,val_acc\n1,"unterminated\n')
    proc = run_rbd(
        "aggregate", "--experiment", "t", "--kind", "method_table", "--out", tmp_path / "t.csv",
        out / "run.json",
    )  # fmt: skip
    _one_line_error(proc, str(out / broken))


def test_a_run_drawn_with_older_bases_is_neither_reused_nor_resumed(tmp_path):
    """A run.json from before the bases' version was recorded holds version 1 bases: the
    same settings today draw other directions, so it is refused (one line, naming it)."""
    out = tmp_path / "run"
    assert _train(out).returncode == 0
    record = json.loads((out / RUN_JSON).read_text())
    assert record["config"]["bases_version"] == 2
    del record["config"]["bases_version"]
    write_json(out / RUN_JSON, record)
    _one_line_error(_train(out), "bases_version 1 there, 2 asked", "--overwrite")
    _one_line_error(_train(out, "--bases-version", "1"), "--bases-version", "version 2")
