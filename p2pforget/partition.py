"""Split a labelled pool into client shards: pure functions of (labels, sizes, seed).

``sizes[i]`` is how many samples client i gets (:func:`client_sizes` draws unequal sizes when
``data.quantity_skew > 0``). Each way of splitting is registered in
:data:`~p2pforget.registry.PARTITIONS` (``data.partition``): a function
``(labels, sizes, *, seed, **params) -> list of index arrays``, where ``params`` holds ``alpha``,
``domains``, ``skew`` (``data.domain_skew``) and ``shards_per_client``; a plug-in registers its own
the same way.

Example
-------
>>> import numpy as np
>>> labels = np.repeat(np.arange(3), 20)
>>> parts = partition(labels, sizes=[15, 15, 15, 15], kind="dirichlet", alpha=0.3, seed=0)
>>> [len(p) for p in parts]
[15, 15, 15, 15]
"""
from __future__ import annotations

import numpy as np

from . import seeding
from .registry import PARTITIONS


def client_sizes(n_clients: int, n_per_client: int, *, skew: float, seed: int, dirichlet: float = 0.0) -> np.ndarray:
    """Samples per client, summing to ``n_clients * n_per_client``: equal when ``skew = 0`` and
    ``dirichlet = 0``; log-normal(0, ``skew``) shares when ``skew > 0``; Dirichlet(``dirichlet``)
    shares when ``dirichlet > 0`` (small values: a few clients hold most data). Every client keeps
    at least 2 samples.

    >>> client_sizes(4, 10, skew=0.0, seed=0).tolist()
    [10, 10, 10, 10]
    >>> int(client_sizes(4, 10, skew=1.0, seed=0).sum()), int(client_sizes(4, 10, skew=0.0, dirichlet=0.5, seed=0).sum())
    (40, 40)
    """
    total = n_clients * n_per_client
    if skew == 0 and dirichlet == 0:
        return np.full(n_clients, n_per_client, dtype=np.int64)
    if dirichlet > 0:
        w = seeding.rng(seed, purpose="partition/sizes/dirichlet").dirichlet(np.full(n_clients, dirichlet))
    else:
        w = seeding.rng(seed, purpose="partition/sizes").lognormal(0.0, skew, n_clients)
    floor = min(2, n_per_client)
    sizes = floor + np.floor(w / w.sum() * (total - floor * n_clients)).astype(np.int64)
    sizes[np.argsort(-w)[: total - sizes.sum()]] += 1
    return sizes


def _check(labels: np.ndarray, sizes: np.ndarray) -> None:
    if sizes.sum() > len(labels):
        raise ValueError(
            f"{len(sizes)} clients need {int(sizes.sum())} samples but only {len(labels)} are available; "
            "lower data.n_samples_per_client or topology.n_clients"
        )


@PARTITIONS.register("iid")
def iid(labels: np.ndarray, sizes: np.ndarray, *, seed: int, **_) -> list[np.ndarray]:
    """Uniformly random disjoint shards."""
    perm = seeding.rng(seed, purpose="partition/iid").permutation(len(labels))
    cuts = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(perm[cuts[i]:cuts[i + 1]]) for i in range(len(sizes))]


@PARTITIONS.register("by_class")
def by_class(labels: np.ndarray, sizes: np.ndarray, *, seed: int, **_) -> list[np.ndarray]:
    """Sort by label and cut into contiguous shards: each client sees one or two classes."""
    tie = seeding.rng(seed, purpose="partition/by_class").random(len(labels))
    order = np.lexsort((tie, labels))
    cuts = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[cuts[i]:cuts[i + 1]]) for i in range(len(sizes))]


def _take(pools: list[list[int]], want: np.ndarray) -> list[int]:
    """Take ``want[c]`` items from pool c; pools that run out are replaced by the fullest ones."""
    take = np.minimum(want, [len(p) for p in pools])
    deficit = want.sum() - take.sum()
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
    return chosen


@PARTITIONS.register("dirichlet")
def dirichlet(labels: np.ndarray, sizes: np.ndarray, *, alpha: float, seed: int, **_) -> list[np.ndarray]:
    """Each client draws class proportions from Dirichlet(alpha); classes that run out are
    replaced by the classes with most samples left, so every client still gets its size."""
    r = seeding.rng(seed, purpose="partition/dirichlet")
    classes = np.unique(labels)
    pools = [list(r.permutation(np.flatnonzero(labels == c))) for c in classes]
    parts = []
    for size in sizes:
        want = r.multinomial(size, r.dirichlet(np.full(len(classes), alpha)))
        parts.append(np.sort(np.array(_take(pools, want), dtype=np.int64)))
    return parts


@PARTITIONS.register("by_domain")
def by_domain(labels: np.ndarray, sizes: np.ndarray, *, domains: np.ndarray | None, skew: float, seed: int, **_) -> list[np.ndarray]:
    """Each client mostly holds one domain: client i's home domain is ``i * D // n`` (so clients come
    in contiguous domain blocks), a fraction ``skew`` of its samples come from it and the rest
    uniformly from the other domains."""
    if domains is None:
        raise ValueError("data.partition = 'by_domain' needs a dataset with domain labels (pacs_like, image_folder)")
    r = seeding.rng(seed, purpose="partition/by_domain")
    names = np.unique(domains)
    pools = [list(r.permutation(np.flatnonzero(domains == d))) for d in names]
    n, D = len(sizes), len(names)
    parts = []
    for i, size in enumerate(sizes):
        home = i * D // n
        share = np.full(D, (1.0 - skew) / max(D - 1, 1))
        share[home] = skew if D > 1 else 1.0
        want = np.floor(share * size).astype(np.int64)
        want[home] += size - want.sum()
        parts.append(np.sort(np.array(_take(pools, want), dtype=np.int64)))
    return parts


@PARTITIONS.register("shards")
def shards(labels: np.ndarray, sizes: np.ndarray, *, seed: int, shards_per_client: int = 2, **_) -> list[np.ndarray]:
    """McMahan et al. (AISTATS 2017)'s pathological non-IID split: every client owns
    ``shards_per_client`` shards; the shards, dealt in random order, cut the label-sorted pool into
    contiguous stretches (each as long as its share of the pool), and a client takes its samples
    (``sizes[i]``, spread evenly over its shards) from the start of each of its stretches. So each
    client sees about ``shards_per_client`` classes, whatever the sizes.

    >>> parts = shards(np.repeat(np.arange(4), 10), np.array([10, 10]), seed=0, shards_per_client=2)
    >>> [sorted(set((np.repeat(np.arange(4), 10)[p]).tolist())) for p in parts]
    [[0, 2], [1, 3]]
    """
    n, k = len(sizes), shards_per_client
    if len(sizes) and k > int(sizes.min()):
        raise ValueError(f"data.shards_per_client = {k} is more than the {int(sizes.min())} samples of the smallest "
                         f"client: every shard needs a sample; set data.shards_per_client to at most {int(sizes.min())}")
    tie = seeding.rng(seed, purpose="partition/shards/order").random(len(labels))
    order = np.lexsort((tie, labels))
    want = np.stack([np.full(k, s // k) + (np.arange(k) < s % k) for s in sizes])          # [n, k]
    deal = seeding.rng(seed, purpose="partition/shards/deal").permutation(n * k)          # shard laid j-th
    lengths = np.floor(want.reshape(-1)[deal] * len(labels) / max(int(sizes.sum()), 1)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    start_of = np.empty(n * k, dtype=np.int64)
    start_of[deal] = starts
    return [np.sort(np.concatenate([order[start_of[i * k + c]:start_of[i * k + c] + want[i, c]] for c in range(k)]))
            for i in range(n)]


def partition(labels: np.ndarray, *, sizes, kind: str, alpha: float = 0.5, domains: np.ndarray | None = None,
              domain_skew: float = 0.8, shards_per_client: int = 2, seed: int) -> list[np.ndarray]:
    """Indices of each client's samples in the pool, by ``kind`` (an entry of ``PARTITIONS``)."""
    labels = np.asarray(labels)
    sizes = np.asarray(sizes, dtype=np.int64)
    split = PARTITIONS.get(kind)
    _check(labels, sizes)
    return split(labels, sizes, alpha=alpha, domains=domains, skew=domain_skew, shards_per_client=shards_per_client,
                 seed=seed)
