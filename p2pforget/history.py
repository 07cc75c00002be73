"""Run files: ``OUT/history.h5`` and ``OUT/report.json``, written atomically by the root process.

Every write goes to a temporary file in the same directory, is flushed to disk, and then
renamed over the old file, so a killed run always leaves the last complete snapshot.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "history.h5"
>>> write_h5(p, attrs={"n_clients": 2}, arrays={"params/init": np.zeros((2, 3))})
>>> read_h5(p).arrays["params/init"].shape
(2, 3)
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1


@dataclass
class RunFile:
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]
    group_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_h5(path: str | Path, *, attrs: dict[str, Any], arrays: dict[str, np.ndarray],
             group_attrs: dict[str, dict[str, Any]] | None = None) -> None:
    """Atomically write root ``attrs``, ``arrays`` keyed by HDF5 path, and attributes of groups."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            for name, arr in arrays.items():
                f.create_dataset(name, data=np.asarray(arr))
            for group, gattrs in (group_attrs or {}).items():
                g = f.require_group(group)
                for k, v in gattrs.items():
                    g.attrs[k] = v
    _atomic(Path(path), write)


def read_h5(path: str | Path) -> RunFile:
    """Read a whole run file into memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no run file at {str(path)!r}; pass the directory of a run (it holds history.h5)")
    arrays: dict[str, np.ndarray] = {}
    group_attrs: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]
            elif len(obj.attrs):
                group_attrs[name] = {k: _plain(v) for k, v in obj.attrs.items()}
        f.visititems(visit)
    return RunFile(attrs=attrs, arrays=arrays, group_attrs=group_attrs)


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, default=_json_default)
    _atomic(Path(path), lambda tmp: tmp.write_text(text + "\n"))


def _json_default(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot store {type(v).__name__} in report.json")
