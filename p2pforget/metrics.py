"""Unlearning metrics, named as in the papers: FA / RA / TA (accuracy on forgotten, retained and test
data), MIA (membership-inference attack AUC x 100; 50 = the forgotten data look like unseen data),
and the distance of every node's model to Retrain.

The pure functions work on numpy arrays; :func:`evaluate` runs a set of node models on this
process's clients and gathers the per-node numbers at the root.

Example
-------
>>> import numpy as np
>>> logits = np.array([[2.0, 0.0], [0.0, 2.0]])
>>> attack_features(logits, np.array([0, 0]))[:, 0].round(3).tolist()  # per-sample loss
[0.127, 2.127]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import seeding

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class EvalSets:
    """The samples unlearning is judged on: forgotten, retained (all remaining training data), test.
    The test set is split in two halves: one trains the membership attack, the other is the
    non-member side of its evaluation."""

    x_forget: np.ndarray
    y_forget: np.ndarray
    x_retain: np.ndarray
    y_retain: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def from_masks(cls, engine: "Engine", forgotten: np.ndarray, retained: np.ndarray) -> "EvalSets":
        """Sets from boolean ``(n_clients, m)`` masks over the engine's training data."""
        d = engine.data
        return cls(x_forget=d.x[forgotten], y_forget=d.y[forgotten], x_retain=d.x[retained], y_retain=d.y[retained],
                   x_test=d.x_test, y_test=d.y_test)


def attack_features(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample (loss, confidence in the true label, prediction entropy)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    labels = np.broadcast_to(labels, logp.shape[:-1])
    true = np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    entropy = -(p * logp).sum(axis=-1)
    return np.stack([-true, np.exp(true), entropy], axis=-1)


def mia_auc(member: np.ndarray, nonmember: np.ndarray, forget: np.ndarray, heldout: np.ndarray, *, seed: int) -> float:
    """AUC x 100 of a logistic-regression attack trained on member-vs-nonmember features and
    evaluated on forgotten (label 1) vs held-out (label 0) features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r = seeding.rng(seed, purpose="metrics/mia")
    k = min(len(member), len(nonmember))
    member = member[r.choice(len(member), k, replace=False)]
    X = np.concatenate([member, nonmember[:k]])
    y = np.concatenate([np.ones(k), np.zeros(k)])
    attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    score = attack.predict_proba(np.concatenate([forget, heldout]))[:, 1]
    truth = np.concatenate([np.ones(len(forget)), np.zeros(len(heldout))])
    return 100.0 * float(roc_auc_score(truth, score))


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def evaluate(engine: "Engine", params: torch.Tensor, sets: EvalSets, *, nodes: np.ndarray) -> dict | None:
    """FA, RA, TA (mean/min/max over ``nodes``, in percent) and MIA (mean over ``nodes``) of the
    stacked local ``params``; the dict at the root, ``None`` elsewhere."""
    sizes = [len(sets.y_forget), len(sets.y_retain), len(sets.y_test)]
    x = np.concatenate([sets.x_forget, sets.x_retain, sets.x_test])
    y = np.concatenate([sets.y_forget, sets.y_retain, sets.y_test])
    x_t = torch.as_tensor(x, dtype=engine.dtype)
    with torch.no_grad():
        logits = torch.stack([engine.task.logits(p, x_t) for p in params.detach()])
    feats = torch.as_tensor(attack_features(logits.numpy().astype(np.float64), y))
    correct = (logits.argmax(-1).numpy() == y).astype(np.float64)
    full = engine.transport.gather(torch.cat([feats, torch.as_tensor(correct)[..., None]], dim=-1))
    if full is None:
        return None
    full = full.numpy()[nodes]
    f_end, r_end = sizes[0], sizes[0] + sizes[1]
    acc = full[..., 3]
    out = {
        "FA": _summary(100 * acc[:, :f_end].mean(axis=1)) if f_end else None,
        "RA": _summary(100 * acc[:, f_end:r_end].mean(axis=1)),
        "TA": _summary(100 * acc[:, r_end:].mean(axis=1)),
    }
    half = sizes[2] // 2
    if f_end and half:
        aucs = [mia_auc(node[f_end:r_end, :3], node[r_end:r_end + half, :3], node[:f_end, :3], node[r_end + half:, :3],
                        seed=engine.seed) for node in full]
        out["MIA"] = float(np.mean(aucs))
    return out


def forget_accuracy(engine: "Engine", params: torch.Tensor, sets: EvalSets, *, nodes: np.ndarray) -> float | None:
    """FA (percent, mean over ``nodes``) of the stacked local ``params``; at the root, ``None``
    elsewhere or when nothing was forgotten."""
    if not len(sets.y_forget):
        return None
    x = torch.as_tensor(sets.x_forget, dtype=engine.dtype)
    with torch.no_grad():
        correct = torch.stack([(engine.task.logits(p, x).argmax(-1) == torch.as_tensor(sets.y_forget)).to(torch.float64)
                               for p in params.detach()])
    full = engine.transport.gather(correct.mean(dim=1, keepdim=True))
    return None if full is None else float(100 * full[nodes, 0].mean())


def time_to_forget(trace: list[float], *, target: float | None, start: float | None, tolerance: float = 1.0) -> dict:
    """T2F from an FA trace (FA after each round): the first round whose FA is within ``tolerance``
    points of ``target`` (Retrain's final FA), and the FA drop per round until then (from ``start``,
    the FA before unlearning). ``None`` where the trace never gets there.

    >>> time_to_forget([90.0, 80.0, 71.5, 70.2], target=70.0, start=95.0)
    {'T2F_rounds': 4, 'FA_drop_per_round': 6.2}
    """
    if target is None or start is None:
        return {"T2F_rounds": None, "FA_drop_per_round": None}
    hit = next((k + 1 for k, fa in enumerate(trace) if abs(fa - target) <= tolerance), None)
    if hit is None:
        return {"T2F_rounds": None, "FA_drop_per_round": None}
    return {"T2F_rounds": hit, "FA_drop_per_round": round((start - trace[hit - 1]) / hit, 6)}


def distance(params: np.ndarray, reference: np.ndarray, nodes: np.ndarray) -> float:
    """Mean over ``nodes`` of ``||params_i - reference_i||``."""
    return float(np.linalg.norm(params[nodes] - reference[nodes], axis=1).mean())
