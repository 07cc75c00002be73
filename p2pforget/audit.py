"""Auditing a forget request: does what was released still reveal the forgotten data?

Members are the forgotten samples; non-members are the held-out samples of the same clients
(``data.holdout_fraction``), which no model ever trained on and which share those clients' class
mix, so a model that never saw the forgotten data (Retrain) scores 50 in expectation. Three attacks:

- **MIA**: the loss-threshold attack (Yeom et al., CSF 2018), as an AUC x 100 of the per-example
  score ``phi = log p_y - log(1 - p_y)`` (a monotone transform of the loss), averaged over the
  nodes' released models, with a bootstrap 95% CI over examples; and the gap to Retrain with a
  paired bootstrap CI (the same resampled examples for both).
- **LiRA**, offline variant (Carlini et al., "Membership Inference Attacks From First
  Principles", S&P 2022, Sec. VI-C): ``shadow_models`` models trained on random subsets (80%) of the
  remaining data (so every target is out of all of them) give each example a Gaussian fit of its
  ``phi``; the score is the one-sided likelihood ``Phi((phi_obs - mu_out) / sigma_out)``. Reported:
  AUC and the true-positive rate at 1% false positives.
- **Relearning** (Lynch et al. 2024, "Eight methods to evaluate robust unlearning in LLMs"):
  fine-tune one released model on ``relearn_samples`` forgotten samples and count the steps until
  its forget accuracy is back within one point of the trained model's, compared with Retrain's.

The pure functions take numpy arrays; :func:`audit` evaluates models held at the root.

Example
-------
>>> import numpy as np
>>> round(float(auc(np.array([[0.9, 0.8, 0.4]]), np.array([[0.5, 0.1]]))[0]), 4)
0.8333
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import norm

from . import seeding
from .metrics import auc
from .tasks import as_inputs

if TYPE_CHECKING:
    from .config import AuditConfig
    from .engine import Engine


def bootstrap_auc(pos: np.ndarray, neg: np.ndarray, *, reference: tuple[np.ndarray, np.ndarray] | None = None,
                  rounds: int, seed: int, level: float = 0.95) -> dict:
    """Mean over models (rows) of the AUC x 100 of ``pos [K, p]`` vs ``neg [K, q]`` and its percentile
    bootstrap CI over examples; with ``reference`` (another model set's scores on the same
    examples), the gap ``mean - reference mean`` and its paired CI.

    Each round resamples the examples with replacement (one stream: positives, then negatives);
    the resample's AUC is computed from how often it holds each example (:func:`resampled_auc`)."""
    r = seeding.rng(seed, purpose="audit/bootstrap")
    value = 100 * float(auc(pos, neg).mean())
    ref = 100 * float(auc(*reference).mean()) if reference is not None else None
    p, q = pos.shape[1], neg.shape[1]
    P, N = np.empty((rounds, p)), np.empty((rounds, q))
    for b in range(rounds):
        P[b] = np.bincount(r.integers(0, p, p), minlength=p)
        N[b] = np.bincount(r.integers(0, q, q), minlength=q)
    draws = resampled_auc(pos, neg, P, N)
    tail = 100 * (1 - level) / 2
    out = {"mean": value, "ci": [float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))]}
    if reference is not None:
        gaps = draws - resampled_auc(*reference, P, N)
        out["gap"] = {"mean": value - ref, "ci": [float(np.percentile(gaps, tail)), float(np.percentile(gaps, 100 - tail))]}
    return out


def resampled_auc(pos: np.ndarray, neg: np.ndarray, P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Mean over models of the AUC x 100 of each resample ``b``, which holds positive ``a``
    ``P[b, a]`` times and negative ``c`` ``N[b, c]`` times: the Mann-Whitney statistic with repeated
    examples, ``P_b C N_b^T / (p q)`` with ``C[a, c] = [pos_a > neg_c] + [pos_a = neg_c] / 2`` (the
    same number :func:`~p2pforget.metrics.auc` gives on the resampled scores, for all resamples at
    once).

    >>> pos, neg = np.array([[0.9, 0.4]]), np.array([[0.5, 0.1, 0.4]])
    >>> float(resampled_auc(pos, neg, np.array([[2.0, 0.0]]), np.array([[1.0, 1.0, 1.0]]))[0])
    100.0
    """
    total = np.zeros(len(P))
    for k in range(pos.shape[0]):
        C = (pos[k][:, None] > neg[k][None, :]) + 0.5 * (pos[k][:, None] == neg[k][None, :])
        total += ((P @ C) * N).sum(axis=1)
    return 100 * total / (pos.shape[0] * pos.shape[1] * neg.shape[1])


def lira_offline(phi_target: np.ndarray, phi_shadow: np.ndarray) -> np.ndarray:
    """Offline LiRA scores ``Phi((phi - mu_out) / sigma_out)`` of ``phi_target [..., m]`` given the
    OUT shadow models' ``phi_shadow [S, m]`` (per-example Gaussian fit; higher = more likely member)."""
    mu = phi_shadow.mean(axis=0)
    sigma = phi_shadow.std(axis=0, ddof=1) if phi_shadow.shape[0] > 1 else np.ones_like(mu)
    return norm.cdf((phi_target - mu) / np.maximum(sigma, 1e-12))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the threshold that lets at most ``fpr`` of the negatives through."""
    k = int(math.floor(fpr * len(neg)))
    threshold = np.sort(neg)[::-1][k] if k < len(neg) else -np.inf
    return float((pos > threshold).mean())


@dataclass(frozen=True)
class Targets:
    """The audited examples: forgotten (members) and their clients' held-out (non-members)."""

    x_forget: np.ndarray
    y_forget: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray
    extras_forget: dict[str, np.ndarray] = field(default_factory=dict)   # e.g. caption tokens
    extras_heldout: dict[str, np.ndarray] = field(default_factory=dict)

    def batch(self, side: str, dtype: torch.dtype, pick: np.ndarray | None = None, *,
              device: torch.device | str) -> dict[str, torch.Tensor]:
        """``side`` (``forget`` or ``heldout``), or its rows ``pick``, as a task batch on ``device``."""
        pick = slice(None) if pick is None else pick
        x, y = getattr(self, f"x_{side}")[pick], getattr(self, f"y_{side}")[pick]
        out = {"x": as_inputs(x, dtype), "y": torch.as_tensor(y), "mask": torch.ones(len(y), dtype=dtype)}
        extras = getattr(self, f"extras_{side}")
        if extras:
            out |= {k: torch.as_tensor(v[pick]) for k, v in extras.items()} | {"u": torch.zeros(len(y), dtype=dtype)}
        return {k: v.to(device) for k, v in out.items()}

    @classmethod
    def of(cls, engine: "Engine", forgotten: dict[int, np.ndarray]) -> "Targets":
        d = engine.data
        if d.x_holdout is None:
            raise ValueError("the audit needs held-out samples: set data.holdout_fraction > 0 (default 0.2)")
        clients = sorted(int(j) for j in forgotten)
        # each client's forgotten samples in the order its request lists them
        picked = [engine.batches.client_samples(j, forgotten[j]) for j in clients]
        sample = {k: np.concatenate([p[k] for p in picked]) for k in picked[0]}
        held = np.zeros(d.y_holdout.shape, dtype=bool)
        held[clients] = np.arange(d.y_holdout.shape[1])[None, :] < d.holdout_counts[clients, None]
        h = engine.batches.samples(held, held_out=True)
        return cls(x_forget=sample.pop("x"), y_forget=sample.pop("y"), x_heldout=h.pop("x"), y_heldout=h.pop("y"),
                   extras_forget=sample, extras_heldout=h)


def _dtype(engine: "Engine") -> torch.dtype:
    """float64 for the audit's own computations, unless the model has frozen weights (a fine-tuned
    backbone), which stay in the training dtype."""
    return torch.float64 if engine.model.dim == sum(p.numel() for p in engine.model.module.parameters()) else engine.dtype


def _phi(engine: "Engine", params: np.ndarray, targets: Targets, side: str) -> np.ndarray:
    """``phi [K, m]`` (the task's membership score, float64) of the K models ``params [K, d]`` on
    the ``side`` examples."""
    dtype = _dtype(engine)
    batch = targets.batch(side, dtype, device=engine.device)
    with torch.no_grad():
        return torch.stack([engine.task.judge(torch.as_tensor(p, dtype=dtype, device=engine.device), batch)[1]
                            for p in params]).cpu().numpy()


def _accuracy(engine: "Engine", theta: torch.Tensor, batch: dict[str, torch.Tensor]) -> float:
    """The task's score (accuracy, or R@1) of ``theta`` on ``batch``, in percent."""
    with torch.no_grad():
        return 100 * float(engine.task.score(theta, batch))


SHADOW_FRACTION = 0.8
"""Each shadow model trains on this fraction of the remaining data (drawn anew per model): close to
the audited models' training set, with enough variation between shadows for the Gaussian fit."""


def shadow_models(engine: "Engine", count: int, *, seed: int, steps: int = 0,
                  retained: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``count`` models trained centrally on random subsets of the remaining training data (none of
    the audited examples; ``retained``: those samples as :meth:`~p2pforget.engine.batches.Batches.samples`
    gives them, default: gathered here), from the engine's initialization, by gradient descent on
    the task's objective with the training learning rate and batch size, for ``steps`` steps (0: as
    many as the engine trained, rounds x local steps)."""
    dtype = _dtype(engine)
    dev = engine.device
    kept = dict(retained if retained is not None else engine.batches.samples(engine.retained & engine.members[:, None]))
    x = as_inputs(kept.pop("x"), dtype, dev)
    y = torch.as_tensor(kept.pop("y"), device=dev)
    extras = {k: torch.as_tensor(v, device=dev) for k, v in kept.items()}
    init = engine.model.init_vector(seeding.int_seed(engine.seed, purpose="init"), dtype).to(dev)
    steps = steps or max(1, engine.round * engine.config.train.local_steps)
    lr, b = engine.config.train.lr, engine.config.train.batch_size
    one = torch.tensor(1.0, dtype=dtype, device=dev)
    out = []
    for s in range(count):
        r = seeding.rng(seed, purpose="audit/shadow", counters=(s,))
        subset = np.flatnonzero(r.random(len(y)) < SHADOW_FRACTION)
        theta = init.clone()
        for _ in range(steps):
            # minibatches of train.batch_size, as the audited models were trained (0: full batch)
            pick = torch.as_tensor(subset if not b or b >= len(subset) else r.choice(subset, b, replace=False), device=dev)
            batch = {"x": x[pick], "y": y[pick], "mask": torch.ones(len(pick), dtype=dtype, device=dev)}
            if extras:
                batch |= {k: v[pick] for k, v in extras.items()} | {"u": torch.as_tensor(r.random(len(pick)), dtype=dtype,
                                                                                          device=dev)}
            theta = theta - lr * torch.func.grad(engine.task.objective)(theta, batch, one)
        out.append(theta.cpu().numpy())
    return np.stack(out)


def relearn(engine: "Engine", theta: np.ndarray, targets: Targets, *, samples: int, steps: int, target_fa: float,
            seed: int) -> dict:
    """Fine-tune ``theta`` on ``samples`` forgotten examples (full batch, the training learning
    rate); the steps until its FA on all forgotten examples is within one point of ``target_fa``
    (``None`` if not within ``steps``) and the FA after every step."""
    k = min(samples, len(targets.y_forget))
    pick = np.sort(seeding.rng(seed, purpose="audit/relearn").choice(len(targets.y_forget), k, replace=False))
    dtype = _dtype(engine)
    batch = targets.batch("forget", dtype, pick, device=engine.device)
    everything = targets.batch("forget", dtype, device=engine.device)
    th = torch.as_tensor(theta, dtype=dtype, device=engine.device)
    one = torch.tensor(1.0, dtype=dtype, device=engine.device)
    fa = [_accuracy(engine, th, everything)]
    for _ in range(steps):
        th = th - engine.config.train.lr * torch.func.grad(engine.task.objective)(th, batch, one)
        fa.append(_accuracy(engine, th, everything))
    hit = next((t for t, v in enumerate(fa) if v >= target_fa - 1.0), None)
    return {"steps_to_recover": hit, "fa_before": fa[0], "fa_after": fa[-1]}


@dataclass(frozen=True)
class AuditData:
    """What the audit reads of the data: its targets and, for shadow models, the remaining training
    samples. Every process holds its own clients' inputs only, so every process calls
    :meth:`gather`; the audit itself may then run at the root alone."""

    targets: Targets
    retained: dict[str, np.ndarray] | None = None

    @classmethod
    def gather(cls, engine: "Engine", forgotten: dict[int, np.ndarray], options: "AuditConfig") -> "AuditData":
        retained = engine.batches.samples(engine.retained & engine.members[:, None]) if options.shadow_models else None
        return cls(targets=Targets.of(engine, forgotten), retained=retained)


def audit(engine: "Engine", *, forgotten: dict[int, np.ndarray], models: dict[str, np.ndarray], nodes: np.ndarray,
          options: "AuditConfig", seed: int, data: AuditData | None = None) -> dict:
    """The audit of one request (see the module docstring) for every model set in ``models``
    (``[n_clients, d]`` arrays, e.g. ``trained``, ``unlearned``, ``retrained``), over ``nodes``;
    ``data``: :meth:`AuditData.gather`'s (default: gathered here, which every process must call)."""
    data = data if data is not None else AuditData.gather(engine, forgotten, options)
    targets = data.targets
    phi = {k: (_phi(engine, v[nodes], targets, "forget"), _phi(engine, v[nodes], targets, "heldout"))
           for k, v in models.items()}
    out: dict = {"n_forgotten": int(len(targets.y_forget)), "n_heldout": int(len(targets.y_heldout)),
                 "bootstrap": options.bootstrap, "shadow_models": options.shadow_models, "mia": {}}
    reference = phi.get("retrained")
    for k, (pos, neg) in phi.items():
        out["mia"][k] = bootstrap_auc(pos, neg, reference=reference if k != "retrained" else None,
                                      rounds=options.bootstrap, seed=seed)
    if options.shadow_models:
        shadows = shadow_models(engine, options.shadow_models, seed=seed, steps=options.shadow_steps,
                                retained=data.retained)
        sh_pos = _phi(engine, shadows, targets, "forget")
        sh_neg = _phi(engine, shadows, targets, "heldout")
        out["lira"] = {}
        for k, (pos, neg) in phi.items():
            s_pos, s_neg = lira_offline(pos, sh_pos), lira_offline(neg, sh_neg)
            out["lira"][k] = {"auc": 100 * float(auc(s_pos, s_neg).mean()),
                              "tpr_at_1pct_fpr": float(np.mean([tpr_at_fpr(a, b) for a, b in zip(s_pos, s_neg)]))}
    if options.relearn_steps and "trained" in models:
        node = int(nodes[0])
        target_fa = _accuracy(engine, torch.as_tensor(models["trained"][node], dtype=_dtype(engine), device=engine.device),
                              targets.batch("forget", _dtype(engine), device=engine.device))
        out["relearn"] = {"node": node, "samples": min(options.relearn_samples, len(targets.y_forget)),
                          "steps": options.relearn_steps, "trained_fa": target_fa}
        for k, v in models.items():
            if k != "trained":
                out["relearn"][k] = relearn(engine, v[node], targets, samples=options.relearn_samples,
                                            steps=options.relearn_steps, target_fa=target_fa, seed=seed)
    return out
