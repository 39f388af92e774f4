"""The intrinsic-dimension kind (rbd.report.intrinsic): d_int90 against hand computations,
its uncertainty, the figure's drawn values read back against the table, and the settings
that fail before any work."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from rbd.report.intrinsic import LI_D_INT90, crossing, d_int90_table, intrinsic_runs
from rbd.report.plots import plot
from rbd.report.tables import experiment_table, wide_table
from rbd.spec import ConfigError
from rbd.workflow.config import validate_config
from tests.helpers import ROOT, make_run

LI = {"update_rule": "adam", "beta2": 0.99, "l2": 1e-4, "init": "he_normal"}


def test_crossing_interpolates_in_log_d_by_hand():
    # 0.8 at d = 100, 1.0 at d = 1000: 0.9 is half-way in log d, sqrt(100 * 1000).
    d, lo, hi = crossing([10, 100, 1000], [0.5, 0.8, 1.0])
    assert d == pytest.approx(math.sqrt(1e5)) and (lo, hi) == (100, 1000)
    # Reached at the first grid point: that point, an upper bound.
    d, lo, hi = crossing([10, 100], [0.95, 0.99])
    assert d == hi == 10 and math.isnan(lo)
    # Never reached: nan, with the last grid point as a lower bound.
    d, lo, hi = crossing([10, 100], [0.2, 0.3])
    assert math.isnan(d) and lo == 100 and math.isnan(hi)
    # The first crossing counts, not a later dip and rise.
    assert crossing([1, 10, 100, 1000], [0.1, 0.9, 0.85, 0.95])[0] == pytest.approx(10)


def _li_runs(root, accs: dict[tuple[str, int], list[float]], baseline=(98.0, 97.0)):
    """Run directories of an intrinsic-dimension experiment on fc2x200/mnist: SGD-method
    baselines (one per seed) and (method, d) -> final accuracy per seed."""
    paths = [
        make_run(
            root,
            "sgd",
            s,
            acc,
            dim=0,
            distribution="none",
            model="fc2x200",
            num_params=199_210,
            settings=LI,
        )  # fmt: skip
        for s, acc in enumerate(baseline)
    ]
    for (method, dim), per_seed in accs.items():
        paths += [
            make_run(
                root,
                method,
                s,
                acc,
                dim=dim,
                distribution="fastfood",
                model="fc2x200",
                num_params=199_210,
                settings=LI,
            )  # fmt: skip
            for s, acc in enumerate(per_seed)
        ]
    return paths


def test_d_int90_is_where_the_mean_fraction_of_the_baseline_reaches_90_percent(tmp_path):
    # Baseline 97.5 (mean of 98, 97); 90 % of it: 87.75. FPD: 80 at d = 500, 90 at 1000
    # (means over 2 seeds): fraction 0.8205 and 0.9231.
    accs = {("fpd", 500): [79.0, 81.0], ("fpd", 1000): [89.0, 91.0],
            ("rbd", 10): [70.0, 70.0], ("rbd", 100): [95.0, 95.0]}  # fmt: skip
    runs = intrinsic_runs(_li_runs(tmp_path, accs), "id")
    assert set(runs["baseline_acc"]) == {97.5}
    table = d_int90_table(runs).set_index("method")
    f0, f1 = 80 / 97.5, 90 / 97.5
    expected = math.exp(math.log(500) + (0.9 - f0) / (f1 - f0) * math.log(2))
    assert table.loc["fpd", "d_int90"] == pytest.approx(expected)
    assert (table.loc["fpd", "bracket_lo"], table.loc["fpd", "bracket_hi"]) == (500, 1000)
    # Two seeds each: a bootstrap interval that holds the estimate, inside the bracket.
    assert 500 <= table.loc["fpd", "d_int90_lo"] <= expected <= table.loc["fpd", "d_int90_hi"]
    assert table.loc["fpd", "li_d_int90"] == LI_D_INT90[("fc2x200", "mnist")] == 750
    assert table.loc["fpd", "ratio_to_li"] == pytest.approx(expected / 750)
    # Li et al.'s notebook reading: 90 % absolute accuracy (0.8 -> 0.9 between 500 and 1000).
    assert table.loc["fpd", "d_int90_abs"] == pytest.approx(1000)
    # RBD: 70/97.5 at 10 and 95/97.5 at 100; its ratio to FPD's d_int90.
    g0, g1 = 70 / 97.5, 95 / 97.5
    rbd = math.exp(math.log(10) + (0.9 - g0) / (g1 - g0) * math.log(10))
    assert table.loc["rbd", "d_int90"] == pytest.approx(rbd)
    assert table.loc["rbd", "ratio_to_fpd"] == pytest.approx(rbd / expected)


def test_the_figure_draws_the_tables_values(tmp_path):
    """The values drawn in figures/intrinsic_dim.pdf, read back from the figure the CLI
    saves, against the tidy table and the d_int90 table."""
    accs = {("fpd", 300): [60.0], ("fpd", 750): [85.0], ("fpd", 1000): [92.0],
            ("rbd", 10): [50.0], ("rbd", 50): [93.0]}  # fmt: skip
    runs = experiment_table(_li_runs(tmp_path, accs, [98.0]), "id", "intrinsic_dim")
    summary = d_int90_table(runs)
    fig = plot("intrinsic_dim", runs, "test")
    (ax,) = [a for a in fig.axes if a.has_data()]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    for method in ("fpd", "rbd"):
        drawn = lines[f"mean:{method}:fastfood:adam"]
        rows = runs[runs["method"] == method].groupby("dim")["final_val_acc"].mean()
        assert list(drawn.get_xdata()) == list(rows.index)
        assert list(drawn.get_ydata()) == pytest.approx(list(rows.values))
        found = summary[summary["method"] == method]["d_int90"].iloc[0]
        assert lines[f"d_int90:{method}:fastfood:adam"].get_xdata()[0] == pytest.approx(found)
    assert lines["threshold"].get_ydata()[0] == pytest.approx(0.9 * 98.0)
    assert lines["baseline"].get_ydata()[0] == pytest.approx(98.0)
    assert lines["li"].get_xdata()[0] == 750
    assert ax.get_xscale() == "log"
    wide = wide_table(runs, "intrinsic_dim")
    assert len(wide) == 2 and wide["Li et al."].iloc[0] == "750"


def test_one_seed_gives_the_grid_points_around_the_crossing_as_its_interval(tmp_path):
    accs = {("fpd", 100): [50.0], ("fpd", 1000): [95.0]}
    table = d_int90_table(intrinsic_runs(_li_runs(tmp_path, accs, [98.0]), "id"))
    assert (table["d_int90_lo"].iloc[0], table["d_int90_hi"].iloc[0]) == (100, 1000)
    assert table["seeds"].iloc[0] == 1


def _quick() -> dict:
    return yaml.safe_load((ROOT / "config/quick.yaml").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["fpd", "rbd"]}, r"experiments\.intrinsic_dim\.methods: .*\['sgd'\]"),
        ({"dims": [10, 199_211]}, r"experiments\.intrinsic_dim\.dims: dim=199211 exceeds D"),
        ({"update_rule": "lbfgs"}, r"experiments\.intrinsic_dim\.update_rule: 'lbfgs' is not"),
        ({"l2": -1.0}, r"experiments\.intrinsic_dim\.l2"),
    ],
)
def test_settings_that_cannot_work_fail_before_any_work_naming_the_key(change, message):
    config = copy.deepcopy(_quick())
    config["experiments"]["intrinsic_dim"] |= change
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(config, ROOT / "config/schemas/config.schema.yaml")
    assert "\n" not in str(err.value)


def test_the_quick_preset_plans_the_experiment_with_its_baseline():
    from rbd.workflow.config import expand_experiment, in_default_target

    runs = expand_experiment(_quick(), "intrinsic_dim")
    methods = {r.method for r in runs}
    assert methods == {"fpd", "rbd", "sgd"}
    rules = {r.method: r.update_rule for r in runs}
    assert rules == {"sgd": "adam", "fpd": "adam", "rbd": "sgd"}  # given per method
    assert all(r.l2 == 1e-4 for r in runs)
    assert {r.dim for r in runs if r.method == "sgd"} == {0}
    assert {r.method: r.lr for r in runs} == {"sgd": 0.01, "fpd": 0.01, "rbd": 1.0}
    assert not in_default_target(_quick(), "intrinsic_dim")  # opt-in: not in make demo


def test_the_verification_pages_commands_run(tmp_path):
    """docs/verification/intrinsic_dim.md's commands: the preset's Snakemake call as a dry run
    (it plans the intrinsic-dimension runs and their figure), and the summary script on a
    results directory of runs (here a small one), which writes the CSVs and the figure."""
    import re
    import subprocess
    import sys

    page = (ROOT / "docs/verification/intrinsic_dim.md").read_text()
    block = re.search(r"```bash\n(.*?)```", page, re.S)[1].strip().splitlines()
    snakemake, summary = block
    assert snakemake.startswith(".venv/bin/snakemake") and "preset=intrinsic" in snakemake
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *snakemake.split()[1:], "-n", "--directory", tmp_path],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(re.findall(r"^rule train:", proc.stdout, re.M)) == 54
    runs = tmp_path / "results" / "runs" / "mnist" / "fc2x200"
    runs.mkdir(parents=True)
    _li_runs(runs, {("fpd", 500): [85.0], ("fpd", 750): [89.0]}, [98.0])
    script, results = summary.split()[1:]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, ROOT / script, tmp_path / results, "--out", out],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    d90 = (out / "intrinsic_dim.csv").read_text()
    assert "fpd" in d90 and (out / "intrinsic_dim.png").stat().st_size > 1000
    assert len((out / "intrinsic_dim_runs.csv").read_text().splitlines()) == 1 + 3
