"""Unlearning metrics, named as in the papers: FA / RA / TA (accuracy on forgotten, retained and test
data), MIA (membership-inference AUC x 100 of the loss-threshold attack, forgotten samples against
the same clients' held-out samples; 50 = the forgotten data look like data never trained on), and
the distance of every node's model to Retrain. :mod:`p2pforget.audit` adds confidence intervals,
LiRA and a relearning attack.

The pure functions work on numpy arrays; :func:`evaluate` runs a set of node models on this
process's clients and gathers the per-node numbers at the root.

Example
-------
>>> import numpy as np
>>> logits = np.array([[2.0, 0.0], [0.0, 2.0]])
>>> logit_confidence(logits, np.array([0, 0])).tolist()  # log p_y - log(1 - p_y)
[2.0, -2.0]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class EvalSets:
    """The samples unlearning is judged on: forgotten, retained (all remaining training data), test,
    and the non-members of the membership attack: the held-out samples of the clients whose data
    are forgotten (the test set where the data have no held-out split)."""

    x_forget: np.ndarray
    y_forget: np.ndarray
    x_retain: np.ndarray
    y_retain: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray

    @classmethod
    def from_masks(cls, engine: "Engine", forgotten: np.ndarray, retained: np.ndarray) -> "EvalSets":
        """Sets from boolean ``(n_clients, m)`` masks over the engine's training data."""
        d = engine.data
        clients = np.flatnonzero(forgotten.any(axis=1))
        if d.x_holdout is not None and len(clients) and d.holdout_counts[clients].sum():
            held = np.arange(d.y_holdout.shape[1])[None, :] < d.holdout_counts[:, None]
            rows = np.zeros_like(held)
            rows[clients] = held[clients]
            xh, yh = d.x_holdout[rows], d.y_holdout[rows]
        else:
            xh, yh = d.x_test, d.y_test
        return cls(x_forget=d.x[forgotten], y_forget=d.y[forgotten], x_retain=d.x[retained], y_retain=d.y[retained],
                   x_test=d.x_test, y_test=d.y_test, x_heldout=xh, y_heldout=yh)


def auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC (the probability that a positive outscores a negative, ties counting half)
    of ``pos [..., p]`` vs ``neg [..., q]``, by the Mann-Whitney rank sum."""
    ranks = rankdata(np.concatenate([pos, neg], axis=-1), axis=-1)
    p, q = pos.shape[-1], neg.shape[-1]
    return (ranks[..., :p].sum(axis=-1) - p * (p + 1) / 2.0) / (p * q)


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``phi = log p_y - log(1 - p_y)`` from ``logits [..., m, C]`` (stable: the second term is the
    log-sum-exp over the other classes)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    true = np.take_along_axis(z, np.broadcast_to(labels, z.shape[:-1])[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, np.broadcast_to(labels, z.shape[:-1])[..., None], -np.inf, axis=-1)
    m = others.max(axis=-1, keepdims=True)
    rest = m[..., 0] + np.log(np.exp(others - m).sum(axis=-1))
    return true - rest


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def evaluate(engine: "Engine", params: torch.Tensor, sets: EvalSets, *, nodes: np.ndarray) -> dict | None:
    """FA, RA, TA (mean/min/max over ``nodes``, in percent) and MIA (mean over ``nodes``) of the
    stacked local ``params``; the dict at the root, ``None`` elsewhere."""
    sizes = [len(sets.y_forget), len(sets.y_retain), len(sets.y_test), len(sets.y_heldout)]
    x = np.concatenate([sets.x_forget, sets.x_retain, sets.x_test, sets.x_heldout])
    y = np.concatenate([sets.y_forget, sets.y_retain, sets.y_test, sets.y_heldout])
    x_t = torch.as_tensor(x, dtype=engine.dtype)
    with torch.no_grad():
        logits = torch.stack([engine.task.logits(p, x_t) for p in params.detach()])
    phi = torch.as_tensor(logit_confidence(logits.numpy().astype(np.float64), y))
    correct = (logits.argmax(-1).numpy() == y).astype(np.float64)
    full = engine.transport.gather(torch.stack([phi, torch.as_tensor(correct)], dim=-1))
    if full is None:
        return None
    full = full.numpy()[nodes]
    f_end, r_end, t_end = sizes[0], sizes[0] + sizes[1], sizes[0] + sizes[1] + sizes[2]
    acc = full[..., 1]
    out = {
        "FA": _summary(100 * acc[:, :f_end].mean(axis=1)) if f_end else None,
        "RA": _summary(100 * acc[:, f_end:r_end].mean(axis=1)),
        "TA": _summary(100 * acc[:, r_end:t_end].mean(axis=1)),
    }
    if f_end and sizes[3]:
        out["MIA"] = float(100 * auc(full[:, :f_end, 0], full[:, t_end:, 0]).mean())
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


def recall_at_k(image: np.ndarray, text: np.ndarray, *, captions_per_image: int, ks=(1, 5, 10)) -> dict[str, float]:
    """Retrieval recall x 100 of ``image [N, D]`` and ``text [N * c, D]`` embeddings, where captions
    ``c * i .. c * i + c - 1`` belong to image i (as in Flickr30K / COCO evaluation): image-to-text
    R@k counts an image when any of its captions is among its k most similar texts; text-to-image
    R@k counts a caption when its image is among its k most similar images.

    >>> e = np.eye(2)
    >>> recall_at_k(e, np.repeat(e, 2, axis=0), captions_per_image=2, ks=(1,))
    {'i2t_R@1': 100.0, 't2i_R@1': 100.0}
    """
    sim = image @ text.T                                           # [N, N c]
    owner = np.arange(text.shape[0]) // captions_per_image
    # rank of the best own caption for each image, and of the own image for each caption
    order_i2t = np.argsort(-sim, axis=1, kind="stable")
    first_hit = (owner[order_i2t] == np.arange(len(image))[:, None]).argmax(axis=1)
    order_t2i = np.argsort(-sim.T, axis=1, kind="stable")
    own_rank = (order_t2i == owner[:, None]).argmax(axis=1)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float((first_hit < k).mean())
        out[f"t2i_R@{k}"] = 100.0 * float((own_rank < k).mean())
    return {key: out[key] for key in sorted(out, key=lambda s: (s[:3], int(s.split("@")[1])))}
