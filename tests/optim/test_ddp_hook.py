"""RBD as a DDP communication hook: stock DDP + SGD + the hook is RBD on the whole batch."""

from __future__ import annotations

import math
import multiprocessing
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from rbd.bases import generate_directions, step_seeds
from rbd.optim.ddp_hook import RBDHookState, rbd_hook
from tests.helpers import ROOT

WORKERS, STEPS, BATCH, DIM, SEED, LR = 2, 10, 8, 6, 11, 0.2
# 100 bytes: DDP closes a bucket once it holds 25 floats, so the model's four
# tensors (3 + 24 and 8 + 48 numbers) fall into two buckets, two compartments
# (after the first step: see rbd.optim.ddp_hook on how DDP forms buckets).
BUCKET_CAP_MB = 100 / 2**20
# What docs/distributed.md shows, run as it is by the last test.
EXAMPLE_COMMAND = ".venv/bin/torchrun --standalone --nproc_per_node 2 examples/ddp_rbd.py"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    """STEPS global batches of WORKERS x BATCH examples: inputs and regression targets."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORKERS * BATCH, 6, generator=gen)
    return x, torch.randn(STEPS, WORKERS * BATCH, 3, generator=gen)


def _hook_worker(rank: int, store: str, out: str) -> None:
    """One gloo worker: DDP with the hook and plain SGD on its half of each global batch.

    Saves its parameters, the hook's byte counts, and which parameters (indices
    into ``model.parameters()``, in buffer order) each bucket held at each step.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORKERS)
    try:
        model = _model()
        index_of = {p.data_ptr(): i for i, p in enumerate(model.parameters())}
        ddp = DistributedDataParallel(model, bucket_cap_mb=BUCKET_CAP_MB)
        state = RBDHookState(seed=SEED, dim=DIM)
        layouts = []

        def recording_hook(state, bucket):
            members = [index_of[p.data_ptr()] for p in bucket.parameters()]
            layouts.append((state.step, bucket.index(), members))
            return rbd_hook(state, bucket)

        ddp.register_comm_hook(state, recording_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        x, y = _batches()
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        for t in range(STEPS):
            opt.zero_grad()
            F.mse_loss(ddp(x[t, mine]), y[t, mine]).backward()
            opt.step()
        params = [p.detach().clone() for p in model.parameters()]
        result = {"params": params, "layouts": layouts, "step": state.step}
        result |= {"wire_bytes": state.wire_bytes, "bucket_bytes": state.bucket_bytes}
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _reference(layouts) -> list[torch.Tensor]:
    """One process, SGD on the whole global batch's gradient through dense bases.

    Each bucket's Phi is materialised (``generate_directions``, rows / sqrt(n))
    over the bucket's parameters in DDP's buffer order, and the update is
    Phi^T (Phi g) by matrix products: no part of the hook or of ``project`` is used.
    """
    torch.set_num_threads(1)
    model, (x, y) = _model(), _batches()
    params = list(model.parameters())
    for t in range(STEPS):
        model.zero_grad()
        F.mse_loss(model(x[t]), y[t]).backward()
        with torch.no_grad():
            for step, bucket, members in layouts:
                if step != t:
                    continue
                g = torch.cat([params[i].grad.flatten() for i in members])
                seeds = step_seeds(SEED, t, bucket, 0, DIM)
                phi = generate_directions(seeds, g.numel(), "gaussian") / math.sqrt(g.numel())
                update = phi.t() @ (phi @ g)
                parts = update.split([params[i].numel() for i in members])
                for i, part in zip(members, parts, strict=True):
                    params[i].sub_(LR * part.view_as(params[i]))
    return [p.detach() for p in params]


def test_two_gloo_workers_with_the_hook_are_rbd_on_the_whole_batch(tmp_path):
    out = tmp_path / "result"
    mp.start_processes(
        _hook_worker,
        args=(str(tmp_path / "store"), str(out)),
        nprocs=WORKERS,
        join=True,
        start_method="spawn",
    )
    assert not multiprocessing.active_children()
    results = [torch.load(f"{out}.{rank}") for rank in range(WORKERS)]
    layouts = results[0]["layouts"]
    assert results[1]["layouts"] == layouts
    # Each parameter in exactly one bucket at every step; two buckets once DDP has
    # rebuilt them after the first step (PyTorch 2.14 starts with one).
    for t in range(STEPS):
        buckets = {b: m for s, b, m in layouts if s == t}
        assert sorted(i for m in buckets.values() for i in m) == [0, 1, 2, 3]
        assert t == 0 or sorted(buckets) == [0, 1]
    assert results[0]["step"] == STEPS
    reference = _reference(layouts)
    for result in results:
        for got, want in zip(result["params"], reference, strict=True):
            assert torch.allclose(got, want, rtol=0, atol=1e-6), (got - want).abs().max()
    # The projection did change the update: plain SGD ends elsewhere.
    sgd = _model()
    x, y = _batches()
    opt = torch.optim.SGD(sgd.parameters(), lr=LR)
    for t in range(STEPS):
        opt.zero_grad()
        F.mse_loss(sgd(x[t]), y[t]).backward()
        opt.step()
    moved = zip(sgd.parameters(), reference, strict=True)
    assert max((a - b).abs().max() for a, b in moved) > 1e-3
    # d float32 coordinates per bucket on the wire, against the whole bucket for DDP.
    assert results[0]["wire_bytes"] == {0: DIM * 4, 1: DIM * 4}
    sizes = {b: sum(reference[i].numel() for i in m) for _, b, m in layouts[-2:]}
    assert results[0]["bucket_bytes"] == {b: n * 4 for b, n in sizes.items()}


def test_hook_state_checks_its_settings_and_resumes_only_the_same_bases():
    state = RBDHookState(seed=3, dim=5, distribution="rademacher")
    state.step = 7
    saved = state.state_dict()
    assert saved == {"seed": 3, "dim": 5, "distribution": "rademacher", "step": 7}
    fresh = RBDHookState(seed=3, dim=5, distribution="rademacher")
    fresh.load_state_dict(saved)
    assert fresh.step == 7
    for name, value in (("seed", 4), ("dim", 6), ("distribution", "gaussian")):
        other = RBDHookState(**(dict(seed=3, dim=5, distribution="rademacher") | {name: value}))
        with pytest.raises(ValueError, match=f"{name}="):
            other.load_state_dict(saved)
    for kwargs, name in (({"dim": 0}, "dim"), ({"distribution": "normal"}, "distribution")):
        with pytest.raises(ValueError, match=name):
            RBDHookState(**({"seed": 0, "dim": 5} | kwargs))


def test_documented_example_runs_under_torchrun_on_two_cpu_processes():
    assert EXAMPLE_COMMAND in (ROOT / "docs" / "distributed.md").read_text()
    proc = subprocess.run(
        EXAMPLE_COMMAND, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both ranks end with the same parameters, and the bytes line is d x 4 per bucket.
    assert "parameters identical on 2 workers" in proc.stdout, proc.stdout
    wire = re.search(
        r"all-reduced per step: (\d+) bytes in (\d+) buckets? of d = (\d+)",
        proc.stdout,
    )
    assert wire, proc.stdout
    total, buckets, dim = map(int, wire.groups())
    assert total == buckets * dim * 4


def test_hf_trainer_example_registers_the_hook_through_a_callback():
    """examples/hf_trainer_rbd.py, where transformers and accelerate are installed."""
    for package in ("transformers", "accelerate"):
        pytest.importorskip(package, reason=f"{package} is not installed (not an rbd dependency)")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "examples/hf_trainer_rbd.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters identical on 2 workers" in proc.stdout, proc.stdout
    total, buckets, dim = map(int, re.search(r"(\d+) bytes in (\d+) bucket\(s\) of d = (\d+)",
                                             proc.stdout).groups())  # fmt: skip
    assert buckets >= 1 and total == buckets * dim * 4  # the hook ran: d floats per bucket
    losses = [float(x) for x in re.search(r"loss every 20 steps: (.*)", proc.stdout)[1].split(",")]
    assert losses[-1] < losses[0] / 2
