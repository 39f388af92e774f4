"""Warm starts (rbd/warm.py): a training forked from the server is the training a cold
`rbd train` runs; exit statuses, signals and refusals reach the job; a killed job's
training stops; without a server the job starts cold; the server leaves with its owner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT, run_rbd

TIMING = ["seconds", "images_per_s"]
TRAIN = ["train", "--method", "rbd", "--model", "fc", "--dataset", "mnist5k", "--dim", "20",
         "--lr", "2^3", "--epochs", "2", "--train-limit", "320", "--threads", "1"]  # fmt: skip
LONG = ["train", "--method", "rbd", "--model", "fc", "--dataset", "mnist5k", "--dim", "250",
        "--lr", "2^3", "--epochs", "50", "--threads", "1"]  # fmt: skip

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm starts are Linux-only")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _warm(sock, *args, cwd, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "rbd.warm", "run", "--socket", str(sock), *args]
    return subprocess.Popen(command, cwd=cwd, env=_env(), text=True, **kwargs)


def _wait_for(predicate, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server owned by a stand-in owner process (a `sleep`), its socket and its pid."""
    where = tmp_path_factory.mktemp("warm")
    sock = where / "w.sock"
    owner = subprocess.Popen(["sleep", "3600"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "rbd.warm", "serve", "--socket", str(sock), "--owner",
         str(owner.pid)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert _wait_for(sock.exists, timeout=120), proc.communicate(timeout=5)[0]
    yield sock, proc, owner
    proc.terminate()
    owner.kill()
    proc.wait(timeout=30)
    owner.wait()


def test_a_warm_training_is_the_cold_training(server, tmp_path):
    sock, proc, _ = server
    warm = _warm(sock, *TRAIN, "--out", "warm", cwd=tmp_path, stderr=subprocess.PIPE)
    assert warm.wait(timeout=300) == 0, warm.stderr.read()
    assert "epoch 2/2" in warm.stderr.read()  # the training's log reached the job's stream
    run_rbd(*TRAIN, "--out", tmp_path / "cold", check=True)
    # (that warm jobs do run in the server's children: test_a_killed_job_stops_its_training)
    cold = pd.read_csv(tmp_path / "cold/metrics.csv").drop(columns=TIMING)
    warmed = pd.read_csv(tmp_path / "warm/metrics.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(warmed, cold)
    assert (tmp_path / "warm/run.json").exists()


def test_exit_status_and_errors_reach_the_job(server, tmp_path):
    sock, _, _ = server
    bad = _warm(sock, "train", "--bogus", cwd=tmp_path, stderr=subprocess.PIPE)
    assert bad.wait(timeout=60) == 2
    assert "rbd train: error: the following arguments are required" in bad.stderr.read()
    other = _warm(sock, "aggregate", "x", cwd=tmp_path, stderr=subprocess.PIPE)
    assert other.wait(timeout=60) == 2
    assert "only train is served" in other.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_job_stops_its_training(server, tmp_path, sig):
    """SIGTERM is forwarded; after SIGKILL (nothing to forward) the training notices that
    its job has gone and stops itself."""
    sock, proc, _ = server
    before = set(_children(proc.pid))
    job = _warm(sock, *LONG, "--out", "run", cwd=tmp_path, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: set(_children(proc.pid)) - before)
    (training,) = set(_children(proc.pid)) - before
    os.kill(job.pid, sig)
    assert job.wait(timeout=30) == (128 + signal.SIGTERM if sig == signal.SIGTERM else -sig)
    assert _wait_for(lambda: not _running(training), timeout=30)


def test_without_a_server_the_job_starts_cold(tmp_path):
    job = _warm(tmp_path / "absent.sock", *TRAIN, "--out", "cold", cwd=tmp_path)
    assert job.wait(timeout=300) == 0
    assert len(pd.read_csv(tmp_path / "cold/metrics.csv")) == 2


def test_a_server_that_hangs_up_before_starting_means_a_cold_start(tmp_path):
    sock = tmp_path / "w.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(sock))
    listener.listen(1)

    def hang_up():
        conn, _ = listener.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        for fd in fds:
            os.close(fd)
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    job = _warm(sock, *TRAIN, "--out", "cold", cwd=tmp_path)
    assert job.wait(timeout=300) == 0
    assert len(pd.read_csv(tmp_path / "cold/metrics.csv")) == 2
    listener.close()


def test_the_server_leaves_with_its_owner_and_removes_its_socket(tmp_path):
    sock = tmp_path / "w.sock"
    owner = subprocess.Popen(["sleep", "3600"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "rbd.warm", "serve", "--socket", str(sock), "--owner",
         str(owner.pid)],
        env=_env(),
    )  # fmt: skip
    assert _wait_for(sock.exists, timeout=120)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"  # only this user may connect
    owner.kill()
    owner.wait()
    assert proc.wait(timeout=30) == 0
    assert not sock.exists()
