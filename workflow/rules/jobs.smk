# How training jobs run: the interpreter, the launcher that holds the operational settings,
# the warm-start server, and each job's resources. Nothing here writes a file when the
# workflow is read: the launcher is written by `onstart` (Snakefile), which real runs
# execute and dry runs do not (a dry run, which Snakemake does not lock out while a real
# run works in this directory, never rewrites the launcher running jobs read).
import shlex

from rbd.spec import DATASET_FACTS, parse_run_key
from rbd.spec.io import write_text
from rbd.warm import start_server, stop_server
from rbd.workflow.cost import runtime_minutes, schedule_priority

# Jobs import the rbd package of this checkout (the absolute path of the directory of
# the Snakefile), whatever else is installed. They run the interpreter that runs
# Snakemake (the project's venv), which inherits PYTHONPATH; or, under
# --software-deployment-method conda, the `python` of the rule's environment
# (workflow/envs/*.yaml: third-party packages only). Snakemake removes PYTHONPATH
# from a conda job's environment, so the command sets it itself.
_USE_CONDA = "conda" in {
    str(m).lower().split(".")[-1]
    for m in workflow.deployment_settings.deployment_method
}
PYTHON = (
    shlex.join(["env", f"PYTHONPATH={RBD_ROOT}", "python"])
    if _USE_CONDA
    else shlex.quote(sys.executable)
)
# Shared cluster storage: RBD_DATA_DIR overrides the config's data_dir.
DATA_DIR = os.environ.get("RBD_DATA_DIR") or config["data_dir"]
# Data set -> local folder to install it from (`rbd download --from`) instead of downloading.
DATA_SOURCE = config["data_source"]
# Data sets that ship inside a package and need no download step.
BUNDLED_DATASETS = {
    name for name, f in DATASET_FACTS.items() if f.torchvision_class is None
}


def train_args(run):
    """`rbd train` flags that define a run (from its key), each shell-quoted."""
    return parse_run_key(run).shell_args()


# How jobs run, not what they compute (interpreter, data location, device, threads,
# checkpoint interval, divergence threshold) lives in a launcher script whose path,
# the only thing the train rule's params hold of it, never changes: Snakemake reruns a
# finished job whose params changed, and none of these may retrain a finished run.
# Every setting that changes a result is in the run key, hence in the output path.
TRAIN_LAUNCHER = ".snakemake/rbd/train.sh"
# config warm_start (rbd/warm.py): local jobs fork from one process that imported
# PyTorch once, through this socket (relative: jobs run in the working directory).
WARM_SOCKET = ".snakemake/rbd/warm.sock"
WARM_LOG = "logs/warm_start.log"
_WARM_SERVER = []


def write_train_launcher(path=TRAIN_LAUNCHER, warm_socket=None):
    entry = ["rbd.warm", "run", "--socket", warm_socket] if warm_socket else ["rbd"]
    command = shlex.join(
        [
            *shlex.split(PYTHON),
            "-m",
            *entry,
            "train",
            "--data-dir",
            DATA_DIR,
            "--device",
            str(config["device"]),
            "--threads",
            str(config["threads"]),
            "--checkpoint-minutes",
            str(config["checkpoint_minutes"]),
            "--divergence-loss",
            str(config["divergence_loss"]),
        ]
    )
    write_text(
        Path(path),
        f'#!/bin/sh\n# Written by the workflow at start.\nexec {command} "$@"\n',
    )


def start_warm_start():
    """WARM_SOCKET once a warm-start server listens there, else None: only with config
    warm_start, the local executor (a cluster job runs elsewhere) and no conda (the
    jobs' interpreter is the one running Snakemake)."""
    if not config["warm_start"] or not workflow.local_exec or _USE_CONDA:
        return None
    server, problem = start_server(WARM_SOCKET, WARM_LOG)
    if server is None:
        print(f"rbd: warm start off ({problem}); every job imports PyTorch itself")
        return None
    _WARM_SERVER.append(server)
    return WARM_SOCKET


def stop_warm_start():
    while _WARM_SERVER:
        stop_server(_WARM_SERVER.pop())


def run_workers(run):
    """W of a distributed run (1 for a one-process run): its processes."""
    return parse_run_key(run).workers or 1


def train_threads(wildcards):
    """CPUs of a training job: `threads` (config key) for each of its W workers."""
    return run_workers(wildcards.run) * int(config["threads"])


def train_runtime(wildcards, attempt):
    """Wall-time limit of a training job in minutes (SLURM --time): rbd.workflow.cost's estimate
    from d, D, epochs and the device, times the config key `runtime_scale`. A job killed
    at its limit is retried (profile `retries`) with `attempt` times the time and resumes
    from its checkpoint."""
    return runtime_minutes(
        parse_run_key(wildcards.run),
        device=str(config["device"]),
        scale=float(config["runtime_scale"]),
        attempt=attempt,
    )


def train_priority(wildcards):
    """Multi-process jobs first, then the longest (rbd.workflow.cost.schedule_priority)."""
    spec = parse_run_key(wildcards.run)
    return schedule_priority(spec, device=str(config["device"]))


def train_mem_mb(wildcards):
    """4 GB hold a data set (CIFAR-10 at most) beside PyTorch; 1 GB more per extra worker."""
    return 4000 + 1000 * (run_workers(wildcards.run) - 1)


def uses_gpu():
    return str(config["device"]).startswith("cuda")


def train_gpus(wildcards):
    """GPUs of a training job: one per worker with device cuda, else none."""
    return run_workers(wildcards.run) if uses_gpu() else 0


def train_tasks(wildcards):
    """SLURM tasks: one on CPUs; on GPUs none, so that the SLURM plugin sets no
    --ntasks-per-gpu, which srun rejects beside --cpus-per-task (plugin issues #342,
    #373; the plugin omits the flag for tasks < 1). `rbd train --workers W` spawns its
    W processes itself, in the one job on one node (resource `nodes`)."""
    return 0 if train_gpus(wildcards) else 1


def data_ready(run):
    """The marker of a verified data set the run reads ([] for bundled data)."""
    dataset = parse_run_key(run).dataset
    if dataset in BUNDLED_DATASETS:
        return []
    return [f"{DATA_DIR}/.rbd/{dataset}.ready"]
