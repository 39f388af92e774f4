"""What a training run costs, estimated before it runs: the wall-time limit a scheduler gets.

A step costs the model's forward and backward pass on one minibatch plus, for RBD and
FPD, regenerating and applying d directions of D entries (d x D work, the part that
dominates on a CPU). Constants are per device type; `runtime_scale` (config key)
multiplies the estimate for a cluster faster or slower than these machines.
"""

from __future__ import annotations

import math

from rbd.spec import DATASET_FACTS, MODEL_FACTS, RunSpec, num_params

# Seconds per step of 32 images for the model's forward and backward pass (with
# augmentation and the optimiser's bookkeeping) are rbd.spec.facts's ModelFacts.step_seconds
# (CPU: one thread of a 2-core machine); training images per epoch its DatasetFacts.
# Seconds per direction entry per step (d x D of them) for RBD and FPD: measured on CPU
# with the compiled kernels (fc, d = 250: 21 ms per step on a quiet core, 40-60 ms on a
# shared 2-core machine; a limit errs long); on a GPU generation and both products are
# bandwidth-bound (an assumption, not a measurement).
DIRECTION_S = {"cpu": 2e-9, "cuda": 5e-11}
# Fixed minutes per job: start-up, data loading, evaluation.
OVERHEAD_MIN = 10


def device_type(device: str) -> str:
    """ "cuda" for a CUDA device setting, else "cpu" (auto is planned as a CPU, the slower)."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def estimated_step_seconds(spec: RunSpec, device: str = "cpu") -> float:
    """Estimated seconds per minibatch of `spec` on `device`."""
    kind = device_type(device)
    seconds = MODEL_FACTS[spec.model].step_seconds[kind] * spec.batch_size / 32
    if spec.method in ("rbd", "fpd"):
        seconds += spec.dim * num_params(spec.model, spec.dataset) * DIRECTION_S[kind]
    return seconds


def training_seconds(spec: RunSpec, device: str = "cpu") -> float:
    """Estimated seconds of training steps: epochs x steps per epoch x step time."""
    steps = spec.epochs * math.ceil(DATASET_FACTS[spec.dataset].train_images / spec.batch_size)
    return steps * estimated_step_seconds(spec, device)


# Multi-process jobs go before every one-process job (see schedule_priority): a bound
# no estimate of seconds reaches.
PRIORITY_PER_EXTRA_WORKER = 10**9


def schedule_priority(spec: RunSpec, device: str = "cpu") -> int:
    """Snakemake priority of a training job on a local machine: a job of W > 1 processes
    first (it needs W cores free at once, as they are at the start), then the longest
    first, so that a run on few cores does not end with one long job beside idle ones."""
    extra_workers = (spec.workers or 1) - 1
    return extra_workers * PRIORITY_PER_EXTRA_WORKER + math.ceil(training_seconds(spec, device))


def runtime_minutes(spec: RunSpec, device: str = "cpu", scale: float = 1.0, attempt: int = 1):
    """A wall-time limit for the run: attempt x (overhead + epochs x steps x step time x
    scale), in whole minutes. A job killed at its limit resumes from its checkpoint on the
    next attempt, which gets proportionally more."""
    minutes = training_seconds(spec, device) * scale / 60
    return attempt * (OVERHEAD_MIN + math.ceil(minutes))
