"""Every random stream is derived from ``(seed, client_id, purpose, *counters)``.

Nothing depends on the MPI rank or on how many clients a process hosts, so the same
config gives the same numbers at any number of ranks.

Example
-------
>>> a = rng(0, client=3, purpose="batch", counters=(5,)).integers(100)
>>> b = rng(0, client=3, purpose="batch", counters=(5,)).integers(100)
>>> bool(a == b)
True
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

SHARED = -1
"""Client id used for streams that all clients share (common init, topology, data pool)."""


def _purpose_key(purpose: str) -> int:
    # crc32 is stable across Python processes, unlike hash().
    return zlib.crc32(purpose.encode())


def seed_sequence(seed: int, *, client: int = SHARED, purpose: str, counters: tuple[int, ...] = ()) -> np.random.SeedSequence:
    """The SeedSequence for one stream; ``client`` may be ``SHARED`` (-1)."""
    return np.random.SeedSequence([int(seed), int(client) + 1, _purpose_key(purpose), *map(int, counters)])


def rng(seed: int, *, client: int = SHARED, purpose: str, counters: tuple[int, ...] = ()) -> np.random.Generator:
    """A numpy Generator for the stream ``(seed, client, purpose, counters)``."""
    return np.random.default_rng(seed_sequence(seed, client=client, purpose=purpose, counters=counters))


def int_seed(seed: int, *, client: int = SHARED, purpose: str, counters: tuple[int, ...] = ()) -> int:
    """A 31-bit integer seed (for networkx and other libraries that take ints)."""
    return int(seed_sequence(seed, client=client, purpose=purpose, counters=counters).generate_state(1)[0] >> 1)


def torch_generator(seed: int, *, client: int = SHARED, purpose: str, counters: tuple[int, ...] = ()) -> torch.Generator:
    """A CPU torch.Generator for the stream ``(seed, client, purpose, counters)``."""
    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, client=client, purpose=purpose, counters=counters).generate_state(2, np.uint64)[0] >> 1))
    return g


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer (Steele, Lea & Flood, OOPSLA 2014): a bijection of uint64 whose
    outputs look independent and uniform for consecutive inputs."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_keys(seed: int, clients: np.ndarray, *, purpose: str, counters: tuple[int, ...], width: int) -> np.ndarray:
    """``[len(clients), width]`` uint64 keys, uniform and independent across clients, counters and
    columns, each a pure function of ``(seed, client, purpose, counters, column)``: the
    vectorized counterpart of :func:`rng` for drawing many clients' minibatches in one call.

    >>> a = uniform_keys(0, np.array([3, 4]), purpose="batch", counters=(5, 0), width=4)
    >>> b = uniform_keys(0, np.array([4]), purpose="batch", counters=(5, 0), width=4)
    >>> bool((a[1] == b[0]).all()), a.dtype.name
    (True, 'uint64')
    """
    with np.errstate(over="ignore"):
        z = np.full(len(clients), np.uint64(int_seed(seed, purpose=purpose)), dtype=np.uint64)
        z = _mix64(z + (np.asarray(clients, dtype=np.uint64) + np.uint64(1)) * _GOLDEN)
        for c in counters:
            z = _mix64(z + np.uint64(int(c) + 1) * _GOLDEN)
        cols = (np.arange(width, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
        return _mix64(z[:, None] ^ cols[None, :])


def sample_without_replacement(keys: np.ndarray, allowed: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``size`` distinct columns among the ``allowed`` ones, uniformly at random given
    uniform ``keys`` (those with the smallest keys); rows with fewer allowed columns are padded
    with column 0 and a 0 in the returned mask.

    >>> idx, mask = sample_without_replacement(np.array([[5, 1, 9, 3]], dtype=np.uint64),
    ...                                        np.array([[True, True, False, True]]), 2)
    >>> idx.tolist(), mask.tolist()
    ([[1, 3]], [[1.0, 1.0]])
    """
    keys = np.where(allowed, keys, np.iinfo(np.uint64).max)
    if size < keys.shape[1]:  # the `size` smallest keys, then in key order
        part = np.argpartition(keys, size - 1, axis=1)[:, :size]
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1, kind="stable"), axis=1)
    else:
        order = np.argsort(keys, axis=1, kind="stable")[:, :size]
    take = np.minimum(allowed.sum(axis=1), size)
    mask = (np.arange(size)[None, :] < take[:, None]).astype(np.float64)
    return np.where(mask > 0, order, 0), mask
