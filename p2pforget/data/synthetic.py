"""Synthetic classification: class-conditional Gaussians in ``n_features`` dimensions
(``[data.gaussian_logistic]``: ``n_features``, ``n_classes``, ``separation``).

Class means are drawn once per seed with norm ``separation``; samples are ``mean_y + N(0, I)``.
Labels of the pool are balanced, then split among clients by ``data.partition``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import seeding
from ..config import DataConfig, bounded
from . import FederatedData, read, register, shard


def gaussian_mixture(n: int, *, means: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced, shuffled samples from the Gaussian classes with the given ``means``."""
    y = rng.permutation(np.arange(n) % len(means))
    x = means[y] + rng.standard_normal((n, means.shape[1]))
    return x, y.astype(np.int64)


@dataclass
class GaussianPool:
    """The samples of :func:`gaussian_mixture` as a :class:`~p2pforget.data.Pool`, generated on
    demand: ``take`` streams the normal draws in blocks of ``block`` rows and keeps the rows asked
    for, so a process that reads its own clients' samples never holds the others' (the same
    numbers as drawing them all at once: the stream is the same whatever the block size).

    >>> means = np.eye(2)
    >>> x, y = gaussian_mixture(5, means=means, rng=np.random.default_rng(0))
    >>> pool = GaussianPool.draw(5, means=means, rng=np.random.default_rng(0), block=2)
    >>> bool(np.array_equal(pool.take(np.array([4, 0, 3])), x[[4, 0, 3]])), bool(np.array_equal(pool.y, y))
    (True, True)
    """

    means: np.ndarray
    y: np.ndarray
    start: dict                   # the generator's state where the normal draws begin
    block: int = 65536
    _at: int = field(default=-1, repr=False)   # first row of the block generated last (-1: none)
    _rows: np.ndarray | None = field(default=None, repr=False)
    _rng: np.random.Generator | None = field(default=None, repr=False)

    @classmethod
    def draw(cls, n: int, *, means: np.ndarray, rng: np.random.Generator, block: int = 65536) -> "GaussianPool":
        y = rng.permutation(np.arange(n) % len(means)).astype(np.int64)
        return cls(means=means, y=y, start=rng.bit_generator.state, block=block)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.y), self.means.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    def _block(self, first: int) -> np.ndarray:
        """The normal draws of rows ``first .. first + block`` (``first`` a multiple of ``block``)."""
        if self._rng is None or first < self._at:  # behind the stream: start it again
            self._rng, self._at = np.random.Generator(np.random.PCG64()), -self.block
            self._rng.bit_generator.state = self.start
        while self._at < first:
            self._at += self.block
            self._rows = self._rng.standard_normal((min(self.block, len(self.y) - self._at), self.means.shape[1]))
        return self._rows

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.means.shape[1]))
        order = np.argsort(idx, kind="stable")
        blocks = idx[order] // self.block
        for b in np.unique(blocks):
            pos = order[blocks == b]
            out[pos] = self._block(int(b) * self.block)[idx[pos] - int(b) * self.block]
        return out + self.means[self.y[idx]]


@dataclass(frozen=True)
class GaussianOptions:
    """Keys of ``[data.gaussian_logistic]``: the input dimension, the number of classes and the
    norm of every class mean (how far apart the classes are)."""

    n_features: int = bounded(10, 1)
    n_classes: int = bounded(3, 2)
    separation: float = bounded(1.5, 0.0)


def gaussian_logistic_planned(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    """:func:`gaussian_logistic` with its shards planned on a :class:`GaussianPool`, not read yet:
    each process then reads its own clients' samples only (:func:`~p2pforget.data.build`)."""
    o = cfg.options("gaussian_logistic")
    r = seeding.rng(seed, purpose="data/means")
    means = r.standard_normal((o.n_classes, o.n_features))
    means *= o.separation / np.linalg.norm(means, axis=1, keepdims=True)
    pool = GaussianPool.draw(n_clients * cfg.n_samples_per_client, means=means, rng=seeding.rng(seed, purpose="data/pool"))
    xt, yt = gaussian_mixture(cfg.n_test, means=means, rng=seeding.rng(seed, purpose="data/test"))
    return FederatedData(**shard(pool, pool.y, cfg, n_clients, seed), x_test=xt, y_test=yt, n_classes=o.n_classes)


@register("gaussian_logistic", options=GaussianOptions, planned=gaussian_logistic_planned,
          help="class-conditional Gaussians in data.gaussian_logistic.n_features dimensions",
          sample_numbers=lambda cfg: cfg.options("gaussian_logistic").n_features)
def gaussian_logistic(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    return read(gaussian_logistic_planned(cfg, n_clients, seed))
