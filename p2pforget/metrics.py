"""Unlearning metrics, named as in the papers: FA / RA / TA (accuracy on forgotten, retained and test
data), FA_heldout (accuracy on the held-out split of the clients whose data are forgotten: what
FOUL's official evaluation calls FA, the forgotten clients' test data), MIA (membership-inference AUC x 100 of the loss-threshold attack, forgotten samples against
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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata

from .tasks import as_inputs

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class EvalSets:
    """The samples unlearning is judged on: forgotten, retained (all remaining training data), test,
    and the non-members of the membership attack: the held-out samples of the clients whose data
    are forgotten (the test set where the data have no held-out split; ``clients_heldout`` says
    which); ``non_members`` picks those of the forgotten samples' classes. ``extras`` holds each set's further per-sample inputs (e.g. caption tokens), by set name."""

    x_forget: np.ndarray
    y_forget: np.ndarray
    x_retain: np.ndarray
    y_retain: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    clients_heldout: bool = False  # whether x_heldout is the forgotten clients' held-out split
    non_members: np.ndarray | None = None  # which held-out samples the attack uses (None: all)

    NAMES = ("forget", "retain", "test", "heldout")

    @classmethod
    def from_masks(cls, engine: "Engine", forgotten: np.ndarray, retained: np.ndarray) -> "EvalSets":
        """Sets from boolean ``(n_clients, m)`` masks over the engine's training data (every
        process calls this: the samples other processes hold come through the transport)."""
        d = engine.data
        clients = np.flatnonzero(forgotten.any(axis=1))
        own = bool(d.x_holdout is not None and len(clients) and d.holdout_counts[clients].sum())
        if own:
            held = np.arange(d.y_holdout.shape[1])[None, :] < d.holdout_counts[:, None]
            rows = np.zeros_like(held)
            rows[clients] = held[clients]
            heldout = engine.batches.samples(rows, held_out=True)
        else:
            heldout = {"x": d.x_test, "y": d.y_test} | d.extras_test
        # The attack's non-members are of the members' classes only: after a class-level request,
        # held-out samples of the other classes would tell classes apart, not members from non-members.
        same = np.isin(heldout["y"], np.unique(d.y[forgotten]))
        forget, retain = engine.batches.samples(forgotten), engine.batches.samples(retained)

        def extras(picked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v for k, v in picked.items() if k not in ("x", "y")}

        return cls(x_forget=forget["x"], y_forget=forget["y"], x_retain=retain["x"], y_retain=retain["y"],
                   x_test=d.x_test, y_test=d.y_test, x_heldout=heldout["x"], y_heldout=heldout["y"],
                   extras={"forget": extras(forget), "retain": extras(retain), "test": d.extras_test,
                           "heldout": extras(heldout)},
                   clients_heldout=own, non_members=same if same.any() else np.ones_like(same))

    def batch(self, name: str, dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Set ``name`` (one of :attr:`NAMES`) as a task batch on ``device``."""
        out = {"x": as_inputs(getattr(self, f"x_{name}"), dtype), "y": torch.as_tensor(getattr(self, f"y_{name}"))}
        extras = self.extras.get(name, {})
        out |= {k: torch.as_tensor(v) for k, v in extras.items()}
        if extras and name != "test":
            # Retrieval is scored against a common gallery, the test pairs: every set's pairs face
            # the same distractors, whatever its size and make-up (one client's similar pairs).
            out |= {"gallery_x": as_inputs(self.x_test, dtype)}
            out |= {f"gallery_{k}": torch.as_tensor(v) for k, v in self.extras["test"].items()}
        return {k: v.to(device) for k, v in out.items()}

    def size(self, name: str) -> int:
        return len(getattr(self, f"y_{name}"))


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


def _per_row(fn, params: torch.Tensor) -> list:
    """``[fn(row) for row in params]``, calling ``fn`` once per distinct row (after FedAvg every
    node holds the same model)."""
    distinct, inverse = torch.unique(params.detach(), dim=0, return_inverse=True)
    out = [fn(p) for p in distinct]
    return [out[int(k)] for k in inverse]


def evaluate(engine: "Engine", params: torch.Tensor, sets: EvalSets, *, nodes: np.ndarray) -> dict | None:
    """FA, RA, TA (the task's score on the forgotten, retained and test sets: accuracy for a
    classifier, R@1 for CLIP, each pair retrieved among the test pairs; mean/min/max over ``nodes``, in percent),
    FA_heldout (the same on the forgotten clients' held-out split; ``None`` without one), the
    score on each of the data's probes under its name (``ASR`` of a poisoned client) and MIA
    (mean over ``nodes``) of the stacked local ``params``; the dict at the root, ``None`` elsewhere."""
    params = engine.compute.with_buffers(params)  # a model's running statistics, if it keeps any
    names = [n for n in EvalSets.NAMES if sets.size(n)]
    batches = [sets.batch(name, engine.dtype, engine.device) for name in names]
    with torch.no_grad():
        # per distinct model, every set judged against one embedding of the shared gallery (CLIP)
        judged = _per_row(lambda p: [engine.task.judge(p, b) for b in engine.task.with_gallery(p, batches)], params)
        # the data's probes (e.g. a backdoor's triggered test inputs: ASR), scored like the test set
        probed = [torch.stack([s.double() for s in _per_row(lambda p: engine.task.score(p, batch), params)])
                  for batch in engine.batches.probes.values()]
    scores = [torch.stack([row[k][0].double() for row in judged]) for k in range(len(names))] + probed
    member = [torch.stack([row[k][1] for row in judged]) for k in range(len(names))]
    full = engine.transport.gather(torch.cat([torch.stack(scores, dim=1)] + member, dim=1))
    if full is None:
        return None
    full = full.cpu().numpy()[nodes]
    score = dict(zip(names, full[:, :len(names)].T))
    probes = {name: _summary(100 * full[:, len(names) + k]) for k, name in enumerate(engine.batches.probes)}
    offsets = np.cumsum([len(names) + len(probes)] + [sets.size(n) for n in names])
    phi = {n: full[:, offsets[i]:offsets[i + 1]] for i, n in enumerate(names)}
    out = {"FA": _summary(100 * score["forget"]) if "forget" in score else None,
           "RA": _summary(100 * score["retain"]), "TA": _summary(100 * score["test"]),
           "FA_heldout": _summary(100 * score["heldout"]) if sets.clients_heldout and "heldout" in score else None}
    out |= probes
    if "forget" in phi and "heldout" in phi:
        neg = phi["heldout"] if sets.non_members is None else phi["heldout"][:, sets.non_members]
        out["MIA"] = float(100 * auc(phi["forget"], neg).mean())
    return out


def forget_accuracy(engine: "Engine", params: torch.Tensor, sets: EvalSets, *, nodes: np.ndarray) -> float | None:
    """FA (percent, mean over ``nodes``) of the stacked local ``params``; at the root, ``None``
    elsewhere or when nothing was forgotten."""
    if not sets.size("forget"):
        return None
    return mean_score(engine, params, sets.batch("forget", engine.dtype, engine.device), nodes=nodes)


def mean_score(engine: "Engine", params: torch.Tensor, batch: dict[str, torch.Tensor], *, nodes: np.ndarray) -> float | None:
    """The task's score on ``batch`` (percent), mean over ``nodes``, of the stacked local
    ``params``; at the root, ``None`` elsewhere."""
    params = engine.compute.with_buffers(params)
    with torch.no_grad():
        score = torch.stack([s.double() for s in _per_row(lambda p: engine.task.score(p, batch), params)])
    full = engine.transport.gather(score[:, None])
    return None if full is None else float(100 * full[nodes, 0].mean())


def retrieval(engine: "Engine", params: torch.Tensor | None = None) -> dict[str, float] | None:
    """For a model with ``recall`` (CLIP): image->text and text->image R@1/5/10 on the test pairs
    in percent, mean over the member nodes, of the stacked local ``params`` (default: the
    engine's); at the root, ``None`` elsewhere and for any other model. Every process takes part."""
    module = engine.model.module
    if not hasattr(module, "recall"):
        return None
    params = engine.params if params is None else params
    with torch.no_grad():
        rec = engine.compute.per_client(lambda flat, b: engine.model.call(flat, "recall", b), params.detach(),
                                engine.batches.test(params.shape[0]))
    full = engine.transport.gather(rec.double())
    if full is None:
        return None
    mean = 100 * full.cpu().numpy()[engine.members].mean(axis=0)
    names = [f"{way}_R@{k}" for way in ("i2t", "t2i") for k in module.recall_at]
    return dict(zip(names, (float(v) for v in mean)))


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
