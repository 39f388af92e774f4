"""benchmarks/same_outputs.py, the before/after check of a refactor: a recording of a
killed-and-resumed run is reproducible (also when resumed from another recording's
checkpoint), and `compare` fails on any changed value or missing run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _module():
    spec = importlib.util.spec_from_file_location(
        "same_outputs", ROOT / "benchmarks" / "same_outputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, name: str, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_compare_fails_on_a_changed_value_or_a_missing_run(tmp_path, capsys):
    compare = _module().compare
    record = {"metrics": ["epoch,val_acc", "1,10.5"], "run_json": {"status": "done"}}
    _write(tmp_path / "a", "sgd", record)
    _write(tmp_path / "b", "sgd", record)
    assert compare(tmp_path / "a", tmp_path / "b") == 0
    _write(tmp_path / "b", "sgd", record | {"metrics": ["epoch,val_acc", "1,10.6"]})
    assert compare(tmp_path / "a", tmp_path / "b") == 1
    assert "sgd: DIFFERS in metrics" in capsys.readouterr().out
    _write(tmp_path / "b", "sgd", record)
    _write(tmp_path / "a", "fpd", record)
    assert compare(tmp_path / "a", tmp_path / "b") == 1
    assert compare(tmp_path / "c", tmp_path / "d") == 1  # nothing recorded is no proof


@pytest.mark.slow
def test_a_killed_and_resumed_run_records_the_same_twice(tmp_path):
    module = _module()
    first, second = tmp_path / "first", tmp_path / "second"
    assert module.record(ROOT, first, None, ["rbd-gaussian"]) == 0
    assert module.record(ROOT, second, first, ["rbd-gaussian"]) == 0
    record = json.loads((first / "rbd-gaussian.json").read_text())
    # The cut came mid-run: the checkpoint is from epoch 1 of 2, and the run finished.
    assert record["cut_checkpoint"]["/epoch"] == "1"
    assert record["run_json"]["status"] == "done" and len(record["metrics"]) == 3
    assert module.compare(first, second) == 0
