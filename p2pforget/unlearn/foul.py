"""FOUL: federated unlearning by on-server gradient-conflict mitigation, on the star and on gossip graphs.

Nguyen, Nguyen, Yong, Le et al., "Computation and Communication Efficient Federated Unlearning via
On-server Gradient Conflict Mitigation and Expression", CVPR 2026 (arXiv 2603.13795); official code
https://github.com/skydvn/FOUL (read, not copied). The model is FOUL's L2U
(:mod:`p2pforget.models.l2u`), whose non-causal encoder theta_V holds what is specific to a client.

After the request, FOUL runs ``rounds`` unlearning rounds. In each:

1. every client, the forgotten ones included, trains ``train.local_steps`` steps from the current
   model on its own data, updating only theta_V (``params = "v"``; ``"all"`` as in the official
   code), and uploads its update ``d_u`` (only the trained entries are sent);
2. the server splits the updates into retain ``R`` and forget ``F`` clients and finds one weight per
   client, ``Gamma`` (:func:`solve_gamma`), then moves the model along Theorem 1's direction
   (:func:`foul_direction`): ``theta <- theta + meta_lr * g``.

What is implemented, exactly (see docs/methods/foul.md for the reasons):

- ``g_FL`` is the sample-weighted mean update of the *retain* clients. The official code averages
  over all clients, which feeds the forgotten data back into the direction it is meant to remove.
- ``Gamma`` solves the CAGrad dual (Liu et al., NeurIPS 2021) of the signed problem, as the
  official code does: ``w = softmax(z)`` over all U clients jointly, minimizing
  ``w_R . b_R - beta w_F . b_F + c ||sum w_R r^ - beta sum w_F f^||`` with ``r^ = r / s_R``,
  ``f^ = f / s_F`` (``s`` = mean norm of a group), ``b`` = each update's mean inner product with its
  group, ``c = kappa sqrt(mean Gram + 1e-4)``; ``solver_steps`` momentum-SGD steps on ``z`` from 0
  (lr ``solver_lr``, momentum 0.5), keeping the best iterate. Unlike the code, the norm includes the
  retain-forget cross terms, so it is the norm of the combined direction.
- ``g = (g_FL + kappa ||g_FL|| / ||g_GR - g_GF|| (g_GR - g_GF)) / (1 + kappa^2)`` with
  ``g_GR = sum w_R r`` and ``g_GF = beta sum w_F f`` (Theorem 1 as quoted; ``beta`` is the code's
  weight on the forget side; the ``1 / (1 + kappa^2)`` step scaling is the official code's, from
  CAGrad). ``scaling = "unscaled"`` drops it (the step is then ``1 + kappa^2`` times longer).
- During unlearning the clients train the classifier's cross-entropy, as the official code does
  (``loss = "cross_entropy"``); ``loss = "l2u"`` trains the full L2U loss of training instead.
- Every round ends with the request's stopping rule and collapse guard (:mod:`.stopping`).

On a gossip graph (beyond the paper) node i applies the same rule to what it holds: its own and its
neighbours' updates (retain side, Metropolis-weighted), and the forgotten clients' updates, which
are flooded to every node along a spanning tree (``n - 1`` messages each, counted). The node then
mixes theta_V with its neighbours as in DSGD and steps along its direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .. import topology
from ..aggregate import Uploads, weighted_average
from ..config import bounded, choice
from ..registry import AGGREGATORS, METHODS
from ..tasks import masked_mean
from . import ForgetRequest, Outcome

if TYPE_CHECKING:
    from ..engine import Engine

NORM_EPS = 1e-4  # the official code's stabilizer inside square roots


def foul_direction(g_fl: torch.Tensor, retain: torch.Tensor, forget: torch.Tensor, gamma_r: torch.Tensor,
                   gamma_f: torch.Tensor, *, kappa: float, beta: float = 1.0, scaled: bool = True) -> torch.Tensor:
    """Theorem 1: ``g_FL + kappa ||g_FL|| / ||g_GR - g_GF|| (g_GR - g_GF)``, divided by
    ``1 + kappa^2`` when ``scaled`` (the official code's step, as in CAGrad).

    ``retain [R, d]`` and ``forget [F, d]`` are update vectors, ``gamma_r [R]`` and ``gamma_f [F]``
    their weights; ``g_GR = sum gamma_r r``, ``g_GF = beta sum gamma_f f``. If the conflict
    direction is zero, ``g_FL`` (scaled alike) is returned.

    >>> g = foul_direction(torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, -2.0]]),
    ...                    torch.tensor([1.0]), torch.tensor([1.0]), kappa=0.5, scaled=False)
    >>> g.tolist()
    [1.0, 0.5]
    """
    scale = 1.0 / (1.0 + kappa ** 2) if scaled else 1.0
    conflict = gamma_r @ retain - beta * (gamma_f @ forget) if len(forget) else gamma_r @ retain
    norm = torch.linalg.vector_norm(conflict)
    if float(norm) == 0.0:
        return g_fl * scale
    return (g_fl + kappa * torch.linalg.vector_norm(g_fl) / norm * conflict) * scale


def gamma_objective(z: torch.Tensor, retain: torch.Tensor, forget: torch.Tensor, *, kappa: float, beta: float) -> torch.Tensor:
    """The CAGrad-style dual minimized over logits ``z`` (see the module docstring)."""
    R = retain / retain.norm(dim=1).pow(2).add(NORM_EPS).sqrt().mean()
    F_ = forget / forget.norm(dim=1).pow(2).add(NORM_EPS).sqrt().mean() if len(forget) else forget
    G_r, G_f = R @ R.T, F_ @ F_.T
    b_r = G_r.mean(dim=1)
    b_f = G_f.mean(dim=1) if len(forget) else G_f.new_zeros(0)
    nr, nf = len(R), len(F_)
    grand = (nr * G_r.mean() + (nf * G_f.mean() if nf else 0.0)) / (nr + nf)
    c = kappa * torch.sqrt(grand + NORM_EPS)
    w = torch.softmax(z, dim=0)
    w_r, w_f = w[:nr], w[nr:]
    combined = w_r @ R - beta * (w_f @ F_) if nf else w_r @ R
    return w_r @ b_r - beta * (w_f @ b_f) + c * torch.sqrt(combined @ combined + NORM_EPS)


def solve_gamma(retain: torch.Tensor, forget: torch.Tensor, *, kappa: float, beta: float, steps: int,
                lr: float, momentum: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(gamma_r, gamma_f)`` (one joint softmax over all clients) from ``steps`` momentum-SGD
    steps on :func:`gamma_objective` from uniform weights, keeping the best iterate. Only the
    uploaded updates are used (``U`` numbers, ``U`` = clients, much fewer than parameters)."""
    retain, forget = retain.detach().to(torch.float64), forget.detach().to(torch.float64)
    z = torch.zeros(len(retain) + len(forget), dtype=torch.float64, device=retain.device, requires_grad=True)
    opt = torch.optim.SGD([z], lr=lr, momentum=momentum)
    best, best_z = float("inf"), z.detach().clone()
    for _ in range(steps + 1):
        opt.zero_grad()
        value = gamma_objective(z, retain, forget, kappa=kappa, beta=beta)
        if float(value.detach()) < best:
            best, best_z = float(value.detach()), z.detach().clone()
        value.backward()
        opt.step()
    w = torch.softmax(best_z, dim=0)
    return w[:len(retain)], w[len(retain):]


@dataclass(frozen=True)
class FOULOptions:
    """Keys of ``[unlearn.foul]`` (defaults as the official code, except ``rounds``, a budget the
    stopping rule may cut short)."""

    kappa: float = bounded(0.5, 0.0)
    beta: float = bounded(2.0, 0.0)
    rounds: int = bounded(10, 1)
    solver_steps: int = bounded(20, 0)
    solver_lr: float = bounded(25.0, 0.0)
    meta_lr: float = bounded(0.5, 0.0)
    params: str = choice("v", "v", "all")
    fl_clients: str = choice("all", "all", "retain")
    scaling: str = choice("official", "official", "unscaled")
    loss: str = choice("cross_entropy", "cross_entropy", "l2u")


def cross_entropy_loss(engine: "Engine"):
    """The classifier's masked mean cross-entropy ``loss(flat, batch)`` (FOUL's unlearning loss)."""
    task = engine.task

    def loss(flat, batch):
        ce = F.cross_entropy(task.logits(flat, batch["x"]), batch["y"], reduction="none")
        return masked_mean(ce, batch["mask"])
    return loss


@AGGREGATORS.register("foul", help="FOUL's server rule: FedAvg plus the retain-minus-forget conflict term")
@dataclass
class FOULAggregator:
    """FOUL's server rule as an :class:`~p2pforget.aggregate.Aggregator`: the hub's new model is
    ``global + meta_lr * g`` with ``g`` from :func:`foul_direction` on the uploads (``uploads.forget``
    marks the forget clients); ``mask`` restricts the step to some parameters (theta_V)."""

    kappa: float = 0.5
    beta: float = 2.0
    solver_steps: int = 20
    solver_lr: float = 25.0
    meta_lr: float = 0.5
    mask: torch.Tensor | None = None
    fl_clients: str = "all"
    scaled: bool = True

    def direction(self, updates: torch.Tensor, weights: np.ndarray, forget: np.ndarray) -> torch.Tensor:
        keep = torch.as_tensor(~forget, device=updates.device)
        retain, forgot = updates[keep], updates[~keep]
        if self.fl_clients == "all":
            g_fl = weighted_average(updates, weights)
        else:
            g_fl = weighted_average(retain, np.asarray(weights)[~forget])
        gamma_r, gamma_f = solve_gamma(retain, forgot, kappa=self.kappa, beta=self.beta, steps=self.solver_steps,
                                       lr=self.solver_lr)
        return foul_direction(g_fl, retain, forgot, gamma_r.to(updates.dtype), gamma_f.to(updates.dtype),
                              kappa=self.kappa, beta=self.beta, scaled=self.scaled)

    def aggregate(self, uploads: Uploads) -> torch.Tensor:
        g = self.direction(uploads.updates, uploads.weights, uploads.forget)
        if self.mask is not None:
            g = g * self.mask.to(g.dtype)
        return uploads.global_params + self.meta_lr * g


@METHODS.register("foul", options=FOULOptions, help="FOUL: unlearning rounds on theta_V with the gradient-conflict server rule")
class FOUL:
    """FOUL unlearning rounds (see the module docstring)."""

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: FOULOptions) -> Outcome:
        if options.params == "v":
            mask = engine.model.mask("V").to(engine.device)
        else:
            mask = torch.ones(engine.dim, dtype=torch.bool, device=engine.device)
        rule = FOULAggregator(kappa=options.kappa, beta=options.beta, solver_steps=options.solver_steps,
                              solver_lr=options.solver_lr, meta_lr=options.meta_lr, mask=mask,
                              fl_clients=options.fl_clients, scaled=options.scaling == "official")
        loss = cross_entropy_loss(engine) if options.loss == "cross_entropy" else None
        forget = np.zeros(engine.n_clients, dtype=bool)
        forget[request.clients] = True
        weights = engine.sample_counts.copy()  # before the exclusion: forget clients still train
        itemsize = torch.finfo(engine.dtype).bits // 8
        entries = int(mask.sum())
        comm = 0.0
        done = 0
        for r in range(options.rounds):
            key = 10_000_000 + engine.round * 1000 + r  # batches of unlearning rounds never repeat training's
            local = engine.compute.local_steps(engine.params, grad_mask=mask, key_round=key, loss=loss)
            updates = local - engine.params
            if engine.is_star:
                new, sent = self._star_round(engine, rule, updates, weights, forget)
            else:
                new, sent = self._gossip_round(engine, rule, updates, weights, forget, mask)
            engine.set_params(new)
            comm += sent * entries * itemsize
            done += 1
            if request.after_round(engine.params):
                break
        engine.exclude(samples=request.samples, removed=request.removed)
        return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=done)

    @staticmethod
    def _star_round(engine: "Engine", rule: FOULAggregator, updates: torch.Tensor, weights: np.ndarray,
                    forget: np.ndarray) -> tuple[torch.Tensor, int]:
        full = engine.transport.gather(updates)
        new = None
        if engine.transport.is_root:
            new = rule.aggregate(Uploads(global_params=engine.params[0], client_params=engine.params[0] + full,
                                         weights=weights, forget=forget, round=engine.round))
        new = engine.transport.broadcast(new, like=engine.params[0])
        # up from every client (the forget clients too: they still hold their data) and down, theta_V only
        return new.expand(engine.hi - engine.lo, -1), int(engine.members.sum()) + int(engine.has_data.sum())

    @staticmethod
    def _gossip_round(engine: "Engine", rule: FOULAggregator, updates: torch.Tensor, weights: np.ndarray,
                      forget: np.ndarray, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        W = engine.network.base_mixing
        ext, pos = engine.network.neighbour_rows(updates)
        ids = np.flatnonzero(forget)
        full = engine.transport.gather(updates)
        flood = engine.transport.broadcast(full[torch.as_tensor(ids)] if engine.transport.is_root else None,
                                           like=updates[:len(ids)])
        mixed = engine.network.mix(engine.params, W)
        out = torch.where(mask, mixed, engine.params)  # only theta_V is exchanged and mixed
        for r, i in enumerate(engine.local_ids):
            hood = [i, *engine.network.neighbours(i)]
            near = [j for j in hood if not forget[j]]
            if not near:
                continue
            retain = ext[torch.as_tensor(pos[near])]
            fl = hood if rule.fl_clients == "all" else near
            g_fl = weighted_average(ext[torch.as_tensor(pos[fl])], np.array([W[i, j] for j in fl]))
            gamma_r, gamma_f = solve_gamma(retain, flood, kappa=rule.kappa, beta=rule.beta, steps=rule.solver_steps,
                                           lr=rule.solver_lr)
            g = foul_direction(g_fl, retain, flood, gamma_r.to(retain.dtype), gamma_f.to(retain.dtype),
                               kappa=rule.kappa, beta=rule.beta, scaled=rule.scaled)
            out[r] = out[r] + rule.meta_lr * g * mask.to(g.dtype)
        edges = topology.message_count(W)
        tree = int(engine.members.sum()) - 1
        # one exchange of updates and one of models with the neighbours, plus the flood of forget updates
        return out, 2 * edges + len(ids) * tree
