"""The Snakemake workflow: the jobs each preset plans, lint, and a small real run."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rbd.report.kinds import TABLE_KINDS
from rbd.spec import BASES_VERSION, parse_run_key
from rbd.workflow.cost import runtime_minutes
from tests.helpers import ROOT, _train_resources, snakemake


def planned_jobs(proc) -> dict[str, int]:
    assert proc.returncode == 0, proc.stderr + proc.stdout
    counts = re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M)
    return {rule: int(n) for rule, n in counts}


# Training jobs each paper-preset target plans on its own, worked out from the
# grids in config/config.yaml (6 pairs = {fc, cnn} x {mnist, fashion_mnist,
# cifar10}; 3 seeds; SGD has no dim, distribution, compartments or switch, so
# one SGD run per pair and seed serves every column).
PAPER_TRAIN_JOBS = {
    "table1": 6 * 4 * 3,  # NES, FPD, RBD, SGD
    "table2": 6 * (4 * 3 + 3),  # RBD x 4 distributions, plus SGD
    "table3": (4 * 2 + 1) * 3,  # 4 factors x {RBD, FPD}, plus SGD
    "fig_curves": 4 * 3,  # RBD, FPD, NES, SGD at d = 500
    "fig_dims": (8 * 2 + 1) * 3,  # 8 dims x {RBD, FPD}, plus SGD
    "fig_switch": 2 * (7 * 3 + 3),  # 2 models x 7 switches of RBD, plus SGD
    "fig_scaling": 5 * 2,  # W = 1, 2, 4, 8, 16 x bases worker, split; seed 0
    "fig_bases": 3 * (4 * 3 + 1) * 3,  # 3 models x (4 distributions x 3 dims + SGD)
    "fig_lr": 6 * 4 * 24,  # 6 pairs x 4 methods x 2^5..2^-18, one seed
    "verify": 2 * 2 * 4,  # fc, cnn x mnist, fashion_mnist x 4 methods, seed 0, 3 epochs
}
# Shared with an earlier experiment: fig_curves' SGD is table3's (same
# augmented ResNet-8); fig_dims' d = 250 RBD/FPD and SGD, and fig_switch's
# unswitched RBD and SGD, are table1's; table2's Gaussian RBD and SGD too;
# fig_bases' ResNet-8 SGD is table3's, and its FC and CNN Gaussian d = 250 RBD
# and SGD on CIFAR-10 are table1's and its Rademacher d = 250 ones table2's (all
# augmented, as the authors ran them).
PAPER_DEFAULT_JOBS = (
    PAPER_TRAIN_JOBS["table1"]
    + 6 * 3 * 3
    + PAPER_TRAIN_JOBS["table3"]
    + 3 * 3
    + 7 * 2 * 3
    + 2 * 6 * 3
    + PAPER_TRAIN_JOBS["fig_scaling"]
    + PAPER_TRAIN_JOBS["fig_bases"]
    - 3
    - 2 * 2 * 3
    - 2 * 3
)
PAPER_DOWNLOADS = {"table1": 3, "table2": 3, "table3": 1, "fig_curves": 1, "fig_dims": 1,
                   "fig_switch": 1, "fig_scaling": 1, "fig_bases": 1, "fig_lr": 3,
                   "verify": 2}  # fmt: skip


def _processes_in(directory) -> list[str]:
    """Command lines of this user's processes whose working directory is `directory`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").resolve() == Path(directory).resolve():
                found.append((proc / "cmdline").read_text().replace("\0", " "))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("experiment", list(PAPER_TRAIN_JOBS))
def test_paper_preset_plans_each_experiments_grid(tmp_path, experiment):
    jobs = planned_jobs(
        snakemake("-n", "--cores", "8", "--directory", tmp_path, f"figures/{experiment}.pdf")
    )
    assert jobs["train"] == PAPER_TRAIN_JOBS[experiment]
    assert jobs["download_data"] == PAPER_DOWNLOADS[experiment]
    assert jobs["aggregate_experiment"] == 1
    kind = yaml.safe_load((ROOT / "config/config.yaml").read_text())["experiments"][experiment]
    # Every PDF is drawn by one rule; a table's Markdown and LaTeX come with it.
    assert jobs["plot_figure"] == 1
    assert jobs.get("render_table", 0) == (kind["kind"] in TABLE_KINDS)
    assert jobs.get("pick_learning_rates", 0) == (experiment == "fig_lr")


def test_verify_overlay_installs_the_local_data_and_trains_the_authors_protocol(tmp_path):
    overlay = tmp_path / "verify.yaml"
    overlay.write_text("data_source: {mnist: '/data sets/mnist', fashion_mnist: /data/fmnist}\n")
    proc = snakemake(
        "-n", "-p", "--cores", "2", "--directory", tmp_path, f"--configfile={overlay}",
        "figures/verify.pdf",
    )  # fmt: skip
    jobs = planned_jobs(proc)
    assert jobs["train"] == 16 and jobs["download_data"] == 2
    assert "--from '/data sets/mnist'" in proc.stdout and "--from /data/fmnist" in proc.stdout
    keys = set(re.findall(r"wildcards: run=(\S+)", proc.stdout))
    assert len(keys) == 16 and all("_e-3_" in k and k.endswith("seed0") for k in keys)
    # the authors' effective rates and augmentation (config/README.md, "Paper preset")
    assert "mnist/fc/rbd/d250_gaussian/lr-1.0_e-3_b-32_aug-1_bv-2/seed0" in keys
    assert "fashion_mnist/cnn/sgd/d0_none/lr-0.0625_e-3_b-32_aug-1/seed0" in keys
    assert "mnist/fc/fpd/d250_gaussian/lr-1.0_e-3_b-32_aug-1_off-1_bv-2/seed0" in keys
    assert "mnist/cnn/nes/d250_gaussian/lr-0.0625_e-3_b-32_aug-1_nnorm-1_bv-2/seed0" in keys


def test_bases_experiment_also_builds_its_table(tmp_path):
    proc = snakemake("-n", "--cores", "8", "--directory", tmp_path, "figures/fig_bases.md")
    jobs = planned_jobs(proc)
    assert jobs["render_table"] == 1 and "plot_figure" not in jobs


def test_distributed_runs_ask_for_a_core_or_gpu_per_worker(tmp_path):
    args = ("-n", "--cores", "64", "--directory", tmp_path, "figures/fig_scaling.pdf")
    jobs = _train_resources(snakemake(*args).stdout)
    assert len(jobs) == PAPER_TRAIN_JOBS["fig_scaling"]
    for run, res in jobs.items():
        workers = int(re.search(r"_w-(\d+)", run)[1])
        assert res["threads"] == res["cpus_per_task"] == str(workers), (run, res)
        assert res["tasks"] == "1" and res["gpu"] == "0"
        assert res["runtime"] == str(runtime_minutes(parse_run_key(run)))  # rbd/workflow/cost.py
        assert res["mem_mb"] == str(4000 + 1000 * (workers - 1))
    jobs = _train_resources(snakemake(*args, "--config", "device=cuda").stdout)
    for run, res in jobs.items():
        workers = int(re.search(r"_w-(\d+)", run)[1])
        assert res["gpu"] == str(workers)
        # The SLURM plugin would read tasks as --ntasks-per-gpu (rejected by srun beside
        # --cpus-per-task): none for GPU jobs; the W processes share one node.
        assert res["tasks"] == "0" and res["nodes"] == "1"


def test_train_runtime_is_the_cost_estimate(tmp_path):
    args = ("-n", "--cores", "8", "--directory", tmp_path, "figures/table3.pdf")
    jobs = _train_resources(snakemake(*args).stdout)
    for run, res in jobs.items():
        assert res["runtime"] == str(runtime_minutes(parse_run_key(run))), run


def test_paper_default_target_builds_all_but_the_sweep(tmp_path):
    proc = snakemake("-n", "--cores", "8", "--directory", tmp_path)
    jobs = planned_jobs(proc)
    assert jobs["train"] == PAPER_DEFAULT_JOBS == 346
    assert jobs["aggregate_experiment"] == 8
    assert "verify" not in proc.stdout  # opt-in
    # One rule each: the Markdown/LaTeX tables of the kinds that have one (Tables 1-3 and
    # fig_bases), and every experiment's PDF (a table kind's is its table as a page).
    assert jobs["render_table"] == 4 and jobs["plot_figure"] == 8
    assert "pick_learning_rates" not in jobs and "fig_lr" not in proc.stdout


def test_quick_preset_plans_only_its_own_runs(tmp_path):
    proc = snakemake(
        "-n",
        "--cores",
        "2",
        "--directory",
        tmp_path,
        f"--configfile={ROOT / 'config/quick.yaml'}",
        "figures/table1.pdf",
    )
    jobs = planned_jobs(proc)
    quick = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    t1 = quick["experiments"]["table1"]
    seeds = t1.get("seeds", quick["defaults"]["seeds"])
    assert jobs["train"] == len(t1["models"]) * len(t1["methods"]) * len(seeds)
    assert "cifar10" not in proc.stdout and "fashion_mnist" not in proc.stdout


def test_quick_preset_default_target_plans_every_experiment_but_the_sweep(tmp_path):
    proc = snakemake(
        "-n", "--cores", "2", "--directory", tmp_path, f"--configfile={ROOT / 'config/quick.yaml'}"
    )
    jobs = planned_jobs(proc)
    # table1 (2 models x 4 methods x 2 seeds, 5 epochs) + table2 (2 models x
    # (4 distributions + SGD) x 2 seeds, 3 epochs) + table3's 2 factors x {RBD, FPD}
    # (cnn, 2 seeds) + fig_dims' 3 other dims x {RBD, FPD} and d = 250 FPD (fc, 2
    # seeds) + fig_switch's 4 switches (fc, 2 seeds); fig_curves reuses table1's
    # CNN runs; fig_scaling's W = 1, 2 x 2 bases; fig_bases (fc, cnn, d = 250, 2
    # seeds): SRHT and Fastfood x 2 seeds x 2 models (Gaussian, Rademacher and SGD
    # are table2's runs).
    assert jobs["train"] == 16 + 20 + 8 + 14 + 8 + 4 + 8
    assert jobs["aggregate_experiment"] == 8
    assert "download_data" not in jobs and "pick_learning_rates" not in jobs


def test_longest_training_jobs_are_scheduled_first(tmp_path):
    """Local runs end on few cores without one long job beside idle ones: a training
    job's priority grows with its work (epochs x minibatches x (model + d x D))."""
    proc = snakemake(
        "-n", "--cores", "2", "--directory", tmp_path, f"--configfile={ROOT / 'config/quick.yaml'}"
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    blocks = re.findall(r"wildcards: run=(\S+)\n\s+priority: (\d+)", proc.stdout)
    priority = {run: int(p) for run, p in blocks}
    assert len(priority) == planned_jobs(proc)["train"]  # every training job has one

    def of(model, method, dim, epochs):
        prefix = f"mnist5k/{model}/{method}/d{dim}_"
        return {
            p for run, p in priority.items() if run.startswith(prefix) and f"_e-{epochs}_" in run
        }

    # The 5-epoch Table 1 runs of RBD and FPD come before any 3-epoch run of theirs,
    # which come before SGD's; on one model a larger d comes first.
    assert min(of("cnn", "rbd", 250, 5) | of("fc", "fpd", 250, 5)) > max(
        of("cnn", "rbd", 250, 3) | of("fc", "rbd", 250, 3)
    )
    assert min(of("fc", "rbd", 250, 3)) > max(of("fc", "rbd", 100, 3)) > max(of("fc", "rbd", 10, 3))
    assert min(of("fc", "rbd", 10, 3)) > max(of("fc", "sgd", 0, 3)) > 0
    # A job of W = 2 processes needs both cores at once: it goes before all of them.
    multi = {p for run, p in priority.items() if "_w-2_" in run}
    assert len(multi) and min(multi) > max(p for run, p in priority.items() if "_w-2_" not in run)


def test_a_preset_by_name_takes_override_files_on_top(tmp_path):
    """`--config preset=quick` with `--configfile=more.yaml`: the quick preset with the
    override (Snakemake keeps only the last --configfile, so two files cannot do it)."""
    more = tmp_path / "more.yaml"
    more.write_text("defaults: {epochs: 4, seeds: [0]}\n")
    args = ("-n", "--cores", "2", "--directory", tmp_path, f"--configfile={more}")
    proc = snakemake(*args, "--config", "preset=quick")
    jobs = planned_jobs(proc)
    assert "download_data" not in jobs
    keys = set(re.findall(r"wildcards: run=(\S+)", proc.stdout))
    assert keys and all(k.startswith("mnist5k/") for k in keys)
    # experiments with their own epochs keep them (table1 5, fig_scaling 2); the rest
    # take the override's 4 instead of the quick default 3, and seed 0 only
    assert {re.search(r"_e-(\d+)_", k)[1] for k in keys} == {"2", "4", "5"}
    uniform = [k for k in keys if "_uniform/" in k]  # table2's, on the default seeds
    assert uniform and all(k.endswith("/seed0") for k in uniform)
    proc = snakemake(*args, "--config", "preset=fast")
    assert proc.returncode != 0 and "no preset 'fast'" in proc.stdout + proc.stderr


def test_paper_vs_ours_is_drawn_from_the_committed_runs_in_a_clean_directory(tmp_path):
    """A fresh clone draws the comparison without training anything; with
    `paper_vs_ours: results` it is drawn from this run's Table 1 and 2 instead."""
    proc = snakemake("--cores", "1", "--directory", tmp_path, "figures/paper_vs_ours.pdf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "figures/paper_vs_ours.pdf").read_bytes().startswith(b"%PDF")
    assert not (tmp_path / "results").exists()
    log = (tmp_path / "logs/plots/paper_vs_ours.log").read_text()
    assert "docs/verification/full_protocol.csv" in proc.stderr + proc.stdout
    assert "outside the bound" in log
    args = (
        "-n",
        "--cores",
        "8",
        "--directory",
        tmp_path / "results-run",
        "figures/paper_vs_ours.pdf",
    )
    jobs = planned_jobs(snakemake(*args, "--config", "paper_vs_ours=results"))
    assert jobs["aggregate_experiment"] == 2 and jobs["plot_paper_vs_ours"] == 1
    # Table 1's runs, and Table 2's beyond them (its Gaussian and SGD runs are Table 1's)
    assert jobs["train"] == PAPER_TRAIN_JOBS["table1"] + 6 * 3 * 3


def test_snakemake_lint_is_clean():
    proc = snakemake("--lint", f"--configfile={ROOT / 'config/quick.yaml'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout, proc.stdout


@pytest.mark.slow
def test_tiny_preset_end_to_end_with_report(tmp_path):
    """A table, a figure and a sweep of a shrunken quick preset, then the HTML report."""
    config = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    config["preset"] = "tiny-test"
    config["defaults"] |= {"epochs": 2, "seeds": [0, 1], "dim": 20}
    small = {"models": ["fc"], "methods": ["sgd", "rbd"], "seeds": [0, 1]}
    config["experiments"] = {
        "table1": config["experiments"]["table1"] | small,
        "fig_dims": config["experiments"]["fig_dims"] | small | {"dims": [10, 20]},
        "fig_lr": config["experiments"]["fig_lr"] | small | {"lrs": {"rbd": ["2^3", "2^4"]}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    targets = ["figures/table1.pdf", "figures/fig_dims.pdf", "figures/fig_lr.pdf"]
    proc = snakemake(
        "--cores", "2", "--directory", tmp_path, f"--configfile={path}", *targets, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(tmp_path / "results/tables/table1.csv")
    assert set(table["method"]) == {"sgd", "rbd"}
    assert (table["n_seeds"] == 2).all()
    # each cell is the mean over seeds of the runs' own last-epoch accuracy
    for row in table.itertuples():
        runs = tmp_path / "results/runs/mnist5k/fc" / row.method
        epochs = config["experiments"]["table1"]["epochs"]
        version = "" if row.method == "sgd" else f"_bv-{BASES_VERSION}"  # keys of drawn bases
        pattern = (
            f"d{int(row.dim)}_*/lr-{float(row.lr)!r}_e-{epochs}_b-32{version}/seed*/metrics.csv"
        )
        finals = [pd.read_csv(path)["val_acc"].iloc[-1] for path in runs.glob(pattern)]
        assert len(finals) == 2 and row.val_acc_mean == pytest.approx(sum(finals) / 2)
    for name in ("table1", "fig_dims", "fig_lr"):
        assert (tmp_path / f"figures/{name}.pdf").read_bytes().startswith(b"%PDF")
    assert "| FC-MNIST5k |" in (tmp_path / "figures/table1.md").read_text()
    best = yaml.safe_load((tmp_path / "results/tables/fig_lr_best.yaml").read_text())
    assert set(best["learning_rates"]) == {"sgd", "rbd"}
    # the picked rate is the sweep's best mean accuracy, read back from its tidy CSV
    sweep = pd.read_csv(tmp_path / "results/tables/fig_lr.csv")
    means = sweep[sweep["method"] == "rbd"].groupby("lr")["val_acc"].mean()
    assert len(means) == 2
    assert best["learning_rates"]["rbd"]["fc-mnist5k"] == f"2^{round(math.log2(means.idxmax()))}"
    assert list((tmp_path / "logs/train").rglob("*.log"))
    # the quick preset's jobs forked from a warm-start server, which left with Snakemake
    assert "rbd.warm run" in (tmp_path / ".snakemake/rbd/train.sh").read_text()
    assert (tmp_path / "logs/warm_start.log").exists()
    assert not (tmp_path / ".snakemake/rbd/warm.sock").exists()
    assert not _processes_in(tmp_path)

    report = tmp_path / "report.html"
    proc = snakemake("--directory", tmp_path, f"--configfile={path}", "--report", report, *targets)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = report.read_text(errors="replace")
    assert "table1" in html and "fig_dims" in html and "fig_lr_best.yaml" in html


@pytest.mark.slow
def test_operational_settings_never_rerun_a_finished_run(tmp_path):
    """Finished runs survive another thread count, device spelling, data location,
    checkpoint interval or divergence threshold; another lr or epochs reruns exactly
    the runs it changes."""
    config = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    config["preset"] = "tiny-rerun"
    config["defaults"] |= {"epochs": 1, "seeds": [0], "dim": 20}
    config["experiments"] = {
        "tiny": {"kind": "method_table", "models": ["fc"], "datasets": ["mnist5k"],
                 "methods": ["sgd", "rbd"]}
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    base = ("--cores", "1", "--directory", tmp_path, f"--configfile={path}")
    stale = tmp_path / ".snakemake/rbd/train.sh"  # left by an earlier workflow
    stale.parent.mkdir(parents=True)
    stale.write_text('#!/bin/sh\nexec false "$@"\n')
    proc = snakemake(*base, "results/tables/tiny.csv", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exec false" not in stale.read_text()  # a real run writes its own
    for override in (
        ["threads=2"],
        ["device=auto"],  # the preset says cpu; auto is cpu here too
        ["data_dir=/elsewhere/data"],
        ["checkpoint_minutes=3", "divergence_loss=50"],
        ["warm_start=False"],  # Snakemake reads True/False as booleans
    ):
        proc = snakemake("-n", *base, "results/tables/tiny.csv", "--config", *override)
        assert proc.returncode == 0, proc.stderr
        assert "train" not in planned_jobs(proc), (override, proc.stdout)
    config["learning_rates"]["rbd"]["fc-mnist5k"] = "2^2"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", *base, "results/tables/tiny.csv")
    assert planned_jobs(proc)["train"] == 1  # the RBD run; SGD's is untouched
    config["defaults"]["epochs"] = 2
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", *base, "results/tables/tiny.csv")
    assert planned_jobs(proc)["train"] == 2


def test_profiles_in_the_docs_size_rules_that_exist(tmp_path):
    """The set-resources that docs/cluster.md shows for a site profile name real rules
    (no SLURM needed)."""
    doc = (ROOT / "docs/cluster.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)]
    named = {rule for b in blocks for rule in (b.get("set-resources") or {})}
    listed = snakemake(
        "--directory", tmp_path, f"--configfile={ROOT / 'config/quick.yaml'}", "--list-rules"
    ).stdout.split()
    assert "train" in listed and named and named <= set(listed), (named, listed)


def test_a_description_reaches_the_render_command_as_one_argument(tmp_path):
    nasty = "Table 1 'quoted' \"double\" $(touch pwned); echo x `id` | y"
    config = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    config["experiments"] = {"table1": config["experiments"]["table1"] | {"description": nasty}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "-p", "--cores", "1", "--directory", tmp_path, f"--configfile={path}",
        "figures/table1.md",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (command,) = [line for line in proc.stdout.splitlines() if " -m rbd render " in line]
    words = subprocess.run(
        ["sh", "-c", "printf '%s\\n' " + command.split(" > ")[0]],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert words[words.index("--description") + 1] == nasty
    assert not (tmp_path / "pwned").exists()
