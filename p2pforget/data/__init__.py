"""Federated datasets: a registry of builders, each a pure function of (config, n_clients, seed).

Every builder returns a :class:`FederatedData`: client shards stacked as ``x[n_clients, m, ...]``,
``y[n_clients, m]`` (``m`` = the largest shard; client i's samples are its first ``counts[i]`` rows,
the rest is padding), optional domain labels, and a shared test split.

Example
-------
>>> from p2pforget.config import DataConfig
>>> fd = build(DataConfig(n_samples_per_client=10, n_test=20), n_clients=4, seed=0)
>>> fd.x.shape, fd.y.shape, fd.x_test.shape, fd.counts.tolist()
((4, 10, 10), (4, 10), (20, 10), [10, 10, 10, 10])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import partition as _partition
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

    def __post_init__(self) -> None:
        if self.counts is None:
            object.__setattr__(self, "counts", np.full(self.x.shape[0], self.x.shape[1], dtype=np.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    @property
    def n_clients(self) -> int:
        return self.x.shape[0]

    @property
    def valid(self) -> np.ndarray:
        """Boolean ``(n_clients, m)``: which rows are real samples (not padding)."""
        return np.arange(self.x.shape[1])[None, :] < self.counts[:, None]


Builder = Callable[[DataConfig, int, int], FederatedData]
register = DATASETS.register


def shard(x: np.ndarray, y: np.ndarray, cfg: DataConfig, n_clients: int, seed: int, *,
          domains: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Partition a pool ``(x, y[, domains])`` into stacked, padded client shards: the
    ``x, y, counts`` (and ``domain``) fields of a :class:`FederatedData`."""
    sizes = _partition.client_sizes(n_clients, cfg.n_samples_per_client, skew=cfg.quantity_skew, seed=seed)
    parts = _partition.partition(y, sizes=sizes, kind=cfg.partition, alpha=cfg.alpha, domains=domains,
                                 domain_skew=cfg.domain_skew, seed=seed)
    m = max(len(p) for p in parts)
    idx = np.stack([np.concatenate([p, np.full(m - len(p), p[0] if len(p) else 0)]) for p in parts])
    valid = np.arange(m)[None, :] < np.array([len(p) for p in parts])[:, None]
    xs = np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 1)), x[idx], 0.0)
    out = {"x": xs, "y": np.where(valid, y[idx], 0), "counts": valid.sum(axis=1)}
    if domains is not None:
        out["domain"] = np.where(valid, domains[idx], -1)
    return out


def build(cfg: DataConfig, *, n_clients: int, seed: int) -> FederatedData:
    """Build the dataset registered as ``cfg.kind``."""
    return DATASETS.get(cfg.kind)(cfg, n_clients, seed)


from . import synthetic, digits, images  # noqa: E402,F401  (register builders)
