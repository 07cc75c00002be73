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
