"""Federated datasets: a registry of builders, each a pure function of (config, n_clients, seed).

Every builder returns a :class:`FederatedData` with equal-sized client shards stacked as
``x[n_clients, m, ...]``, ``y[n_clients, m]`` and a shared test split.

Example
-------
>>> from p2pforget.config import DataConfig
>>> fd = build(DataConfig(n_samples_per_client=10, n_test=20), n_clients=4, seed=0)
>>> fd.x.shape, fd.y.shape, fd.x_test.shape
((4, 10, 10), (4, 10), (20, 10))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import DataConfig
from .. import partition as _partition


@dataclass(frozen=True)
class FederatedData:
    x: np.ndarray        # (n_clients, m, *input_shape) float64
    y: np.ndarray        # (n_clients, m) int64
    x_test: np.ndarray   # (n_test, *input_shape)
    y_test: np.ndarray   # (n_test,)
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    @property
    def n_clients(self) -> int:
        return self.x.shape[0]


Builder = Callable[[DataConfig, int, int], FederatedData]
REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        REGISTRY[name] = fn
        return fn
    return deco


def shard(x: np.ndarray, y: np.ndarray, cfg: DataConfig, n_clients: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Partition a pool ``(x, y)`` into stacked equal-sized client shards."""
    parts = _partition.partition(y, n_clients=n_clients, n_per_client=cfg.n_samples_per_client,
                                 kind=cfg.partition, alpha=cfg.alpha, seed=seed)
    idx = np.stack(parts)
    return x[idx], y[idx]


def build(cfg: DataConfig, *, n_clients: int, seed: int) -> FederatedData:
    """Build the dataset named by ``cfg.kind``."""
    if cfg.kind not in REGISTRY:
        raise ValueError(f"unknown data.kind {cfg.kind!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[cfg.kind](cfg, n_clients, seed)


from . import synthetic, digits  # noqa: E402,F401  (register builders)
