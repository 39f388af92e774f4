"""`rbd download --from DIR`: (Fashion-)MNIST installed from a local folder of IDX files, checked.

The real data sets come from the shared folder beside the repository (../shared/data, or
$RBD_SHARED_DATA); tests that need them skip, naming the folder, when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rbd.train import data
from tests.helpers import ROOT, run_rbd

SHARED = Path(os.environ.get("RBD_SHARED_DATA") or ROOT.parent / "shared/data")
SHARED_FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
# MD5 of the decompressed originals, as published with the data (../shared/data/README.md).
ORIGINAL_MD5 = {
    "mnist": [
        "6bbc9ace898e44ae57da46a324031adb",
        "a25bea736e30d166cdddb491f175f624",
        "2646ac647ad5339dbf082846283269ea",
        "27ae3e4e09519cfbb04c329615203637",
    ],
    "fashion_mnist": [
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "9018921c3c673c538a1fc5bad174d6f9",
        "8181f5470baa50b63fa0f6fddb340f0a",
        "15d484375f8d13e6eb1aabb0c3f46965",
    ],
}
# Images per class in the official test sets.
TEST_CLASS_COUNTS = {
    "mnist": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    "fashion_mnist": [1000] * 10,
}


def shared_folder(name: str) -> Path:
    folder = SHARED / SHARED_FOLDERS[name]
    if not folder.is_dir():
        pytest.skip(f"real {name} data absent: {folder} is absent (set RBD_SHARED_DATA)")
    return folder


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """name -> folder of the four real IDX files, decompressed once per module."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            source = shared_folder(name)
            folder = tmp_path_factory.mktemp(f"{name}_raw")
            for f in FILES:
                with gzip.open(source / f"{f}.gz") as packed, open(folder / f, "wb") as out:
                    shutil.copyfileobj(packed, out)
            cache[name] = folder
        return cache[name]

    return get


def source_folder(tmp_path: Path, originals, changed: dict[str, bytes | None]) -> Path:
    """A folder of MNIST's real files (links), except `changed`: file name -> content
    (None: the file is missing)."""
    folder = tmp_path / "source"
    folder.mkdir()
    for f in FILES:
        if f not in changed and f"{f}.gz" not in changed:
            (folder / f).symlink_to(originals("mnist") / f)
    for f, content in changed.items():
        if content is not None:
            (folder / f).write_bytes(content)
    return folder


# --- the real folders --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_install_real_folder_then_load(tmp_path, name):
    source = shared_folder(name)
    dest = tmp_path / "data"
    raw = dest / TORCHVISION_FOLDERS[name] / "raw"
    installed = data.install_from_folder(name, source, dest)
    assert installed == [raw / f for f in FILES]
    assert [_md5(raw / f) for f in FILES] == ORIGINAL_MD5[name]
    assert sorted(_files_under(dest)) == sorted(installed)  # no temporary files left
    data.verify_dataset(name, dest)
    splits = data.load_dataset(name, dest)
    assert splits.train_x.shape == (50_000, 1, 28, 28)
    assert splits.val_x.shape == (10_000, 1, 28, 28)
    assert splits.test_x.shape == (10_000, 1, 28, 28)
    assert splits.test_y.bincount().tolist() == TEST_CLASS_COUNTS[name]
    # Idempotent: a second install from the same folder leaves the same files.
    assert data.install_from_folder(name, source, dest) == installed
    assert [_md5(raw / f) for f in FILES] == ORIGINAL_MD5[name]
    assert sorted(_files_under(dest)) == sorted(installed)


def test_install_from_raw_files(tmp_path, originals):
    dest = tmp_path / "data"
    data.install_from_folder("mnist", originals("mnist"), dest)
    assert [_md5(dest / "MNIST/raw" / f) for f in FILES] == ORIGINAL_MD5["mnist"]


# --- bad folders: each rejected, naming the file, and nothing installed -------------------


def _with_header(path: Path, offset: int, value: int) -> bytes:
    """The file's bytes with the big-endian 32-bit header field at `offset` set to `value`."""
    content = bytearray(path.read_bytes())
    content[offset : offset + 4] = value.to_bytes(4, "big")
    return bytes(content)


def _bad_folders(originals):
    raw = originals("mnist")
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    altered = bytearray(images.read_bytes())
    altered[16 + 28 * 14 + 14] ^= 0xFF  # one pixel of the first test image
    high_label = bytearray(labels.read_bytes())
    high_label[8 + 1234] = 10
    return {
        "truncated gz": (
            {"train-labels-idx1-ubyte.gz": gzip.compress((raw / FILES[1]).read_bytes())[:-500]},
            "train-labels-idx1-ubyte.gz",
            "truncated",
        ),
        "not gzip": (
            {"t10k-labels-idx1-ubyte.gz": labels.read_bytes()},
            "t10k-labels-idx1-ubyte.gz",
            "decompressed",
        ),
        "truncated raw": (
            {"t10k-images-idx3-ubyte": images.read_bytes()[:-784]},
            "t10k-images-idx3-ubyte",
            "truncated",
        ),
        "wrong magic": (
            {"t10k-labels-idx1-ubyte": _with_header(labels, 0, 0x803)},
            "t10k-labels-idx1-ubyte",
            "magic number 0x00000803",
        ),
        "wrong count": (
            {"t10k-labels-idx1-ubyte": _with_header(labels, 4, 60_000)},
            "t10k-labels-idx1-ubyte",
            "60,000 items, expected 10,000",
        ),
        "wrong shape": (
            {"t10k-images-idx3-ubyte": _with_header(images, 12, 27)},
            "t10k-images-idx3-ubyte",
            "28x27",
        ),
        "label out of range": (
            {"t10k-labels-idx1-ubyte": bytes(high_label)},
            "t10k-labels-idx1-ubyte",
            "label 10",
        ),
        "altered content": (
            {"t10k-images-idx3-ubyte": bytes(altered)},
            "t10k-images-idx3-ubyte",
            "MD5",
        ),
    }


BAD_CASES = [
    "truncated gz",
    "not gzip",
    "truncated raw",
    "wrong magic",
    "wrong count",
    "wrong shape",
    "label out of range",
    "altered content",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_file_is_rejected_and_nothing_installed(tmp_path, originals, case):
    changed, named, problem = _bad_folders(originals)[case]
    source = source_folder(tmp_path, originals, changed)
    dest = tmp_path / "data"
    with pytest.raises(data.DataCorruptError) as info:
        data.install_from_folder("mnist", source, dest)
    message = str(info.value)
    assert str(source / named) in message and problem in message
    assert "\n" not in message
    assert _files_under(dest) == []


def test_other_data_sets_label_file_is_named(tmp_path, originals):
    fashion_labels = (originals("fashion_mnist") / "train-labels-idx1-ubyte").read_bytes()
    source = source_folder(tmp_path, originals, {"train-labels-idx1-ubyte": fashion_labels})
    with pytest.raises(data.DataCorruptError) as info:
        data.install_from_folder("mnist", source, tmp_path / "data")
    assert str(info.value) == (
        f"{source / 'train-labels-idx1-ubyte'} is Fashion-MNIST's train-labels-idx1-ubyte, "
        "not MNIST's"
    )
    assert _files_under(tmp_path / "data") == []


def test_missing_file_is_named(tmp_path, originals):
    source = source_folder(tmp_path, originals, {"t10k-labels-idx1-ubyte": None})
    with pytest.raises(data.DataNotFoundError, match=r"t10k-labels-idx1-ubyte not found"):
        data.install_from_folder("mnist", source, tmp_path / "data")
    assert _files_under(tmp_path / "data") == []


def test_bad_folder_leaves_an_earlier_install_untouched(tmp_path, originals):
    dest = tmp_path / "data"
    data.install_from_folder("mnist", originals("mnist"), dest)
    before = {p: _md5(p) for p in _files_under(dest)}
    truncated = (originals("mnist") / "t10k-labels-idx1-ubyte").read_bytes()[:-1]
    source = source_folder(tmp_path, originals, {"t10k-labels-idx1-ubyte": truncated})
    with pytest.raises(data.DataCorruptError):
        data.install_from_folder("mnist", source, dest)
    assert {p: _md5(p) for p in _files_under(dest)} == before


def test_failed_write_leaves_no_temporary_files(tmp_path, originals, monkeypatch):
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    dest = tmp_path / "data"
    with pytest.raises(OSError, match="No space left"):
        data.install_from_folder("mnist", originals("mnist"), dest)
    assert _files_under(dest) == []


def test_only_idx_data_sets_install_from_a_folder(tmp_path):
    with pytest.raises(ValueError, match="only mnist and fashion_mnist"):
        data.install_from_folder("cifar10", tmp_path, tmp_path / "data")


# --- command line and workflow ----------------------------------------------------------


@pytest.mark.slow
def test_cli_installs_real_folder(tmp_path):
    source = shared_folder("mnist")
    proc = run_rbd("download", "--dataset", "mnist", "--from", source, "--data-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for f in FILES:
        assert str(tmp_path / "MNIST/raw" / f) in proc.stdout
    assert [_md5(tmp_path / "MNIST/raw" / f) for f in FILES] == ORIGINAL_MD5["mnist"]


def test_cli_bad_folder_is_one_line_error(tmp_path, originals):
    labels = originals("mnist") / "t10k-labels-idx1-ubyte"
    source = source_folder(tmp_path, originals, {labels.name: _with_header(labels, 0, 0x803)})
    dest = tmp_path / "data"
    proc = run_rbd("download", "--dataset", "mnist", "--from", source, "--data-dir", dest)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(source / labels.name) in lines[0], proc.stderr
    assert _files_under(dest) == []


def test_cli_refuses_cifar10_from_a_folder(tmp_path):
    proc = run_rbd("download", "--dataset", "cifar10", "--from", tmp_path, "--data-dir", tmp_path)
    assert proc.returncode == 2
    assert "only mnist and fashion_mnist can be installed from a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_workflow_installs_from_configured_source(tmp_path):
    config = tmp_path / "source.yaml"
    config.write_text(yaml.safe_dump({"data_source": {"mnist": "/data sets/mnist"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", "-n", "-p"]
        + ["--cores", "1", f"--configfile={config}", "--directory", tmp_path]
        + ["figures/table1.pdf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    commands = {
        line.split("--dataset ")[1].split()[0]: line
        for line in proc.stdout.splitlines()
        if "-m rbd download" in line
    }
    assert set(commands) == {"mnist", "fashion_mnist", "cifar10"}
    assert "--from '/data sets/mnist'" in commands["mnist"]
    assert "--from" not in commands["fashion_mnist"] and "--from" not in commands["cifar10"]
