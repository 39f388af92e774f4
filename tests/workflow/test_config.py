"""Bad configuration and bad CLI calls fail before any job, naming the key."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
import yaml

from rbd.workflow.config import (
    ConfigError,
    expand_experiment,
    load_config_files,
    parse_lr,
    validate_config,
)
from tests.helpers import ROOT, run_rbd

QUICK = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
PAPER = yaml.safe_load((ROOT / "config/config.yaml").read_text())
SCHEMA = ROOT / "config/schemas/config.schema.yaml"


def _set(config, path, value):
    node = config
    *parents, leaf = path
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return config


_DELETE = object()
T1 = ("experiments", "table1")

# (what is wrong, where, value, text the message must contain)
BAD_CONFIGS = [
    ("unknown method", (*T1, "methods"), ["sgd", "adam"], "experiments.table1.methods.1"),
    ("unknown model", (*T1, "models"), ["vgg"], "experiments.table1.models.0"),
    ("unknown dataset", (*T1, "datasets"), ["imagenet"], "experiments.table1.datasets.0"),
    ("unknown distribution", (*T1, "distributions"), ["cauchy"], "distributions.0"),
    ("zero dim", (*T1, "dims"), [0], "experiments.table1.dims.0"),
    ("fractional dim", (*T1, "dims"), [2.5], "experiments.table1.dims.0"),
    ("dim above D", (*T1, "dims"), [500_000], "experiments.table1.dims"),
    ("negative rate", ("learning_rates", "rbd", "fc-mnist5k"), -0.1, "learning_rates.rbd"),
    ("rate text", ("learning_rates", "rbd", "fc-mnist5k"), "fast", "learning_rates.rbd"),
    ("zero epochs", ("defaults", "epochs"), 0, "defaults.epochs"),
    ("string epochs", ("defaults", "epochs"), "five", "defaults.epochs"),
    ("unknown top-level key", ("epochz",), 3, "epochz"),
    ("unknown experiment key", (*T1, "model"), ["fc"], "experiments.table1"),
    ("missing rate", ("learning_rates", "rbd", "fc-mnist5k"), _DELETE, "learning_rates.rbd"),
    ("bad compartments", (*T1, "compartments"), ["blocks"], "compartments.0"),
    ("switch after the end", (*T1, "switches"), ["sgd_first:99"], "switches"),
    ("bad device", ("device",), "tpu", "device"),
    ("no seeds", ("defaults", "seeds"), [], "defaults.seeds"),
    ("zero workers", (*T1, "workers"), [0], "experiments.table1.workers.0"),
    ("unknown sharing", (*T1, "sharing"), ["own"], "experiments.table1.sharing.0"),
    ("unknown combine", (*T1, "combine"), "max", "experiments.table1.combine"),
    ("workers for NES", (*T1, "workers"), [2], "experiments.table1.workers"),
    # `$` alone matches before a trailing newline: every pattern must end at the end
    ("compartments with a newline", (*T1, "compartments"), ["layer\n"], "compartments.0"),
    ("chunk with a newline", (*T1, "compartments"), ["chunk:5\n"], "compartments.0"),
    ("zero compression", (*T1, "compartments"), ["compression:0"], "compartments.0"),
    ("zero compression, decimal", (*T1, "compartments"), ["compression:0.0"], "compartments.0"),
    ("switch with a newline", (*T1, "switches"), ["sgd_first:1\n"], "switches.0"),
    ("device with a newline", ("device",), "cpu\n", "device"),
    ("rate with a newline", ("learning_rates", "rbd", "fc-mnist5k"), "2^3\n", "learning_rates"),
    ("empty data_dir", ("data_dir",), "", "data_dir"),
]


@pytest.mark.parametrize("what,path,value,named", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_rejected_naming_the_key(what, path, value, named):
    config = _set(copy.deepcopy(QUICK), path, value)
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
    assert named in str(err.value), str(err.value)


def test_enum_errors_list_the_allowed_values():
    config = _set(copy.deepcopy(QUICK), (*T1, "methods"), ["adam"])
    with pytest.raises(ConfigError, match="sgd, rbd, fpd, nes"):
        validate_config(config, SCHEMA)


@pytest.mark.parametrize("config", [QUICK, PAPER], ids=["quick", "paper"])
def test_shipped_presets_are_valid(config):
    validate_config(config, SCHEMA)


def test_learning_rates_accept_the_papers_notation():
    assert parse_lr("2^-5") == 2**-5
    assert parse_lr(0.5) == 0.5
    with pytest.raises(ConfigError):
        parse_lr("2**-5")


def test_paper_table1_grid_is_six_pairs_times_four_methods_times_three_seeds():
    runs = expand_experiment(PAPER, "table1")
    assert len(runs) == 6 * 4 * 3
    assert {(r.model, r.dataset) for r in runs} == {
        (m, d) for m in ("fc", "cnn") for d in ("mnist", "fashion_mnist", "cifar10")
    }
    rbd = next(r for r in runs if (r.method, r.model, r.dataset) == ("rbd", "fc", "mnist"))
    # the authors' base_learning_rate(2**-5) at batch 32
    # (tests/integration/test_authors_protocol.py)
    assert rbd.lr == 2**-5 * 32 and rbd.dim == 250 and rbd.epochs == 100 and rbd.augment


def test_overrides_merge_over_the_preset_they_name(tmp_path):
    override = tmp_path / "more.yaml"
    override.write_text("preset: quick\ndefaults: {seeds: [0]}\n")
    merged = load_config_files([override], config_dir=ROOT / "config")
    assert merged["preset"] == "quick" and set(merged["experiments"]) == set(QUICK["experiments"])
    assert merged["defaults"]["seeds"] == [0] and merged["defaults"]["epochs"] == 3
    # no preset named: the paper preset, never silently another one
    override.write_text("defaults: {seeds: [0]}\n")
    assert load_config_files([override], config_dir=ROOT / "config")["preset"] == "paper"
    override.write_text("preset: fast\n")
    with pytest.raises(ConfigError, match="no preset 'fast'.*paper, quick"):
        load_config_files([override], config_dir=ROOT / "config")


def test_a_preset_configfile_replaces_instead_of_merging(tmp_path):
    override = tmp_path / "more.yaml"
    override.write_text("defaults: {epochs: 2, seeds: [0]}\n")
    merged = load_config_files([ROOT / "config/config.yaml", ROOT / "config/quick.yaml", override])
    assert set(merged["experiments"]) == set(QUICK["experiments"])
    assert merged["defaults"]["epochs"] == 2 and merged["defaults"]["batch_size"] == 32


# (flag arguments, text that the error must contain)
BAD_CALLS = [
    (["--method", "adam"], "--method"),
    (["--model", "vgg"], "--model"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--distribution", "cauchy"], "--distribution"),
    (["--dim", "0"], "--dim"),
    (["--dim", "2.5"], "--dim"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "fast"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--compartments", "blocks"], "--compartments"),
    (["--switch", "sgd_first:5"], "--switch"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--device", "tpu"], "--device"),
    (["--device", "cpu\n"], "--device"),
    (["--compartments", "layer\n"], "--compartments"),
    (["--compartments", "compression:0"], "--compartments"),
    (["--nes-sigma", "0"], "--nes-sigma"),
]
GOOD = {
    "--method": "rbd",
    "--model": "fc",
    "--dataset": "mnist5k",
    "--lr": "1",
    "--dim": "10",
    "--epochs": "2",
}


@pytest.mark.parametrize("bad,named", BAD_CALLS, ids=[" ".join(b) for b, _ in BAD_CALLS])
def test_bad_cli_call_is_rejected_naming_the_flag(tmp_path, bad, named):
    flags = dict(GOOD)
    flags.update(dict(zip(bad[::2], bad[1::2], strict=True)))
    out = tmp_path / "results" / "run"
    args = [x for pair in flags.items() for x in pair]
    proc = run_rbd("train", *args, "--out", out)
    assert proc.returncode == 2
    assert named in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()


def test_dim_larger_than_the_model_fails_before_training(tmp_path):
    proc = run_rbd(
        "train", *[x for p in GOOD.items() for x in p], "--dim", "200000", "--out", tmp_path / "run"
    )
    assert proc.returncode != 0
    assert "dim=200000 exceeds" in proc.stderr
    assert not (tmp_path / "run" / "run.json").exists()


def test_workflow_with_a_bad_config_starts_no_job(tmp_path):
    bad = copy.deepcopy(QUICK)
    bad["experiments"]["table1"]["methods"] = ["sgd", "adam"]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--snakefile",
            ROOT / "Snakefile",
            "--directory",
            tmp_path,
            f"--configfile={config}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "experiments.table1.methods.1" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_every_experiment_needs_a_known_kind():
    config = _set(copy.deepcopy(QUICK), (*T1, "kind"), _DELETE)
    with pytest.raises(ConfigError, match="kind"):
        validate_config(config, SCHEMA)
    config = _set(copy.deepcopy(QUICK), (*T1, "kind"), "pie_chart")
    with pytest.raises(ConfigError, match="method_table"):
        validate_config(config, SCHEMA)


def test_sweep_rates_per_method_leave_other_methods_at_their_rate():
    config = copy.deepcopy(QUICK)
    config["experiments"]["sweep"] = {
        "kind": "lr_sweep",
        "models": ["fc"],
        "datasets": ["mnist5k"],
        "methods": ["sgd", "rbd"],
        "lrs": {"rbd": ["2^-1", 3]},
        "seeds": [0],
    }
    validate_config(config, SCHEMA)
    runs = expand_experiment(config, "sweep")
    assert sorted((r.method, r.lr) for r in runs) == [
        ("rbd", 0.5),
        ("rbd", 3.0),
        ("sgd", parse_lr(QUICK["learning_rates"]["sgd"]["fc-mnist5k"])),
    ]


def test_sgd_runs_drop_subspace_settings_and_are_shared():
    config = copy.deepcopy(QUICK)
    config["experiments"]["table1"] |= {"switches": ["none", "sgd_first:1"], "dims": [10, 50]}
    runs = expand_experiment(config, "table1")
    sgd = [r for r in runs if r.method == "sgd"]
    # 2 models x table1's seeds (the preset's default), whatever the dims and switches.
    seeds = QUICK["experiments"]["table1"].get("seeds", QUICK["defaults"]["seeds"])
    assert len(sgd) == 2 * len(seeds)
    assert {(r.dim, r.distribution, r.switch, r.sgd_lr) for r in sgd} == {(0, "none", "none", None)}
    switched = [r for r in runs if r.switch == "sgd_first:1"]
    assert switched and all(r.sgd_lr is not None for r in switched)


def test_nes_settings_reach_only_nes_runs():
    config = copy.deepcopy(QUICK)
    config["defaults"] |= {"nes_sigma": 0.05, "nes_batches": "shared", "init": "torch"}
    runs = expand_experiment(config, "table1")
    nes = [r for r in runs if r.method == "nes"]
    others = [r for r in runs if r.method != "nes"]
    assert nes and {(r.nes_sigma, r.nes_batches) for r in nes} == {(0.05, "shared")}
    assert {(r.nes_sigma, r.nes_batches) for r in others} == {(0.01, "offspring")}
    assert {r.init for r in runs} == {"torch"}
    assert all("sig-" not in r.key and "nb-" not in r.key for r in others)
    assert all("nb-shared" in r.key and "init-torch" in r.key for r in nes)


def test_equal_runs_of_two_experiments_have_one_key():
    fig_bases = {r.key for r in expand_experiment(QUICK, "fig_bases")}
    table2 = {r.key for r in expand_experiment(QUICK, "table2")}
    shared = fig_bases & table2
    # fc and cnn at d = 250, seeds 0 and 1: Gaussian and Rademacher RBD, and SGD.
    assert len(shared) == 2 * 2 * 3
    assert {tuple(r.split("/")[2:4]) for r in shared} == {
        ("rbd", "d250_gaussian"), ("rbd", "d250_rademacher"), ("sgd", "d0_none")
    }  # fmt: skip
    # fig_curves is table1's CNN runs.
    curves = {r.key for r in expand_experiment(QUICK, "fig_curves")}
    assert curves < {r.key for r in expand_experiment(QUICK, "table1")}


def test_dim_may_reach_but_not_pass_the_built_models_size():
    from rbd.spec import RunSpec, run_problems
    from rbd.train.data import INPUT_SHAPES
    from rbd.train.models import MODELS, build_model, count_params

    for model in MODELS:
        for dataset, shape in INPUT_SHAPES.items():
            size = count_params(build_model(model, shape))
            spec = RunSpec("rbd", model, dataset, size, "gaussian", 1.0, 1, 0)
            assert run_problems(spec) == []
            (setting, why), *_ = run_problems(dataclasses.replace(spec, dim=size + 1))
            assert setting == "dim" and f"D = {size:,}" in why


def test_workers_expand_into_distributed_rbd_runs_only():
    runs = expand_experiment(QUICK, "fig_scaling")
    assert sorted((r.workers, r.sharing, r.combine) for r in runs) == [
        (1, "split", "sum"), (1, "worker", "sum"), (2, "split", "sum"), (2, "worker", "sum")
    ]  # fmt: skip
    lr = parse_lr(QUICK["learning_rates"]["rbd"]["fc-mnist5k"])
    assert {r.key.split("/")[4] for r in runs} == {
        f"lr-{lr!r}_e-2_b-32_w-1_bv-2", f"lr-{lr!r}_e-2_b-32_w-1_bases-split_bv-2",
        f"lr-{lr!r}_e-2_b-32_w-2_bv-2", f"lr-{lr!r}_e-2_b-32_w-2_bases-split_bv-2",
    }  # fmt: skip
    # SGD is never distributed: one plain SGD run serves every W; without
    # `workers`, bases and combine do not enter the key.
    config = copy.deepcopy(QUICK)
    config["experiments"]["fig_scaling"]["methods"] = ["rbd", "sgd"]
    sgd = [r for r in expand_experiment(config, "fig_scaling") if r.method == "sgd"]
    assert [(r.workers, r.sharing, r.combine) for r in sgd] == [(None, "worker", "sum")]
    config["experiments"]["table1"] |= {"sharing": ["split"], "combine": "mean"}
    assert {r.key for r in expand_experiment(config, "table1")} == {
        r.key for r in expand_experiment(QUICK, "table1")
    }


def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def test_the_schema_holds_every_setting_of_rbd_spec_with_its_choices():
    """The contract between the schema and rbd.spec: every setting an experiment may give
    (rbd.spec's grid and scalar keys) is an experiment key of the schema, and every scalar
    one a key of `defaults` too (combine aside: it only exists with workers); every field
    with choices or a pattern has the same enum or the anchored pattern."""
    import dataclasses

    from rbd.spec import DEVICE_PATTERN, RunSpec
    from rbd.spec.run import grid_keys, scalar_keys

    schema = _schema()
    defs, experiment = schema["$defs"], schema["properties"]["experiments"]
    experiment = experiment["additionalProperties"]["properties"]
    defaults = schema["properties"]["defaults"]["properties"]
    assert set(grid_keys()) <= set(experiment)
    assert set(scalar_keys()) <= set(experiment)
    assert set(scalar_keys()) - {"combine"} <= set(defaults)

    def resolved(prop):
        """The schema of one value: references followed, a list's items, and of a value
        that may also be given per method (oneOf), the plain form."""
        prop = defs[prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
        if "oneOf" in prop:
            return resolved(prop["oneOf"][0])
        return resolved(prop["items"]) if prop.get("type") == "array" else prop

    config_key = {field: key for key, field in grid_keys().items()}
    for f in dataclasses.fields(RunSpec):
        key = config_key.get(f.name, f.name)
        prop = experiment.get(key) or defs.get(f.name)
        if f.metadata["choices"] is not None:
            allowed = list(f.metadata["choices"])
            if f.name == "distribution":  # SGD's "none" is the expansion's, not the config's
                allowed.remove("none")
            assert resolved(prop)["enum"] == allowed, f.name
        if f.metadata["pattern"] is not None:
            assert resolved(prop)["pattern"] == f"^({f.metadata['pattern']})$(?!\\n)", f.name
    assert schema["properties"]["device"]["pattern"] == f"^({DEVICE_PATTERN})$(?!\\n)"
    from rbd.report.kinds import KINDS

    assert experiment["kind"]["enum"] == list(KINDS)


def test_left_out_keys_take_the_schemas_defaults_and_the_cli_agrees():
    from rbd.spec import TrainConfig

    config = copy.deepcopy(QUICK)
    for key in ("device", "threads", "checkpoint_minutes", "divergence_loss", "warm_start"):
        config.pop(key, None)
    validate_config(config, SCHEMA)
    props = _schema()["properties"]
    assert config["device"] == "auto" == props["device"]["default"]
    assert config["threads"] == 1 and config["warm_start"] is False
    assert config["paper_vs_ours"] == "verification"
    # What `rbd train` does without the flag is what the workflow does without the key
    # (threads aside: one per job in the workflow, PyTorch's own count standalone).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key in ("device", "checkpoint_minutes", "divergence_loss"):
        assert defaults[key] == props[key]["default"], key


def test_the_workflow_holds_no_defaults_of_its_own():
    """common.smk reads config[key]: the schema fills every key left out."""
    import re

    for path in (ROOT / "workflow").rglob("*"):
        if path.suffix in (".smk", ".rst", ".py"):
            assert not re.search(r"config\.get\(\s*\"[a-z_]+\"\s*,", path.read_text()), path
