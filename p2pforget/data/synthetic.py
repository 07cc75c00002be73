"""Synthetic classification: class-conditional Gaussians in ``n_features`` dimensions
(``[data.gaussian_logistic]``: ``n_features``, ``n_classes``, ``separation``).

Class means are drawn once per seed with norm ``separation``; samples are ``mean_y + N(0, I)``.
Labels of the pool are balanced, then split among clients by ``data.partition``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import seeding
from ..config import DataConfig, bounded
from . import FederatedData, register, shard


def gaussian_mixture(n: int, *, means: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced, shuffled samples from the Gaussian classes with the given ``means``."""
    y = rng.permutation(np.arange(n) % len(means))
    x = means[y] + rng.standard_normal((n, means.shape[1]))
    return x, y.astype(np.int64)


@dataclass(frozen=True)
class GaussianOptions:
    """Keys of ``[data.gaussian_logistic]``: the input dimension, the number of classes and the
    norm of every class mean (how far apart the classes are)."""

    n_features: int = bounded(10, 1)
    n_classes: int = bounded(3, 2)
    separation: float = bounded(1.5, 0.0)


@register("gaussian_logistic", options=GaussianOptions,
          help="class-conditional Gaussians in data.gaussian_logistic.n_features dimensions",
          sample_numbers=lambda cfg: cfg.options("gaussian_logistic").n_features)
def gaussian_logistic(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    o = cfg.options("gaussian_logistic")
    r = seeding.rng(seed, purpose="data/means")
    means = r.standard_normal((o.n_classes, o.n_features))
    means *= o.separation / np.linalg.norm(means, axis=1, keepdims=True)
    x, y = gaussian_mixture(n_clients * cfg.n_samples_per_client, means=means, rng=seeding.rng(seed, purpose="data/pool"))
    xt, yt = gaussian_mixture(cfg.n_test, means=means, rng=seeding.rng(seed, purpose="data/test"))
    return FederatedData(**shard(x, y, cfg, n_clients, seed), x_test=xt, y_test=yt, n_classes=o.n_classes)
