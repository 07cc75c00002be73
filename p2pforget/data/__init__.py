"""Federated datasets: a registry of builders, each a pure function of (config, n_clients, seed).

Every builder returns a :class:`FederatedData`: client shards stacked as ``x[n_clients, m, ...]``,
``y[n_clients, m]`` (``m`` = the largest shard; client i's samples are its first ``counts[i]`` rows,
the rest is padding), optional domain labels, and a shared test split.

Each client also gets a held-out split (``data.holdout_fraction`` of its data, default 0.2) that is
never trained on: ``x_holdout[n_clients, h, ...]``, ``y_holdout``, ``holdout_counts``. It is drawn
from the client's own shard, so it has the client's class mix, and it is the non-member side of
the membership audit (:mod:`p2pforget.audit`). ``n_samples_per_client`` is the number of training
samples; the builder is asked for enough more to hold the split out.

Example
-------
>>> from p2pforget.config import DataConfig
>>> fd = build(DataConfig(n_samples_per_client=10, n_test=20), n_clients=4, seed=0)
>>> fd.x.shape, fd.y.shape, fd.x_test.shape, fd.counts.tolist(), fd.x_holdout.shape
((4, 10, 10), (4, 10), (20, 10), [10, 10, 10, 10], (4, 3, 10))
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .. import partition as _partition, poison as _poison, seeding
from ..config import DataConfig
from ..registry import DATASETS


@dataclass(frozen=True)
class FederatedData:
    x: np.ndarray          # (n_clients, m, *input_shape) float64, zero padding after counts[i]
    y: np.ndarray          # (n_clients, m) int64
    x_test: np.ndarray     # (n_test, *input_shape)
    y_test: np.ndarray     # (n_test,)
    n_classes: int
    counts: np.ndarray | None = None        # (n_clients,) samples per client; None = all m
    domain: np.ndarray | None = None        # (n_clients, m) domain id of each sample
    domain_test: np.ndarray | None = None   # (n_test,)
    domain_names: tuple[str, ...] = ()
    x_holdout: np.ndarray | None = None     # (n_clients, h, *input_shape): never trained on
    y_holdout: np.ndarray | None = None     # (n_clients, h)
    holdout_counts: np.ndarray | None = None  # (n_clients,) held-out samples per client
    extras: dict[str, np.ndarray] = field(default_factory=dict)          # name -> (n_clients, m, ...) per sample
    extras_test: dict[str, np.ndarray] = field(default_factory=dict)     # name -> (n_test, ...)
    extras_holdout: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_clients, h, ...)
    poisoned: np.ndarray | None = None      # (n_clients, m) which training samples carry an attack (p2pforget.poison)
    probes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (x, y) scored per node
    # The inputs (x, x_holdout, extras, extras_holdout) may hold only the clients one process
    # hosts, from client `first` on (build(clients=...)); labels and counts always hold every client.
    first: int = 0

    def __post_init__(self) -> None:
        if self.counts is None:
            object.__setattr__(self, "counts", np.full(self.y.shape[0], self.y.shape[1], dtype=np.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    @property
    def n_clients(self) -> int:
        return self.y.shape[0]

    @property
    def clients(self) -> range:
        """The clients whose inputs ``x`` holds (every client unless built for one process)."""
        return range(self.first, self.first + self.x.shape[0])

    @property
    def valid(self) -> np.ndarray:
        """Boolean ``(n_clients, m)``: which rows are real samples (not padding)."""
        return np.arange(self.y.shape[1])[None, :] < self.counts[:, None]


Builder = Callable[[DataConfig, int, int], FederatedData]
register = DATASETS.register


class Pool(Protocol):
    """Samples read on demand (e.g. images decoded from files), for data too big to hold twice:
    ``shape`` is ``(N, *input_shape)``; ``take(idx)`` returns the samples at ``idx`` (in that
    order) as an array of ``dtype``. :func:`shard` plans the clients' shards on its indices and the
    build reads every sample once, into its final place (:class:`Rows`)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def take(self, idx: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Rows:
    """Client shards of a :class:`Pool` not read yet: the samples at ``idx [n_clients, m]`` (-1 is
    padding, read as zeros). :func:`build` reads them (:meth:`read`) after the held-out split, so
    that a sample is decoded once, straight into the array it stays in.

    >>> class Squares:
    ...     shape, dtype = (5, 1), np.dtype(np.int64)
    ...     def take(self, idx): return (np.asarray(idx) ** 2)[:, None]
    >>> rows = Rows(Squares(), np.array([[4, 1], [2, -1]]))
    >>> rows.read()[..., 0].tolist(), rows.read(range(1, 2))[..., 0].tolist()
    ([[16, 1], [4, 0]], [[4, 0]])
    """

    pool: Pool
    idx: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.idx.shape) + tuple(self.pool.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.pool.dtype

    def read(self, clients: range | None = None, *, chunk_bytes: int = 1 << 26) -> np.ndarray:
        """The shards of ``clients`` (default: all) as one array, read in pool order about
        ``chunk_bytes`` at a time (no second copy of the data; a pool that streams, like
        :class:`~p2pforget.data.synthetic.GaussianPool`, is passed once)."""
        idx = self.idx if clients is None else self.idx[clients.start:clients.stop]
        out = np.zeros(tuple(idx.shape) + tuple(self.pool.shape[1:]), dtype=self.dtype)
        flat, idx = out.reshape(-1, *out.shape[2:]), idx.reshape(-1)
        where = np.flatnonzero(idx >= 0)
        where = where[np.argsort(idx[where], kind="stable")]
        chunk = max(1, chunk_bytes // max(1, flat[:1].nbytes))
        for s in range(0, len(where), chunk):
            flat[where[s:s + chunk]] = self.pool.take(idx[where[s:s + chunk]])
        return out


def shard(x: np.ndarray, y: np.ndarray, cfg: DataConfig, n_clients: int, seed: int, *,
          domains: np.ndarray | None = None, extras: dict[str, np.ndarray] | None = None) -> dict:
    """Partition a pool ``(x, y[, domains, extras])`` into stacked, padded client shards: the
    ``x, y, counts`` (and ``domain``, ``extras``) fields of a :class:`FederatedData`. ``extras`` are
    further per-sample arrays (e.g. caption tokens) that travel with the samples. ``x`` may be a
    :class:`Pool` read on demand: its shards are then :class:`Rows`, read once by :func:`build`."""
    sizes = _partition.client_sizes(n_clients, cfg.n_samples_per_client, skew=cfg.quantity_skew,
                                     dirichlet=cfg.quantity_dirichlet, seed=seed)
    parts = _partition.partition(y, sizes=sizes, kind=cfg.partition, alpha=cfg.alpha, domains=domains,
                                 domain_skew=cfg.domain_skew, shards_per_client=cfg.shards_per_client, seed=seed)
    m = max(len(p) for p in parts)
    idx = np.stack([np.concatenate([p, np.full(m - len(p), p[0] if len(p) else 0)]) for p in parts])
    valid = np.arange(m)[None, :] < np.array([len(p) for p in parts])[:, None]
    if not isinstance(x, np.ndarray):
        xs = Rows(x, np.where(valid, idx, -1))
    else:
        xs = x[idx]
        if np.issubdtype(xs.dtype, np.floating):
            xs[~valid] = 0.0  # in place: one copy of the pool, not two (np.where's)
        else:
            xs = np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 1)), xs, 0.0)
    out = {"x": xs, "y": np.where(valid, y[idx], 0), "counts": valid.sum(axis=1)}
    if domains is not None:
        out["domain"] = np.where(valid, domains[idx], -1)
    if extras:
        out["extras"] = {k: np.where(valid.reshape(valid.shape + (1,) * (v.ndim - 1)), v[idx], 0) for k, v in extras.items()}
    return out


def estimated_bytes(cfg: DataConfig, *, n_clients: int) -> int | None:
    """About how many bytes :func:`build` will hold for ``n_clients`` (float64 inputs of every
    client's training and held-out samples, before anything is allocated), from the builder's
    ``sample_numbers`` (numbers per input sample); ``None`` for a builder that does not say.

    >>> estimated_bytes(DataConfig(n_samples_per_client=80, holdout_fraction=0.2), n_clients=1000)
    8000000
    """
    numbers = DATASETS.entry(cfg.kind).meta.get("sample_numbers")
    if numbers is None:
        return None
    per_client = math.ceil(cfg.n_samples_per_client / (1.0 - cfg.holdout_fraction))
    return int(n_clients * per_client * numbers(cfg) * 8)


def build(cfg: DataConfig, *, n_clients: int, seed: int, clients: range | None = None) -> FederatedData:
    """Build the dataset registered as ``cfg.kind``, with each client's held-out split, its inputs
    normalized by ``cfg.normalize``, and the malicious clients of ``cfg.poison`` poisoned (after
    normalization: a trigger is written in the units the model sees).

    ``clients`` (a process's block of client ids): keep only their inputs (``FederatedData.first``
    says where they start), the same samples as a build of every client. A builder whose pool is a
    :class:`Pool` (``gaussian_logistic``, Flickr30K, COCO) never reads the other clients' samples;
    the others are built whole and cut.

    >>> cfg = DataConfig(n_samples_per_client=10, n_test=20)
    >>> every, mine = build(cfg, n_clients=4, seed=0), build(cfg, n_clients=4, seed=0, clients=range(2, 4))
    >>> mine.x.shape[0], mine.first, bool(np.array_equal(mine.x, every.x[2:])), mine.y.shape == every.y.shape
    (2, 2, True, True)
    """
    data = read(_build(cfg, n_clients=n_clients, seed=seed), clients)
    data = normalize(data, cfg.normalize)
    return _poison.apply(data, cfg.poison, seed=seed)


def read(data: FederatedData, clients: range | None = None) -> FederatedData:
    """The inputs of ``clients`` (default: all) as arrays: shards of a :class:`Pool` are read (after
    the held-out split: each sample once), arrays cut (a copy, so that the rest can be freed).

    A builder that plans its shards on a :class:`Pool` registers that planning function as
    ``planned=``, which :func:`build` calls, and returns ``read(planned(...))`` itself: what a
    builder returns holds arrays (a user's builder may wrap a built-in one)."""
    every = clients is None or (clients.start == 0 and clients.stop >= data.n_clients)
    if every and not isinstance(data.x, Rows):
        return data
    clients = range(0, data.n_clients) if every else clients

    def cut(v):
        if v is None:
            return None
        if isinstance(v, Rows):
            return v.read(clients)
        return v if every else v[clients.start:clients.stop].copy()

    return dataclasses.replace(data, x=cut(data.x), x_holdout=cut(data.x_holdout), first=clients.start,
                               extras={k: cut(v) for k, v in data.extras.items()},
                               extras_holdout={k: cut(v) for k, v in data.extras_holdout.items()})


def normalize(data: FederatedData, kind: str) -> FederatedData:
    """Inputs rescaled: ``standard`` = every feature to mean 0 and standard deviation 1 over the
    shared test split, a public sample that holds no client's data (the same affine map applied
    to the clients' training and held-out inputs; a feature constant on the test split is only
    centred). Statistics over the clients' own samples would make every client's features depend
    on the data of a client that later asks to be forgotten, and Retrain would not be free of
    them. ``unit_norm`` = every sample to Euclidean norm 1 (per sample, so it depends on no other
    data; the certified constants grow with ``max ||x||``: this bounds it), ``none`` = as loaded."""
    if kind == "none":
        return data

    def unit(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        return (flat / np.where(norms > 0, norms, 1.0)).reshape(x.shape)

    if kind == "unit_norm":
        def f(x):
            return unit(x.reshape(-1, *data.input_shape)).reshape(x.shape)
    elif kind == "standard":
        public = data.x_test.reshape(len(data.x_test), -1)
        mean, std = public.mean(axis=0), public.std(axis=0)
        std = np.where(std > 0, std, 1.0)

        def f(x):
            flat = x.reshape(-1, mean.size)
            return ((flat - mean) / std).reshape(x.shape)
    else:
        raise ValueError(f"data.normalize = {kind!r}; choose none, standard or unit_norm")
    valid = data.valid[data.clients.start:data.clients.stop]
    x = np.where(valid.reshape(valid.shape + (1,) * (data.x.ndim - 2)), f(data.x), 0.0)
    holdout = None if data.x_holdout is None else f(data.x_holdout)
    return dataclasses.replace(data, x=x, x_test=f(data.x_test), x_holdout=holdout)


def held_out_size(cfg: DataConfig) -> int:
    """How many samples each client holds out beside its ``n_samples_per_client`` training ones.

    >>> held_out_size(DataConfig(n_samples_per_client=60, holdout_fraction=0.2))
    15
    """
    return math.ceil(cfg.n_samples_per_client / (1.0 - cfg.holdout_fraction)) - cfg.n_samples_per_client


def _build(cfg: DataConfig, *, n_clients: int, seed: int) -> FederatedData:
    entry = DATASETS.entry(cfg.kind)
    builder = entry.meta.get("planned") or entry.obj
    f = cfg.holdout_fraction
    # A builder registered with holds_out=True draws each client's held-out split itself
    # (held_out_size(cfg) samples), e.g. of content the client never trains on.
    if f == 0 or entry.meta.get("holds_out"):
        return builder(cfg, n_clients, seed)
    total = cfg.n_samples_per_client + held_out_size(cfg)
    try:
        full = builder(dataclasses.replace(cfg, n_samples_per_client=total), n_clients, seed)
    except ValueError as e:
        if "available" not in str(e):
            raise
        raise ValueError(f"{e} (data.holdout_fraction = {f:g} asks each client for {total} samples: "
                         f"{cfg.n_samples_per_client} to train on and {total - cfg.n_samples_per_client} held out; "
                         "set data.holdout_fraction = 0 to hold out none)") from None
    return split_holdout(full, f, seed=seed, train_total=n_clients * cfg.n_samples_per_client)


def split_holdout(data: FederatedData, fraction: float, *, seed: int, train_total: int | None = None) -> FederatedData:
    """Move a random ``fraction`` of every client's samples (a stream keyed by client id) to its
    held-out split; the rest stay training samples, in their order. With ``train_total``, the
    training counts are rounded (largest remainders) to sum to it where the shards allow."""
    n, m = data.y.shape
    exact = data.counts * (1.0 - fraction)
    train_counts = np.floor(exact).astype(np.int64)
    if train_total is not None:
        diff = int(min(train_total, data.counts.sum()) - train_counts.sum())
        order = np.argsort(-(exact - train_counts), kind="stable")  # largest remainders first
        if diff > 0:
            train_counts[order[:diff]] += 1
        elif diff < 0:
            train_counts[order[::-1][:-diff]] -= 1
    train_counts = np.clip(train_counts, 0, data.counts)
    held_counts = data.counts - train_counts
    m_train, m_held = max(int(train_counts.max()), 1), max(int(held_counts.max()), 1)
    # Shards of a Pool split by their indices (-1: padding): the samples are read afterwards.
    planned = isinstance(data.x, Rows)
    source = data.x.idx if planned else data.x
    x = np.full((n, m_train), -1) if planned else np.zeros((n, m_train) + data.x.shape[2:], dtype=data.x.dtype)
    y = np.zeros((n, m_train), dtype=np.int64)
    xh = np.full((n, m_held), -1) if planned else np.zeros((n, m_held) + data.x.shape[2:], dtype=data.x.dtype)
    yh = np.zeros((n, m_held), dtype=np.int64)
    domain = None if data.domain is None else np.full((n, m_train), -1, dtype=data.domain.dtype)
    extras = {k: np.zeros((n, m_train) + v.shape[2:], dtype=v.dtype) for k, v in data.extras.items()}
    extras_h = {k: np.zeros((n, m_held) + v.shape[2:], dtype=v.dtype) for k, v in data.extras.items()}
    for i in range(n):
        perm = seeding.rng(seed, client=i, purpose="data/holdout").permutation(int(data.counts[i]))
        train, held = np.sort(perm[:train_counts[i]]), np.sort(perm[train_counts[i]:])
        x[i, :len(train)], y[i, :len(train)] = source[i, train], data.y[i, train]
        xh[i, :len(held)], yh[i, :len(held)] = source[i, held], data.y[i, held]
        if domain is not None:
            domain[i, :len(train)] = data.domain[i, train]
        for k, v in data.extras.items():
            extras[k][i, :len(train)], extras_h[k][i, :len(held)] = v[i, train], v[i, held]
    if planned:
        x, xh = Rows(data.x.pool, x), Rows(data.x.pool, xh)
    return dataclasses.replace(data, x=x, y=y, counts=train_counts, domain=domain, extras=extras,
                               extras_holdout=extras_h, x_holdout=xh, y_holdout=yh, holdout_counts=held_counts)


from . import synthetic, digits, images, captions, files  # noqa: E402,F401  (register builders)
