"""Poisoned clients: a backdoor trigger or flipped labels on a seeded fraction of a client's data.

The most common practical reason to forget a client is that it was malicious. An attack is a
registry entry (:data:`~p2pforget.registry.POISONS`, chosen by ``data.poison.kind``) that writes
its trigger into a batch of inputs; :func:`apply` poisons the training samples of the clients in
``data.poison.clients`` and adds the attack's probe to the data: the test inputs whose true class
is not the target, triggered, all labelled with the target. The score on that probe is the
attack success rate (``ASR``: percent of them classified as the target), recorded for every node
at every evaluation round and before and after every forget request.

- ``patch`` (BadNets, Gu et al. 2017): a ``size`` x ``size`` square in the bottom-right corner of
  every channel of an image set to ``value``.
- ``feature``: the first ``size`` input features set to ``value`` (tabular and synthetic data).
- ``label_flip``: inputs unchanged, labels set to ``target``; its ASR is the share of clean test
  inputs of the other classes classified as the target.

Which samples: client ``i`` poisons ``round(fraction * counts[i])`` of its training samples, a
choice drawn from the stream ``(seed, i, "data/poison")`` (the same at any rank count). Held-out
splits and the test split stay clean. ``value = 0`` means the largest input value of the public
test split (a bright patch; a feature at the top of its observed range).

Example
-------
>>> import numpy as np
>>> x = np.zeros((2, 1, 4, 4))
>>> patch(x, size=2, value=1.0)[0, 0].tolist()
[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from . import seeding
from .registry import POISONS

if TYPE_CHECKING:
    from .config import PoisonConfig
    from .data import FederatedData

PROBE = "ASR"
"""The name of the attack's probe: per-node metric ``metrics/per_node/ASR``, mean ``ASR_mean``."""


@POISONS.register("none", help="no poisoned client")
def none(x: np.ndarray, *, size: int, value: float) -> np.ndarray:
    return x


@POISONS.register("patch", help="BadNets patch: a size x size square in each image's bottom-right corner, set to value",
                  images=True)
def patch(x: np.ndarray, *, size: int, value: float) -> np.ndarray:
    """``x [n, ..., H, W]`` with its bottom-right ``size`` x ``size`` pixels set to ``value``."""
    out = x.copy()
    out[..., -size:, -size:] = value
    return out


@POISONS.register("feature", help="feature trigger: the first size input features set to value (tabular data)")
def feature(x: np.ndarray, *, size: int, value: float) -> np.ndarray:
    """``x [n, ...]`` with its first ``size`` features (in flattened order) set to ``value``."""
    out = x.reshape(len(x), -1).copy()
    out[:, :size] = value
    return out.reshape(x.shape)


@POISONS.register("label_flip", help="label flipping: inputs unchanged, labels set to the target")
def label_flip(x: np.ndarray, *, size: int, value: float) -> np.ndarray:
    return x


def chosen(counts: int, fraction: float, *, seed: int, client: int) -> np.ndarray:
    """The sorted indices of the ``round(fraction * counts)`` samples client ``client`` poisons.

    >>> chosen(10, 0.3, seed=0, client=2).size
    3
    """
    k = int(round(fraction * counts))
    return np.sort(seeding.rng(seed, client=client, purpose="data/poison").permutation(int(counts))[:k])


def check(cfg: "PoisonConfig", data: "FederatedData", n_clients: int) -> None:
    """Refuse a poison setting that cannot apply to ``data``, naming the key and the fix."""
    if cfg.kind == "none":
        return
    if not cfg.clients:
        raise ValueError(f"data.poison.kind = {cfg.kind!r} needs data.poison.clients, the malicious clients "
                         "(e.g. clients = [3])")
    bad = [c for c in cfg.clients if c >= n_clients]
    if bad:
        raise ValueError(f"data.poison.clients names client {bad[0]}, but there are {n_clients} clients (ids 0 to "
                         f"{n_clients - 1})")
    if cfg.target >= data.n_classes:
        raise ValueError(f"data.poison.target = {cfg.target} is not a class of this dataset ({data.n_classes} classes: "
                         f"0 to {data.n_classes - 1})")
    shape = data.input_shape
    if POISONS.entry(cfg.kind).meta.get("images") and (len(shape) < 2 or min(shape[-2:]) < cfg.size):
        raise ValueError(f"data.poison.kind = 'patch' needs image inputs of at least {cfg.size} x {cfg.size} pixels; "
                         f"this dataset's inputs have shape {shape}: use kind = 'feature' for tabular data")
    if cfg.kind == "feature" and cfg.size > int(np.prod(shape)):
        raise ValueError(f"data.poison.size = {cfg.size} features, but inputs have {int(np.prod(shape))}; lower it")
    if data.extras:
        raise ValueError(f"data.poison: dataset inputs with extra fields ({', '.join(data.extras)}) are not supported; "
                         "poison an image or tabular classification dataset")


def trigger_value(cfg: "PoisonConfig", data: "FederatedData") -> float:
    """``cfg.value``, or the largest input value of the public test split where it is 0."""
    return float(cfg.value) if cfg.value else float(np.max(data.x_test))


def probe(cfg: "PoisonConfig", data: "FederatedData") -> tuple[np.ndarray, np.ndarray]:
    """The ASR probe: the test inputs of every class but the target, triggered, labelled ``target``."""
    keep = data.y_test != cfg.target
    x = POISONS.get(cfg.kind)(data.x_test[keep], size=cfg.size, value=trigger_value(cfg, data))
    return x, np.full(int(keep.sum()), cfg.target, dtype=np.int64)


def apply(data: "FederatedData", cfg: "PoisonConfig", *, seed: int) -> "FederatedData":
    """``data`` with the training samples of ``cfg.clients`` poisoned (``poisoned``: which ones)
    and the ASR probe added; unchanged for ``kind = "none"``."""
    if cfg.kind == "none":
        return data
    check(cfg, data, data.n_clients)
    attack, value = POISONS.get(cfg.kind), trigger_value(cfg, data)
    x, y = data.x.copy(), data.y.copy()
    poisoned = np.zeros(y.shape, dtype=bool)
    for i in cfg.clients:
        rows = chosen(int(data.counts[i]), cfg.fraction, seed=seed, client=i)
        poisoned[i, rows] = True
        if i in data.clients:  # the inputs held here (a process holds its own clients' only)
            x[i - data.first, rows] = attack(x[i - data.first, rows], size=cfg.size, value=value)
        y[i, rows] = cfg.target
    return dataclasses.replace(data, x=x, y=y, poisoned=poisoned, probes=data.probes | {PROBE: probe(cfg, data)})
