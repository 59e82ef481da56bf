"""Datasets, all offline: ``digits`` (embedded), ``idx:DIR`` (MNIST-format files), ``mnist1d``.

Every dataset yields *integer* input values (what the hardware reads), their format and the real
value of one unit (the input scale), and a train/test split that the seed fixes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitfab.errors import BitfabError
from bitfab.model import InputFormat

__all__ = ["Dataset", "load_dataset", "read_idx", "FASHION_MNIST_DIR"]

#: where Debian's ``dataset-fashion-mnist`` package puts the IDX files
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset of integer inputs.

    Members
    -------
    name : str
        The spec it was loaded from (``digits``, ``idx:DIR``, ``mnist1d``).
    x_train, x_test : int64 arrays ``(n, features)``
    y_train, y_test : int64 arrays ``(n,)``
    input_format : InputFormat
    input_scale : float
        Real value of one input unit.
    classes : int
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_format: InputFormat
    input_scale: float
    classes: int

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])


def _split(x, y, seed: int, test_fraction: float = 0.2):
    """Stratified split fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test[idx[: round(test_fraction * len(idx))]] = True
    return x[~test], y[~test], x[test], y[test]


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.astype(np.int64)  # 8x8 pixels, 0..16
    y = d.target.astype(np.int64)
    xtr, ytr, xte, yte = _split(x, y, seed)
    return Dataset("digits", xtr, ytr, xte, yte, InputFormat.int(5), 1.0 / 16, 10)


#: The most data one IDX file may hold (bytes, one per value): 256 MiB, five times EMNIST's
#: largest split. The loader widens the values to int64, eight times this in memory.
MAX_IDX_BYTES = 1 << 28


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzip): unsigned-byte data of any rank.

    The header is checked before the data is read: at most :data:`MAX_IDX_BYTES` of data, read
    into one buffer of the size the header declares, and a stream that holds more (a gzip bomb
    behind a small header) or less is refused. Only regular files are read.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BitfabError(f"{path}: not a regular file (an IDX file must be one)")
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            return _read_idx(f, path)
    except (OSError, EOFError, zlib.error) as exc:
        raise BitfabError(f"{path}: cannot read IDX file ({str(exc)[:120]})") from None


def _read_idx(f, path: Path) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise BitfabError(f"{path}: not an IDX file (bad magic number)")
    if magic[2] != 0x08:
        raise BitfabError(f"{path}: IDX data type {magic[2]:#04x} is not unsigned byte (0x08)")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise BitfabError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", dims)
    count = 1
    for n in shape:
        count *= n
    if count > MAX_IDX_BYTES:
        raise BitfabError(f"{path}: IDX header declares {count} values {shape}, more than the "
                          f"limit {MAX_IDX_BYTES}")
    data = np.empty(count, dtype=np.uint8)
    view = memoryview(data)
    got = 0
    while got < count:
        n = f.readinto(view[got:got + (1 << 20)])
        if not n:
            break
        got += n
    if got != count or f.read(1):
        more = "more" if got == count else str(got)
        raise BitfabError(f"{path}: IDX header promises {count} bytes of data, the file holds "
                          f"{more}")
    return data.reshape(shape)


def _find(folder: Path, prefix: str, kind: str) -> Path:
    hits = sorted(p for p in folder.iterdir()
                  if p.name.startswith(prefix) and kind in p.name and p.is_file())
    if not hits:
        raise BitfabError(f"idx:{folder}: no {prefix}*{kind}* file (expected MNIST-format "
                          f"train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)")
    return hits[0]


def _idx(folder: str) -> Dataset:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise BitfabError(f"idx:{folder}: no such folder")
    parts = []
    for split in ("train", "t10k"):
        x = read_idx(_find(path, split, "images"))
        y = read_idx(_find(path, split, "labels"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise BitfabError(f"idx:{folder}: {split} images {x.shape} and labels {y.shape} "
                              f"do not match")
        parts += [x.reshape(len(x), -1).astype(np.int64), y.astype(np.int64)]
    classes = int(max(parts[1].max(), parts[3].max())) + 1
    return Dataset(f"idx:{folder}", *parts, InputFormat.int(8), 1.0 / 255, classes)


def _mnist1d(seed: int) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise BitfabError("the mnist1d dataset needs the mnist1d package "
                          "(pip install 'bitfab[train]')") from None
    args = get_dataset_args()
    # the generator only (never the download); it reseeds numpy's global generator itself
    state = np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    scale = 4.0 / 127  # standardized signals: +-4 sigma on signed 8-bit values
    x = np.concatenate([d["x"], d["x_test"]])
    x = np.clip(np.floor(x / scale + 0.5), -128, 127).astype(np.int64)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    xtr, ytr, xte, yte = _split(x, y, seed)
    return Dataset("mnist1d", xtr, ytr, xte, yte, InputFormat.int(8, signed=True), scale, 10)


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load ``digits``, ``idx:DIR`` (``fashion-mnist``: :data:`FASHION_MNIST_DIR`) or
    ``mnist1d``; ``seed`` fixes the train/test split where the
    dataset has no official one (IDX data keeps its train / t10k split)."""
    if spec == "digits":
        return _digits(seed)
    if spec == "mnist1d":
        return _mnist1d(seed)
    if spec == "fashion-mnist":
        return dataclasses.replace(_idx(FASHION_MNIST_DIR), name="fashion-mnist")
    if spec.startswith("idx:"):
        return _idx(spec[4:])
    raise BitfabError(f"dataset must be 'digits', 'mnist1d' or 'idx:DIR' (fashion-mnist: "
                      f"idx:{FASHION_MNIST_DIR}), not {spec!r}")
