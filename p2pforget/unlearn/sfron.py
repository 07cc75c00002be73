"""SFR-on: saliency-masked, adaptively weighted forgetting ascent interleaved with remain descent.

Huang, Cheng, Chen, Liu, Wang, "Unified Gradient-Based Machine Unlearning with Remain Geometry
Enhancement" (NeurIPS 2024, arXiv 2409.19732), as its official classification code does it
(``Classification/unlearn/sfron.py``; see ``docs/methods/sfron.md``):

- **S**, the weight saliency: ``F_f`` and ``F_r``, the mean squared mini-batch gradients of the
  forget and remain losses at the trained model (empirical diagonal Fishers: the forget set in
  consecutive mini-batches of ``train.batch_size``, the remain set in as many of the engine's
  mini-batches as cover it once), give the mask ``m = 1[(F_f + 1e-15) / (F_r + 1e-15) >= threshold]``,
  computed once.
- **F**, weighted forgetting: per forget sample ``c_i = 1 / (l_i^lambda + 1e-15)`` (detached), the
  forget loss ``-alpha_t sum_i c_i l_i / sum_j c_j``: samples still remembered (low loss) weigh
  more; ``alpha_t = alpha (1 + cos(pi t / T)) / 2``.
- **R** and the fast-slow update: every ``forget_every`` steps one masked, norm-clipped forget step,
  and every step one unmasked remain step, all through one SGD optimizer with momentum, weight
  decay and a cosine learning-rate schedule. The official code's EMA (``beta = 1``) is the
  identity, so the interleaving is the whole fast-slow mechanism.

Where it runs (``placement``): on a gossip graph, ``"holders"`` runs it at the nodes that hold the
forgotten data, each on its own model with its own remaining data as the remain set (no other
node changes; gossip resumes after). A node forgotten whole has no remain set and leaves with its
model, so this placement cannot change what the others learned from it: ``"auto"`` (the default)
is ``"every_node"`` when a whole client is forgotten and ``"holders"`` otherwise. ``"every_node"`` runs it
at every node that stays, on its own model and remaining data, with the forget gradients at its
model computed by the holders (its parameters travel to them and the gradient back, counted per
hop); after every remain step one gossip step (``gossip``): ``"models"`` (the default) averages
the models with the neighbours, as DSGD does; ``"changes"`` averages only the changes since the
last gossip step, which adds no consensus beyond the trained models' but leaves their disagreement
uncontracted, so the models drift apart over a long loop (with ``alpha = 0`` and 100 steps the
validation accuracy fell from 54.8 to 46.2 on a calibration seed, digits on a ring; averaging the
models raised it to 79.2). On the star, at the hub on the global model,
with the clients' uploaded statistics: the forget gradients of the clients holding forgotten
data, and the remaining clients' remain gradients and squared gradients averaged with FedAvg
weights.

Every ``check_every`` steps the request's stopping rule and collapse guard look at the models
(:mod:`.stopping`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad

from ..aggregate import weighted_average
from ..config import bounded, choice
from ..registry import METHODS
from ..tasks import as_inputs
from . import ForgetRequest, Outcome, forget_batch, require_classifier

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class SFRonOptions:
    """Keys of ``[unlearn.sfron]``: the official code's defaults, except ``steps`` (1500 there, for
    ResNet-18 on CIFAR-10) and ``alpha``, both chosen for small federated models on calibration
    seeds (docs/results/calibration_defaults.md), and ``gossip`` (the official code has none). Remain batches are the
    engine's (``train.batch_size``); the forget batch is every forgotten sample of a node."""

    steps: int = bounded(20, 1)
    lr: float = bounded(0.01, 0.0)
    momentum: float = bounded(0.9, 0.0, 1.0)
    weight_decay: float = bounded(5e-4, 0.0)
    forget_every: int = bounded(5, 1)
    # 25 in the official code (ResNet-18, 1500 steps). On the small federated models of the
    # calibration runs (docs/results/calibration_defaults.md) alpha 25 broke the model on 27 of 27
    # runs; alpha 1 with 20 steps on none, and it landed closest to Retrain's FA_heldout.
    alpha: float = bounded(1.0, 0.0)
    temperature: float = bounded(0.5, 0.0)   # lambda of the adaptive weights
    threshold: float = bounded(1.0, 0.0)     # gamma of the saliency mask
    max_norm: float = bounded(7.0, 0.0)      # gradient clipping of the forget step (0 = none)
    placement: str = choice("auto", "auto", "holders", "every_node")  # on gossip graphs (see the module docstring)
    gossip: str = choice("models", "models", "changes")  # what every_node averages after each remain step
    check_every: int = bounded(10, 1)        # steps between two looks of the stopping rule and guard


def chunk_fisher(gradient, params: torch.Tensor, batch: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Each row's mean over consecutive mini-batches of ``size`` samples (0 = one batch) of the
    squared ``gradient(params, part)`` (``[n, d]``) on ``batch`` (``[n, w, ...]``, real samples
    first, as :func:`~p2pforget.unlearn.forget_batch` lays them out); rows without samples get zero.

    >>> g = lambda p, b: b["x"].sum(dim=1, keepdim=True).expand_as(p)  # a stand-in "gradient"
    >>> batch = {"x": torch.tensor([[1.0, 2.0, 3.0]]), "mask": torch.tensor([[1.0, 1.0, 1.0]])}
    >>> chunk_fisher(g, torch.zeros(1, 1), batch, 2).item()  # ((1 + 2)^2 + 3^2) / 2
    9.0
    """
    width = batch["mask"].shape[1]
    size = width if size <= 0 else size
    total, count = torch.zeros_like(params), torch.zeros(params.shape[0], dtype=params.dtype, device=params.device)
    for k in range(0, width, size):
        part = {key: v[:, k:k + size] for key, v in batch.items()}
        present = (part["mask"].sum(dim=1) > 0).to(params.dtype)
        if not present.any():
            break
        total = total + gradient(params, part) ** 2
        count = count + present
    return total / count.clamp(min=1)[:, None]


def remain_fisher(engine: "Engine", gradient, params: torch.Tensor, *, key: int,
                  rows: list[int] | None = None) -> torch.Tensor:
    """Each row's mean squared ``gradient(params, batch)`` over the engine's mini-batches ``(key, s)``,
    ``s = 0 .. K-1``, ``K`` = enough batches of ``train.batch_size`` to cover the largest client's
    remaining data once (``rows``: these local rows only)."""
    b = engine.config.train.batch_size
    most = int(engine.retained[engine.lo:engine.hi].sum(axis=1).max(initial=0))
    batches = 1 if b == 0 or b >= most else math.ceil(most / b)
    total = torch.zeros_like(params)
    for s in range(batches):
        part = engine.batches.minibatch((key, s))
        if rows is not None:
            part = {k: v[rows] for k, v in part.items()}
        total = total + gradient(params, part) ** 2
    return total / batches


def _looks(request: ForgetRequest, every: int, full: Callable[[torch.Tensor], torch.Tensor] = lambda p: p):
    """``after_step(params, t)`` for :func:`fast_slow`: the request's trace after every step, its
    stopping rule and guard every ``every`` steps, on the whole models ``full(params)``."""
    def after(params: torch.Tensor, t: int) -> bool:
        models = full(params)
        if request.observe is not None:
            request.observe(models)
        return request.monitor is not None and (t + 1) % every == 0 and request.monitor.check(models)
    return after


def saliency_mask(F_f: torch.Tensor, F_r: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(F_f + 1e-15) / (F_r + 1e-15) >= threshold``: the weights the forget data move more than
    the remain data do.

    >>> saliency_mask(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 0.0]), 1.0).tolist()
    [True, False, True]
    """
    return (F_f + 1e-15) / (F_r + 1e-15) >= threshold


def adaptive_forget_loss(losses: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """``sum_i w_i l_i`` with ``w_i = c_i / sum_j c_j``, ``c_i = 1 / (l_i^temperature + 1e-15)``
    (detached), over the samples with ``mask = 1``."""
    c = mask / (losses.detach().clamp(min=0) ** temperature + 1e-15)
    return (c * losses).sum() / c.sum().clamp(min=1e-30)


def forget_weight(alpha: float, step: int, steps: int) -> float:
    """The cosine-decayed forget weight ``alpha (1 + cos(pi step / steps)) / 2``."""
    return alpha * (1.0 + math.cos(math.pi * step / steps)) / 2.0


def cosine_lr(lr: float, step: int, steps: int) -> float:
    """``CosineAnnealingLR`` with ``eta_min = 0`` at ``step``."""
    return lr * (1.0 + math.cos(math.pi * step / steps)) / 2.0


def clip_rows(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each row scaled by ``min(1, max_norm / (||row|| + 1e-6))`` (as ``clip_grad_norm_``)."""
    if max_norm <= 0:
        return g
    norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return g * torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def sgd_step(params: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, *, lr: float, momentum: float,
             weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``torch.optim.SGD`` step (dampening 0, no Nesterov): ``d = g + wd theta``, ``buf <- momentum
    buf + d`` (``d`` at the first step), ``theta <- theta - lr buf``."""
    d = g + weight_decay * params
    buf = d.clone() if buf is None else momentum * buf + d
    return params - lr * buf, buf


def fast_slow(params: torch.Tensor, *, forget_grad: Callable[[torch.Tensor, int], torch.Tensor],
              remain_grad: Callable[[torch.Tensor, int], torch.Tensor], mask: torch.Tensor, options: SFRonOptions,
              mix: Callable[[torch.Tensor], torch.Tensor] = lambda p: p,
              after_step: Callable[[torch.Tensor, int], bool] | None = None) -> torch.Tensor:
    """SFR-on's interleaved loop on stacked ``params`` (see the module docstring): at every
    ``forget_every``-th step a forget step with ``-alpha_t * forget_grad`` masked and clipped, then a
    remain step with ``remain_grad``; both through one SGD-momentum state per row and the cosine
    learning rate; ``mix`` after every remain step (gossip), ``after_step(params, t)`` after it
    (the loop stops when it returns ``True``)."""
    o = options
    buf = None
    m = mask.to(params.dtype)
    for t in range(o.steps):
        lr = cosine_lr(o.lr, t, o.steps)
        if t % o.forget_every == 0:
            g = clip_rows(-forget_weight(o.alpha, t, o.steps) * forget_grad(params, t) * m, o.max_norm)
            params, buf = sgd_step(params, g, buf, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        params, buf = sgd_step(params, remain_grad(params, t), buf, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        params = mix(params)
        if after_step is not None and after_step(params, t):
            break
    return params


@METHODS.register("sfron", options=SFRonOptions,
                  help="SFR-on (NeurIPS 2024): saliency-masked adaptive forgetting ascent interleaved with remain descent")
class SFRon:
    """SFR-on at every node (see the module docstring)."""

    def check(self, engine: "Engine", request: ForgetRequest, options: SFRonOptions) -> None:
        require_classifier(engine, "sfron")

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: SFRonOptions) -> Outcome:
        placement = options.placement
        if placement == "auto":
            placement = "every_node" if request.whole_clients else "holders"
        if not engine.is_star and placement == "every_node":
            comm = self._at_every_node(engine, request, options)
            return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=options.steps)
        if not engine.is_star and request.whole_clients and placement == "holders":
            warnings.warn("sfron placement = 'holders' on a whole-client request: only the forgotten nodes run it and "
                          "they leave with their models, so no staying node changes and nothing is sent; set "
                          "[unlearn.sfron] placement = 'auto' (or 'every_node') to act on the nodes that stay",
                          stacklevel=3)
        batch = forget_batch(engine, request.samples)
        engine.exclude(samples=request.samples)  # the forgotten nodes stay in the graph while it runs
        run = self._at_hub if engine.is_star else self._at_holders
        comm = run(engine, request, options, batch)
        engine.exclude(removed=request.removed)
        return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=options.steps)

    @staticmethod
    def _losses(engine: "Engine", options: SFRonOptions):
        task = engine.task

        def per_sample(flat, batch):
            return F.cross_entropy(task.logits(flat, batch["x"]), batch["y"], reduction="none")

        def adaptive(flat, batch):
            return adaptive_forget_loss(per_sample(flat, batch), batch["mask"], options.temperature)

        def mean_ce(flat, batch):
            return (batch["mask"] * per_sample(flat, batch)).sum() / batch["mask"].sum().clamp(min=1)

        return adaptive, mean_ce

    @staticmethod
    def _rows(fn, params: torch.Tensor, batch: dict[str, torch.Tensor], rows: list[int]) -> torch.Tensor:
        """``grad(fn)`` of the given rows (one by one: few nodes hold forget data, and a vmapped
        batch would pad them to ``run.vmap_width``); every other row is zero."""
        g = torch.zeros_like(params)
        for i in rows:
            g[i] = grad(fn)(params[i], {k: v[i] for k, v in batch.items()})
        return g

    def _at_holders(self, engine: "Engine", request: ForgetRequest, o: SFRonOptions, forget_set) -> float:
        """Gossip graph: each node holding forgotten data runs SFR-on on its own model, its own
        remaining data being the remain set; no other node changes, nothing is sent."""
        # Every process runs the loop (with no rows where it hosts no holder): the stopping rule's
        # looks gather from all of them.
        rows = [j - engine.lo for j in sorted(request.samples) if engine.lo <= j < engine.hi]
        adaptive, mean_ce = self._losses(engine, o)
        mine = {k: v[rows] for k, v in forget_set.items()}
        local = list(range(len(rows)))
        sub = engine.params[rows]
        gradient = (lambda p, b: self._rows(mean_ce, p, b, local))  # noqa: E731
        mask = saliency_mask(chunk_fisher(gradient, sub, mine, engine.config.train.batch_size),
                             remain_fisher(engine, gradient, sub, key=35_000_000 + engine.round, rows=rows), o.threshold)

        def remain_grad(params, t):
            b = engine.batches.minibatch((30_000_000 + engine.round, t))
            return self._rows(mean_ce, params, {k: v[rows] for k, v in b.items()}, local)

        def full(p):
            params = engine.params.clone()
            params[rows] = p
            return params

        sub = fast_slow(sub, forget_grad=lambda p, t: self._rows(adaptive, p, mine, local), remain_grad=remain_grad,
                        mask=mask, options=o, after_step=_looks(request, o.check_every, full))
        engine.set_params(full(sub), copy=False)
        return 0.0

    def _at_every_node(self, engine: "Engine", request: ForgetRequest, o: SFRonOptions) -> float:
        """Gossip graph, ``placement = "every_node"``: the forgotten nodes leave first; every node
        that stays runs SFR-on on its own model and remaining data, the forget gradients at its
        model coming from the holders of the forgotten samples; after every remain step one gossip
        step (``W params``, or ``anchor + W (params - anchor)`` for ``gossip = "changes"``, ``anchor``
        = the models as of the last gossip step). Bytes: per forget-gradient request 2 vectors times the hops between node and holder
        (in the graph before anyone left), plus the gossip."""
        adaptive, mean_ce = self._losses(engine, o)
        hops = {j: nx.single_source_shortest_path_length(engine.graph, j) for j in request.clients}
        # The holders' forgotten samples, one batch each; every process gets them through the
        # transport, which stands for each node asking the holder (the bytes are counted as such).
        held = []
        for j in request.clients:
            picked = engine.batches.client_samples(j, request.samples[j])
            held.append({"x": as_inputs(picked["x"], engine.dtype, engine.device),
                         "y": torch.as_tensor(picked["y"], device=engine.device),
                         "mask": torch.ones(len(picked["y"]), dtype=engine.dtype, device=engine.device)})
        engine.exclude(samples=request.samples, removed=request.removed)
        n_loc = engine.hi - engine.lo
        running = torch.as_tensor(engine.members[engine.lo:engine.hi], device=engine.device)
        stayers = np.flatnonzero(engine.members)
        request_bytes = sum(2 * engine.dim * (torch.finfo(engine.dtype).bits // 8) * hops[j].get(int(i), 0)
                            for j in request.clients for i in stayers)
        comm = 0.0

        def from_holders(fn, params):
            """The holders' mean of ``grad(fn)`` at every row of ``params``."""
            nonlocal comm
            comm += request_bytes
            g = [engine.compute.per_client(grad(fn), params, {k: v.expand(n_loc, *v.shape) for k, v in b.items()}) for b in held]
            return sum(g) / len(g)

        size = engine.config.train.batch_size
        F_f = sum(chunk_fisher(lambda p, part: engine.compute.per_client(grad(mean_ce), p, part), engine.params,
                               {k: v.expand(n_loc, *v.shape) for k, v in b.items()}, size) for b in held) / len(held)
        comm += request_bytes * max(math.ceil(max(len(b["y"]) for b in held) / size) if size else 1, 1)
        F_r = remain_fisher(engine, lambda p, part: engine.compute.per_client(grad(mean_ce), p, part), engine.params,
                            key=35_000_000 + engine.round)
        mask = saliency_mask(F_f, F_r, o.threshold)

        def remain_grad(params, t):
            g, _ = engine.compute.gradients(params, engine.batches.minibatch((30_000_000 + engine.round, t)))
            return g

        anchor = engine.params  # gossip = "changes": the models as of the last gossip step

        def gossip(params):
            nonlocal comm, anchor
            comm += engine.network.message_bytes(engine.network.base_mixing, 1)
            if o.gossip == "models":
                return engine.network.mix(params, engine.network.base_mixing)
            anchor = anchor + engine.network.mix(params - anchor, engine.network.base_mixing)
            return anchor

        start = engine.params
        keep = (lambda p: torch.where(running[:, None], p, start))  # the nodes that left keep their model
        params = fast_slow(start, forget_grad=lambda p, t: from_holders(adaptive, p), remain_grad=remain_grad,
                           mask=mask, options=o, mix=gossip, after_step=_looks(request, o.check_every, keep))
        engine.set_params(keep(params))
        return comm

    def _at_hub(self, engine: "Engine", request: ForgetRequest, o: SFRonOptions, forget_set) -> float:
        """Star: the hub runs SFR-on on the global model; the forget gradients come from the
        clients holding the forgotten data, the remain gradient and the saliency statistics are
        the remaining clients' uploads (FedAvg weights), every step."""
        holders = sorted(request.samples)
        rows = [j - engine.lo for j in holders if engine.lo <= j < engine.hi]
        adaptive, mean_ce = self._losses(engine, o)
        remaining = engine.sample_counts
        comm = 0.0

        def hub_mean(g: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
            nonlocal comm
            full = engine.transport.gather(g)
            avg = weighted_average(full, weights) if engine.transport.is_root else None
            comm += engine.network.message_bytes(None, 1, senders=int((np.asarray(weights) > 0).sum()))
            return engine.transport.broadcast(avg, like=g[0]).expand_as(g)

        holder_weights = np.isin(np.arange(engine.n_clients), holders).astype(np.float64)
        gradient = (lambda p, b: self._rows(mean_ce, p, b, rows))  # noqa: E731
        F_f = hub_mean(chunk_fisher(gradient, engine.params, forget_set, engine.config.train.batch_size), holder_weights)
        F_r = hub_mean(remain_fisher(engine, lambda p, b: engine.compute.per_client(grad(mean_ce), p, b), engine.params,
                                     key=35_000_000 + engine.round), (remaining > 0).astype(np.float64))
        mask = saliency_mask(F_f[0], F_r[0], o.threshold)

        def remain_grad(params, t):
            g, _ = engine.compute.gradients(params, engine.batches.minibatch((30_000_000 + engine.round, t)))
            return hub_mean(g, remaining)

        params = fast_slow(engine.params, forget_grad=lambda p, t: hub_mean(self._rows(adaptive, p, forget_set, rows),
                                                                            holder_weights),
                           remain_grad=remain_grad, mask=mask, options=o, after_step=_looks(request, o.check_every))
        engine.set_params(params)
        return comm
