"""Image classification sets in the file formats people have on disk (nothing is downloaded).

- ``mnist``: IDX files (LeCun's format, as MNIST, Fashion-MNIST and EMNIST/FEMNIST ship them) in
  ``data.path``: ``*train-images-idx3-ubyte`` and ``*train-labels-idx1-ubyte`` for the clients,
  ``*t10k-images-idx3-ubyte`` / ``*t10k-labels-idx1-ubyte`` (or ``*test-...``) for the test split,
  each optionally gzipped. Images ``(1, H, W)`` scaled to [0, 1].
- ``cifar10``: the CIFAR-10 "python version" batches in ``data.path`` (``data_batch_1`` ...
  ``data_batch_5`` for the clients, ``test_batch`` for the test split). Images ``(3, 32, 32)`` in
  [0, 1].

The test split is ``data.n_test`` images of the test files drawn with the seed; clients are
partitioned from the training files as for every dataset.

Example
-------
>>> import tempfile, numpy as np
>>> folder = Path(tempfile.mkdtemp())
>>> write_idx(folder / "x.idx", np.arange(6, dtype=np.uint8).reshape(2, 3))
>>> read_idx(folder / "x.idx").tolist()
[[0, 1, 2], [3, 4, 5]]
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from .. import seeding
from ..config import DataConfig
from . import FederatedData, register, shard

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (magic ``0 0 type ndim``, big-endian int32 dimensions, then the data) as an array."""
    path = Path(path)
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (its first bytes are {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path} is truncated or damaged: its header says {shape} but it holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (the inverse of :func:`read_idx`)."""
    codes = {np.dtype(v).newbyteorder("=").name: k for k, v in _IDX_TYPES.items()}
    name = array.dtype.name
    if name not in codes:
        raise ValueError(f"IDX holds {', '.join(codes)}, not {name}")
    body = array.astype(np.dtype(_IDX_TYPES[codes[name]])).tobytes()
    Path(path).write_bytes(bytes([0, 0, codes[name], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + body)


def write_mnist(folder: str | Path, *, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write ``(images, labels)`` pairs as the four MNIST IDX files that ``data.kind = "mnist"``
    reads (images ``uint8 [n, 28, 28]``, labels ``uint8 [n]``); returns the folder.

    >>> import tempfile
    >>> x, y = np.zeros((2, 28, 28), np.uint8), np.array([3, 1], np.uint8)
    >>> sorted(p.name for p in write_mnist(tempfile.mkdtemp(), train=(x, y), test=(x, y)).iterdir())[:2]
    ['t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("t10k", test)):
        write_idx(folder / f"{split}-images-idx3-ubyte", np.asarray(images, dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.asarray(labels, dtype=np.uint8))
    return folder


def _one(folder: Path, patterns: tuple[str, ...], what: str, kind: str) -> Path:
    for pattern in patterns:
        for suffix in ("", ".gz"):
            found = sorted(folder.glob(pattern + suffix))
            if found:
                return found[0]
    raise FileNotFoundError(f"data.kind = {kind!r}: no {what} in {folder} (looked for {', '.join(patterns)}, "
                            "optionally .gz); set data.path to the folder holding the files")


def _folder(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise FileNotFoundError(f"data.kind = {cfg.kind!r} reads files: set data.path to their folder")
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.path = {cfg.path!r} is not a folder; give the folder holding the {cfg.kind} files")
    return folder


def _dataset(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cfg: DataConfig, n_clients: int,
             seed: int) -> FederatedData:
    if cfg.n_test > len(y_test):
        raise ValueError(f"data.n_test = {cfg.n_test} but the test files hold {len(y_test)} images; lower it")
    pick = np.sort(seeding.rng(seed, purpose=f"data/{cfg.kind}/test").choice(len(y_test), cfg.n_test, replace=False))
    n_classes = int(max(y.max(), y_test.max())) + 1
    return FederatedData(**shard(x, y, cfg, n_clients, seed), x_test=x_test[pick], y_test=y_test[pick], n_classes=n_classes)


@register("mnist", help="MNIST / Fashion-MNIST / EMNIST (FEMNIST) IDX files in data.path", sample_numbers=lambda cfg: 784)
def mnist(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    folder = _folder(cfg)
    parts = {}
    for split, stems in (("train", ("*train-images*idx3-ubyte", "*train-images.idx3-ubyte")),
                         ("test", ("*t10k-images*idx3-ubyte", "*test-images*idx3-ubyte"))):
        images = read_idx(_one(folder, stems, f"{split} images", cfg.kind))
        labels = read_idx(_one(folder, tuple(s.replace("images", "labels").replace("idx3", "idx1") for s in stems),
                               f"{split} labels", cfg.kind))
        if len(images) != len(labels):
            raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        parts[split] = ((images.astype(np.float64) / 255.0)[:, None], labels.astype(np.int64))
    return _dataset(*parts["train"], *parts["test"], cfg, n_clients, seed)


_PICKLE_ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                   for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}
"""What a CIFAR batch may name: the pieces numpy pickles an array, a dtype or a scalar with."""


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays: a data folder is data,
    and a crafted "batch" that names any other callable is refused before anything runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not a CIFAR-10 python batch ({e}); point data.path at the cifar-10-batches-py "
                         "folder") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data' and b'labels' entries); point data.path "
                         "at the cifar-10-batches-py folder")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"], dtype=np.int64)


@register("cifar10", help="CIFAR-10 python batches (data_batch_1..5, test_batch) in data.path",
          sample_numbers=lambda cfg: 3072)
def cifar10(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    folder = _folder(cfg)
    train = sorted(folder.glob("data_batch_*"))
    if not train or not (folder / "test_batch").is_file():
        raise FileNotFoundError(f"data.kind = 'cifar10': {folder} needs data_batch_1 ... data_batch_5 and test_batch "
                                "(the CIFAR-10 python version, e.g. the cifar-10-batches-py folder)")
    xs, ys = zip(*(_cifar_batch(p) for p in train))
    x_test, y_test = _cifar_batch(folder / "test_batch")
    return _dataset(np.concatenate(xs).astype(np.float64) / 255.0, np.concatenate(ys),
                    x_test.astype(np.float64) / 255.0, y_test, cfg, n_clients, seed)
