"""Split a labelled pool into equal-sized client shards: pure functions of (labels, n_clients, seed).

Example
-------
>>> import numpy as np
>>> labels = np.repeat(np.arange(3), 20)
>>> parts = partition(labels, n_clients=4, n_per_client=15, kind="dirichlet", alpha=0.3, seed=0)
>>> [len(p) for p in parts]
[15, 15, 15, 15]
"""
from __future__ import annotations

import numpy as np

from . import seeding

KINDS = ("iid", "dirichlet", "by_class")


def _check(labels: np.ndarray, n_clients: int, n_per_client: int) -> None:
    if n_clients * n_per_client > len(labels):
        raise ValueError(
            f"{n_clients} clients x {n_per_client} samples = {n_clients * n_per_client} exceeds the "
            f"{len(labels)} samples available; lower data.n_samples_per_client or topology.n_clients"
        )


def iid(labels: np.ndarray, n_clients: int, n_per_client: int, *, seed: int) -> list[np.ndarray]:
    """Uniformly random disjoint shards."""
    _check(labels, n_clients, n_per_client)
    perm = seeding.rng(seed, purpose="partition/iid").permutation(len(labels))
    return [np.sort(perm[i * n_per_client:(i + 1) * n_per_client]) for i in range(n_clients)]


def by_class(labels: np.ndarray, n_clients: int, n_per_client: int, *, seed: int) -> list[np.ndarray]:
    """Sort by label and cut into contiguous shards: each client sees one or two classes."""
    _check(labels, n_clients, n_per_client)
    tie = seeding.rng(seed, purpose="partition/by_class").random(len(labels))
    order = np.lexsort((tie, labels))
    return [np.sort(order[i * n_per_client:(i + 1) * n_per_client]) for i in range(n_clients)]


def dirichlet(labels: np.ndarray, n_clients: int, n_per_client: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Each client draws class proportions from Dirichlet(alpha); classes that run out are
    replaced by the classes with most samples left, so every client still gets ``n_per_client``."""
    _check(labels, n_clients, n_per_client)
    r = seeding.rng(seed, purpose="partition/dirichlet")
    classes = np.unique(labels)
    pools = [list(r.permutation(np.flatnonzero(labels == c))) for c in classes]
    parts = []
    for _ in range(n_clients):
        want = r.multinomial(n_per_client, r.dirichlet(np.full(len(classes), alpha)))
        take = np.minimum(want, [len(p) for p in pools])
        deficit = n_per_client - take.sum()
        while deficit > 0:
            left = np.array([len(p) for p in pools]) - take
            c = int(np.argmax(left))
            add = min(deficit, left[c])
            take[c] += add
            deficit -= add
        chosen = []
        for c, t in enumerate(take):
            chosen.extend(pools[c][:t])
            del pools[c][:t]
        parts.append(np.sort(np.array(chosen, dtype=np.int64)))
    return parts


def partition(labels: np.ndarray, *, n_clients: int, n_per_client: int, kind: str, alpha: float = 0.5, seed: int) -> list[np.ndarray]:
    """Dispatch to :func:`iid`, :func:`dirichlet` or :func:`by_class`."""
    labels = np.asarray(labels)
    if kind == "iid":
        return iid(labels, n_clients, n_per_client, seed=seed)
    if kind == "by_class":
        return by_class(labels, n_clients, n_per_client, seed=seed)
    if kind == "dirichlet":
        return dirichlet(labels, n_clients, n_per_client, alpha=alpha, seed=seed)
    raise ValueError(f"unknown partition {kind!r}; choose one of: {', '.join(KINDS)}")
