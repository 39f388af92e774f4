"""What reaches a file, a shell or a markup language from a user is written safely."""

from __future__ import annotations

import errno
import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from rbd.report.tables import markdown_escape, render, rst_escape
from rbd.spec import io
from rbd.workflow.config import experiment_runs
from tests.helpers import ROOT, run_rbd

NASTY = "50% <b>*bold*</b> | `x` [a](b) $(touch pwned); rm -rf nowhere \\end{tabular}\nnext"


def test_atomic_writes_leave_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    io.write_json(target, {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        io.write_json(target, {"new": True})
    assert yaml.safe_load(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory_fails_before_any_work(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = run_rbd(
            "train", "--method", "sgd", "--model", "fc", "--dataset", "mnist5k", "--dim", "0",
            "--distribution", "none", "--lr", "1", "--out", out,
        )  # fmt: skip
    finally:
        out.chmod(0o755)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot write to the run directory" in proc.stderr


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(io.LOCK_FILE):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(ValueError, match="cannot write to the run directory .*Permission denied"):
        with io.run_lock(tmp_path):
            pass


def test_every_run_key_matches_the_snakefiles_run_constraint():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    pattern = re.search(r'run=r"([^"]+)"', common)[1]
    for preset in ("config.yaml", "quick.yaml"):
        config = yaml.safe_load((ROOT / "config" / preset).read_text())
        keys = {spec.key for runs in experiment_runs(config).values() for spec in runs}
        assert keys
        for key in keys:
            assert re.fullmatch(pattern, key), (preset, key)


def test_the_train_launcher_passes_metacharacters_through_unchanged(tmp_path):
    """A data directory with spaces, quotes, $(...) and ; reaches `rbd train` as one
    argument, and nothing runs it. The launcher is written when a real run starts (the
    Snakefile's onstart; a dry run writes nothing): here one that trains nothing, the
    committed paper-vs-ours figure."""
    data_dir = tmp_path / "my data 'quoted' $(touch pwned); echo x"
    config = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    config |= {"data_dir": str(data_dir), "threads": 2}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile",
         "--cores", "1", "--directory", tmp_path, f"--configfile={path}",
         "figures/paper_vs_ours.pdf"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    launcher = (tmp_path / ".snakemake/rbd/train.sh").read_text().splitlines()[-1]
    words = shlex.split(launcher)
    assert words[0] == "exec" and words[-1] == "$@"
    assert words[words.index("--data-dir") + 1] == str(data_dir)
    assert words[words.index("--threads") + 1] == "2"
    # the shell sees the same words (and runs nothing): print them instead of exec
    shown = subprocess.run(
        ["sh", "-c", launcher.replace("exec ", "printf '%s\\n' ", 1), "sh", "--out", "a b"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert shown.stdout.splitlines() == [*words[1:-1], "--out", "a b"]
    assert not (tmp_path / "pwned").exists()


def test_a_description_is_escaped_in_markdown_tex_and_the_report():
    escaped = markdown_escape(NASTY)
    assert "<b>" not in escaped and "*bold*" not in escaped and "\\|" in escaped
    assert "\n" not in rst_escape(NASTY) and "\\*bold\\*" in rst_escape(NASTY)


def test_render_keeps_a_description_on_its_line(tmp_path):
    table = pd.DataFrame(
        [dict(experiment="t", model="fc", dataset="mnist5k", method="sgd", dim=0,
              distribution="none", compartments="none", n_seeds=1, n_diverged=0,
              val_acc_mean=90.0, val_acc_std=float("nan"), frac_sgd=1.0, num_params=101770,
              grad_corr_mean=float("nan"), grad_corr_tensors_mean=float("nan"),
              paper_val_acc=None, paper_frac_sgd=None)]
    )  # fmt: skip
    render(table, "t", description=NASTY, md=tmp_path / "t.md", tex=tmp_path / "t.tex")
    tex = (tmp_path / "t.tex").read_text().splitlines()
    assert tex[0].startswith("% t: ") and "next" in tex[0]  # one comment line
    assert tex[1].startswith("\\begin{tabular}")
    md = (tmp_path / "t.md").read_text()
    assert "<b>" not in md and "\\<b\\>" in md and "\\[a\\](b)" in md
    assert markdown_escape("- not a list") == "\\- not a list"


def test_a_dry_run_never_rewrites_the_launcher_running_jobs_read(tmp_path):
    launcher = tmp_path / ".snakemake/rbd/train.sh"
    launcher.parent.mkdir(parents=True)
    launcher.write_text('#!/bin/sh\nexec the-running-workflow\'s-command "$@"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", "-n",
         "--cores", "1", "--directory", tmp_path, f"--configfile={ROOT / 'config/quick.yaml'}",
         "--config", "threads=2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "the-running-workflow's-command" in launcher.read_text()
