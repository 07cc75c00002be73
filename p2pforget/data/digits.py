"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

Images are scaled to [0, 1] and kept as ``(1, 8, 8)`` so both MLP and CNN models apply.
Its shape is fixed (64 pixels, 10 classes): ``[data.digits]`` has no keys.
"""
from __future__ import annotations

import numpy as np

from .. import seeding
from ..config import DataConfig
from . import FederatedData, register, shard


@register("digits", help="scikit-learn's bundled 8x8 handwritten digits (real data, offline)", sample_numbers=lambda cfg: 64)
def digits(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float64)[:, None]
    y = bunch.target.astype(np.int64)
    perm = seeding.rng(seed, purpose="data/digits").permutation(len(y))
    if cfg.n_test >= len(y):
        raise ValueError(f"data.n_test = {cfg.n_test} leaves no training data out of {len(y)} digits; lower it")
    test, pool = perm[:cfg.n_test], perm[cfg.n_test:]
    return FederatedData(**shard(x[pool], y[pool], cfg, n_clients, seed), x_test=x[test], y_test=y[test], n_classes=10)
