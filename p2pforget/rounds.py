"""Round algorithms: what one training round does, registered in :data:`~p2pforget.registry.ROUNDS`.

A round algorithm is a function ``(engine, W) -> vectors`` that updates ``engine.params`` (through
:meth:`~p2pforget.Engine.set_params`) using the engine's public API, and returns how many
``d``-vectors every message carried (for the byte count). ``W`` is the round's mixing matrix.
Register your own with ``@ROUNDS.register("name")`` in a ``run.plugins`` module and choose it with
``train.algorithm``; an entry registered with ``hub=True`` runs on the star topology. A rule
keeps its own requirements with it: ``check=f`` (``f(cfg, star=...)`` raises ``ValueError`` for a
config it cannot run) and ``ready=f`` (``f(engine)`` once the engine is built, e.g. to warn).

Example
-------
>>> sorted(n for n in ROUNDS.names() if ROUNDS.entry(n).obj.__module__ == __name__)  # the built-ins
['choco', 'dsgd', 'gradient_tracking', 'push_sum', 'star']
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch

from . import compress, optim, seeding, topology
from .aggregate import Uploads
from .config import bounded, choice
from .registry import ROUNDS

if TYPE_CHECKING:
    from .engine import Engine


@ROUNDS.register("dsgd", help="adapt-then-combine decentralized SGD: x <- W (x - lr g)")
def dsgd(engine: "Engine", W: np.ndarray) -> int:
    """Adapt-then-combine DSGD: ``x <- W (x - lr * g)`` (Lian et al., NeurIPS 2017)."""
    engine.set_params(engine.network.mix(engine.compute.local_steps(engine.params), W), copy=False, keep_optimizer_state=True)
    return 1


def _tracking_config(cfg, *, star: bool) -> None:
    """Gradient tracking communicates after every step, with its own constant step size."""
    if cfg.train.local_steps != 1:
        raise ValueError("train.algorithm = 'gradient_tracking' communicates after every step; set train.local_steps = 1")
    if not star and not (optim.is_plain_sgd(cfg.train) and cfg.train.schedule == "constant" and not cfg.train.warmup_rounds):
        raise ValueError("train.algorithm = 'gradient_tracking' takes its own constant step train.lr: use "
                         "train.optimizer = \"sgd\" with momentum = 0 and schedule = \"constant\", or train.algorithm = \"dsgd\"")


def _tracking_spectrum(engine: "Engine") -> None:
    """Gradient tracking stalls when the mixing matrix has an eigenvalue near -1 (e.g. -0.6 on a
    torus); lazy mixing moves the spectrum into [0, 1]."""
    if engine.config.topology.lazy or engine.n_clients > 2000:
        return
    dense = engine.network.base_mixing.toarray()
    lowest = float(np.linalg.eigvalsh((dense + dense.T) / 2).min())
    if lowest < -0.5:
        warnings.warn(f"the mixing matrix has eigenvalue {lowest:.2f}: gradient tracking may stall or diverge; "
                      "set topology.lazy = true (W <- (W + I)/2) or lower train.lr", stacklevel=3)


@ROUNDS.register("gradient_tracking", check=_tracking_config, ready=_tracking_spectrum,
                 help="DIGing gradient tracking: exact convergence with a constant step")
def gradient_tracking(engine: "Engine", W: np.ndarray) -> int:
    """DIGing gradient tracking (Nedic, Olshevsky & Shi, SIAM J. Optim. 2017):
    ``x <- W x - lr y``; ``y <- W y + g(x_new) - g(x)``; converges to the exact optimum with a constant step."""
    state = engine.optimizer_state
    if "tracker" not in state:
        state["last_grad"] = _gradients(engine, engine.params, engine.batches.minibatch((0, 0)))
        state["tracker"] = state["last_grad"].clone()
    d = engine.dim
    mixed = engine.network.mix(torch.cat([engine.params, state["tracker"]], dim=1), W)
    engine.set_params(mixed[:, :d] - engine.config.train.lr * state["tracker"], keep_optimizer_state=True)
    g = _gradients(engine, engine.params, engine.batches.minibatch((engine.round + 1, 0)))
    state["tracker"] = mixed[:, d:] + g - state["last_grad"]
    state["last_grad"] = g
    return 2


def _gradients(engine: "Engine", params: torch.Tensor, batch) -> torch.Tensor:
    """The objective's gradient of every local row, computed for the clients that hold data only."""
    g, _ = engine.compute.training_gradients(params, batch)
    if engine.task.weight_decay:
        g = g + engine.task.decay(params.detach(), engine.active)[1]
    return g


@ROUNDS.register("star", hub=True, help="centralized FL: clients upload, the hub's aggregator (FedAvg) answers")
def star(engine: "Engine", W: np.ndarray) -> int:
    """The star's two-phase round: local steps, upload to the hub, the hub's aggregator computes the
    global model, the hub broadcasts it back."""
    local = engine.compute.local_steps(engine.params)
    full = engine.transport.gather(local)
    new = None
    if engine.transport.is_root:
        new = engine.aggregator.aggregate(Uploads(global_params=engine.params[0], client_params=full,
                                                  weights=engine.sample_counts, round=engine.round))
    new = engine.transport.broadcast(new, like=engine.params[0])
    # every client holds the one global model (and keeps its own local optimizer state)
    engine.set_params(new.expand(engine.hi - engine.lo, -1), copy=False, keep_optimizer_state=True)
    return 1



@dataclass(frozen=True)
class ChocoOptions:
    """Keys of ``[train.choco]``: the compressor (``topk`` keeps ``compression_ratio`` of the
    entries, ``qsgd`` quantizes to ``quantization_levels`` levels) and the consensus step gamma."""

    compression: str = choice("topk", "topk", "qsgd")
    compression_ratio: float = bounded(0.1, 0.0, 1.0, lo_open=True)
    quantization_levels: int = bounded(16, 1)
    consensus_step: float = bounded(0.5, 0.0, 1.0, lo_open=True)


@ROUNDS.register("choco", options=ChocoOptions,
                 help="CHOCO-SGD: gossip of compressed differences (train.choco.compression: topk | qsgd)")
def choco(engine: "Engine", W: np.ndarray) -> float:
    """CHOCO-SGD (Koloskova, Stich & Jaggi, ICML 2019, Algorithm 1): after the local steps each node
    sends ``q_i = Q(x_i - xhat_i)``; every node updates the public copies ``xhat_j += q_j`` of itself
    and its neighbours and moves ``x_i += gamma sum_j W_ij (xhat_j - xhat_i)``. ``Q`` is top-k
    (``train.choco.compression_ratio`` of the entries) or QSGD quantization
    (``train.choco.quantization_levels``); ``gamma`` is ``train.choco.consensus_step``. Returns the
    vectors-equivalent of the bytes sent."""
    cfg = engine.config.train.options("choco")
    state = engine.optimizer_state
    half = engine.compute.local_steps(engine.params)
    if "choco/public" not in state:
        state["choco/public"] = torch.zeros_like(half)
    public = state["choco/public"]
    diff = half - public
    d, itemsize = engine.dim, torch.finfo(engine.dtype).bits // 8
    if cfg.compression == "topk":
        k = max(1, int(round(cfg.compression_ratio * d)))
        q = compress.top_k(diff, k)
        sent = compress.top_k_bytes(k, itemsize)
    else:
        keys = seeding.uniform_keys(engine.seed, np.arange(engine.lo, engine.hi), purpose="choco/quantize",
                                    counters=(engine.round,), width=d)
        u = torch.as_tensor((keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53, dtype=engine.dtype, device=engine.device)
        q = compress.quantize(diff, cfg.quantization_levels, u)
        sent = compress.quantize_bytes(d, cfg.quantization_levels, itemsize)
    public = public + q
    new = half + cfg.consensus_step * (engine.network.mix(public, W) - public)
    engine.set_params(new, copy=False, keep_optimizer_state=True)
    state["choco/public"] = public
    return sent / (d * itemsize)


@ROUNDS.register("push_sum", help="push-sum (subgradient-push) over the graph's edges oriented one way: directed, time-varying",
                 mixing=topology.push_matrix)
def push_sum(engine: "Engine", W: np.ndarray) -> float:
    """Subgradient-push (Nedic & Olshevsky, IEEE TAC 2015) on the directed graph of
    :func:`~p2pforget.topology.push_matrix` (the round's edges, so edge dropout makes it
    time-varying): every node keeps ``x_i`` and a weight ``y_i``, steps ``x_i <- x_i - lr g_i(z_i)``
    at its de-biased model ``z_i = x_i / y_i`` (the engine's parameters), then pushes equal shares
    of ``(x_i, y_i)`` to itself and its out-neighbours. The column-stochastic mixing needs no
    doubly stochastic weights. Returns the vectors-equivalent of the bytes sent (one directed
    message per edge, ``d + 1`` numbers)."""
    A = engine.network.round_mixing(W)
    state = engine.optimizer_state
    if "pushsum/x" not in state:
        ids = np.flatnonzero(engine.members)
        directed = nx.DiGraph()
        directed.add_nodes_from(ids.tolist())
        directed.add_edges_from((int(j), int(i)) for i, j in zip(*A.nonzero()) if i != j)
        if not nx.is_strongly_connected(directed):
            raise ValueError("train.algorithm = 'push_sum' orients each edge u -> v with (v - u) mod n <= n/2, and this "
                             "graph's orientation is not strongly connected (some node cannot reach another); use a ring, "
                             "a torus or a denser graph")
        state["pushsum/x"] = engine.params.clone()
        state["pushsum/y"] = torch.ones(engine.params.shape[0], 1, dtype=engine.dtype, device=engine.device)
    z = engine.params
    x = state["pushsum/x"] + (engine.compute.local_steps(z) - z)
    both = engine.network.mix(torch.cat([x, state["pushsum/y"]], dim=1), A)
    d = engine.dim
    state["pushsum/x"], state["pushsum/y"] = both[:, :d], both[:, d:]
    engine.set_params(both[:, :d] / both[:, d:], copy=False, keep_optimizer_state=True)
    return (d + 1) / d * topology.message_count(A) / max(topology.message_count(W), 1)
