"""Run files: ``OUT/history.h5`` and ``OUT/report.json``, written atomically by the root process,
and the lock that keeps a run directory to one writer.

Every write goes to a temporary file in the same directory, is flushed to disk, renamed over the
old file, and the directory entry is flushed too, so a killed run always leaves the last complete
snapshot. Temporary files that a killed writer left behind are removed by the next write.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "history.h5"
>>> write_h5(p, attrs={"n_clients": 2}, arrays={"params/init": np.zeros((2, 3))})
>>> read_h5(p).arrays["params/init"].shape
(2, 3)
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import socket
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import scipy.sparse as sparse

FORMAT_VERSION = 2
LOCK_NAME = ".lock"


class RunFileError(ValueError):
    """A run file is missing, damaged, or not one p2pforget wrote."""


class RunLockedError(ValueError):
    """Another process is writing the run directory."""


@dataclass
class RunFile:
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]
    group_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer (one writer: the lock)
        stale.unlink(missing_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files are ordinary files
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise RunFileError(f"could not write {path}: {e.strerror or e}; the previous {path.name} (if any) is "
                           "unchanged: free space or fix the disk, then rerun (or --resume)") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


CHECKSUM = "crc32"
"""Every dataset carries the CRC-32 of its bytes, and every group of attributes the CRC-32 of
their canonical JSON, under this attribute; :func:`read_h5` checks them all."""


def checksum(*arrays: np.ndarray, start: int = 0) -> int:
    """CRC-32 of the arrays' bytes, in order (a dataset's checksum, or a fingerprint of several),
    continuing from the CRC ``start`` of the bytes before them."""
    out = start
    for a in arrays:
        out = zlib.crc32(np.ascontiguousarray(a).tobytes(), out)
    return out


def attrs_checksum(attrs: dict[str, Any]) -> int:
    """CRC-32 of a group's attribute values (its own checksum attribute left out)."""
    plain = {k: _plain(v) for k, v in attrs.items() if k != CHECKSUM}
    return zlib.crc32(json.dumps(plain, sort_keys=True, default=repr).encode())


def write_h5(path: str | Path, *, attrs: dict[str, Any], arrays: dict[str, np.ndarray],
             group_attrs: dict[str, dict[str, Any]] | None = None) -> None:
    """Atomically write root ``attrs``, ``arrays`` keyed by HDF5 path, and attributes of groups,
    each with its checksum. The file is built in memory and written as plain bytes, so a full
    disk or an I/O error meets an ordinary file write (nothing of HDF5 is left open on it)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            f.create_dataset(name, data=arr).attrs[CHECKSUM] = checksum(arr)
        for group, gattrs in (group_attrs or {}).items():
            g = f.require_group(group)
            for k, v in gattrs.items():
                g.attrs[k] = v
            g.attrs[CHECKSUM] = attrs_checksum(dict(g.attrs))
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs[CHECKSUM] = attrs_checksum(dict(f.attrs))
    image = buffer.getvalue()
    _atomic(Path(path), lambda tmp: tmp.write_bytes(image))


def read_h5(path: str | Path) -> RunFile:
    """Read a whole run file into memory.

    Raises :class:`RunFileError` (one line naming the file and the problem) for a missing, empty,
    truncated or damaged file, and for a file whose data live outside it (external links, external
    storage or virtual datasets: reading those would copy other files into the run).
    """
    path = Path(path)
    if not path.is_file():
        if (path.parent / "release").is_dir():
            raise RunFileError(f"{str(path.parent)!r} holds only a run's published release/ (run.keep_private = false "
                               "deleted its private record, history.h5): it cannot be resumed, forgotten from or "
                               "audited; rerun the experiment with run.keep_private = true for that")
        raise RunFileError(f"no run file at {str(path)!r}; pass the directory of a run (it holds history.h5)")
    if path.stat().st_size == 0:
        raise RunFileError(f"{path} is empty (a write was cut off before p2pforget wrote atomically?); "
                           "delete the run directory and rerun, or restore the file from a copy")
    arrays: dict[str, np.ndarray] = {}
    group_attrs: dict[str, dict[str, Any]] = {}
    try:
        with h5py.File(path, "r") as f:
            outside = []
            f.visititems_links(lambda name, link: outside.append(name)
                               if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)) else None)
            if outside:
                raise RunFileError(f"{path} links to data outside its own datasets ({outside[0]!r}); "
                                   "p2pforget run files hold only their own data: refusing to read it")
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            checked = int(attrs.get("version", 0)) >= 2  # run files from version 2 on carry checksums
            _check_attrs(path, "the root attributes", attrs, checked)

            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    if obj.external or obj.is_virtual:
                        raise RunFileError(f"{path}: dataset {name!r} stores its data in another file; "
                                           "p2pforget run files hold only their own data: refusing to read it")
                    declared = int(obj.size) * obj.dtype.itemsize
                    if declared > obj.id.get_storage_size() + 1024 or declared > MAX_DATASET_BYTES:
                        raise RunFileError(f"{path}: dataset {name!r} declares {obj.shape} {obj.dtype} "
                                           f"({declared / 2**30:.3g} GiB) but stores {obj.id.get_storage_size()} bytes: "
                                           "the file is damaged or was not written by p2pforget; refusing to read it")
                    arrays[name] = obj[()]
                    stored = obj.attrs.get(CHECKSUM)
                    if stored is None and checked or stored is not None and int(stored) != checksum(arrays[name]):
                        raise RunFileError(f"{path}: dataset {name!r} fails its checksum (the file is damaged: a "
                                           "changed bit, a cut write); restore it from a copy, or delete the run "
                                           "directory and rerun")
                elif len(obj.attrs):
                    group = {k: _plain(v) for k, v in obj.attrs.items()}
                    _check_attrs(path, f"the attributes of {name!r}", group, checked)
                    group_attrs[name] = {k: v for k, v in group.items() if k != CHECKSUM}
            f.visititems(visit)
            attrs.pop(CHECKSUM, None)
    except RunFileError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise RunFileError(f"{path} is not a readable HDF5 run file (truncated or damaged: {detail}); "
                           "restore it from a copy, or delete the run directory and rerun") from None
    return RunFile(attrs=attrs, arrays=arrays, group_attrs=group_attrs)


MAX_DATASET_BYTES = 64 * 2**30
"""No dataset of a run file is read into memory above this size (64 GiB)."""


def _check_attrs(path: Path, what: str, attrs: dict[str, Any], checked: bool) -> None:
    stored = attrs.get(CHECKSUM)
    if stored is None and checked or stored is not None and int(stored) != attrs_checksum(attrs):
        raise RunFileError(f"{path}: {what} fail their checksum (the file is damaged); restore it from a copy, "
                           "or delete the run directory and rerun")


def read_run(path: str | Path) -> RunFile:
    """:func:`read_h5` for a run's ``history.h5``, checked to hold what resuming and forgetting need
    (the config and a checkpoint)."""
    rf = read_h5(path)
    if not isinstance(rf.attrs.get("config_toml"), str):
        raise RunFileError(f"{path} has no 'config_toml' attribute: it was not written by `p2pforget run` "
                           "(or is damaged); rerun the experiment")
    missing = [k for k in ("checkpoint/round", "checkpoint/params") if k not in rf.arrays]
    if missing:
        raise RunFileError(f"{path} has no checkpoint ({missing[0]!r} is missing): it was not written by "
                           "`p2pforget run` (or is damaged); rerun the experiment")
    return rf


def stored_mixings(stored: RunFile, rounds: int) -> list[np.ndarray]:
    """The dense (n, n) mixing matrix of each of ``rounds`` rounds, read from a run file (a star's
    is FedAvg's ``1 w^T``; a static graph's repeats). For checks and plots of small graphs."""
    n = int(stored.attrs["n_clients"])
    a = stored.arrays
    if "topology/fedavg_weights" in a:
        w = a["topology/fedavg_weights"]
        return [np.tile(w, (len(w), 1))] * rounds
    by_round = a["topology/mixing/round"]
    count = int(by_round.max(initial=0)) + 1
    mats = []
    for t in range(count):
        k = by_round == t
        mats.append(sparse.coo_array((a["topology/mixing/weight"][k], (a["topology/mixing/row"][k], a["topology/mixing/col"][k])),
                                 shape=(n, n)).toarray())
    return mats[:rounds] if count > 1 else mats * rounds


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None``, so it is strict JSON.

    >>> strict({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
    """
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_json(path: str | Path) -> Any:
    """Read a JSON run file, or raise :class:`RunFileError` naming it when it is damaged."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path} is not valid JSON (truncated or damaged: {e}); delete it: the next "
                           "`p2pforget forget` on the run writes it anew from history.h5") from None


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, strict JSON (NaN and inf become ``null``)."""
    text = json_text(obj)
    _atomic(Path(path), lambda tmp: tmp.write_text(text + "\n"))


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Atomically write ``arrays`` to an uncompressed ``.npz`` file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(Path(path), write)


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    """Atomically write a CSV file (``csv`` module quoting; floats as ``repr``, NaN as empty)."""
    def cell(v: Any) -> Any:
        return "" if isinstance(v, float) and v != v else v

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(header)
            out.writerows([[cell(v) for v in row] for row in rows])

    _atomic(Path(path), write)


def json_text(obj: Any) -> str:
    return json.dumps(strict(obj), indent=2, allow_nan=False, default=_json_default)


def _json_default(v: Any) -> Any:
    raise TypeError(f"cannot store {type(v).__name__} in report.json")


@contextmanager
def run_lock(run_dir: str | Path, *, command: str = "") -> Iterator[None]:
    """Hold the run directory's lock file (``RUN/.lock``, an exclusive ``flock``) while writing it.

    A second writer gets :class:`RunLockedError` naming the holder (pid, host, command, start
    time). The lock goes with the process: a killed writer leaves no stale lock behind.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFileError(f"{str(run_dir)!r} is a file, not a run directory; pass a directory path for the run")
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            try:
                h = json.loads(holder)
                who = f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunLockedError(f"run directory {str(run_dir)!r} is being written by {who}; wait for it to finish, "
                                 "or give this run another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv[:3]),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
