"""The round loop: local steps -> exchange -> mix -> metrics.

The engine holds this process's clients as one stacked ``[n_local, d]`` parameter tensor and
evaluates all of them at once with ``torch.func.vmap``. It knows nothing of MPI or files: a
:class:`~p2pforget.transport.Transport` moves rows between processes, and
:mod:`p2pforget.experiment` writes run files.

Example
-------
>>> from p2pforget import config
>>> cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 4}, "data": {"n_samples_per_client": 10}})
>>> engine = Engine(config=cfg)
>>> engine.train(2, progress=False)
>>> len(engine.metrics["test_acc_mean"])
2
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap
from tqdm import tqdm

from . import aggregate, data as datasets, models, seeding, topology
from .config import Config
from . import transport as transport_mod
from .transport import Transport

VMAP_WIDTH = 8
"""Clients are evaluated in vmap batches of exactly ``min(VMAP_WIDTH, n_clients)`` rows (the last
batch padded). Fixed batch shapes keep each client's arithmetic independent of how many
clients its process hosts, which keeps results bit-identical at any number of ranks."""

METRICS = ("loss_mean", "test_acc_mean", "test_acc_min", "consensus_distance", "bytes_sent")


def fixed_width_vmap(fn: Callable, width: int, *args: torch.Tensor):
    """``vmap(fn)(*args)`` computed in batches of exactly ``width`` rows (the last one padded)."""
    n = args[0].shape[0]
    outs = []
    for start in range(0, n, width):
        chunk = [a[start:start + width] for a in args]
        m = chunk[0].shape[0]
        if m < width:
            chunk = [torch.cat([a, a[-1:].expand(width - m, *a.shape[1:])]) for a in chunk]
        out = vmap(fn)(*chunk)
        outs.append(tuple(o[:m] for o in out) if isinstance(out, tuple) else out[:m])
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


class Engine:
    """Decentralized training of ``n_clients`` models on a gossip graph (or a star = FedAvg).

    Parameters
    ----------
    config : Config
        The experiment.
    transport : Transport, optional
        Where this process's clients sit; defaults to all clients in-process.
    aggregator : Aggregator, optional
        The star hub's rule (default :class:`~p2pforget.aggregate.FedAvg`).
    """

    def __init__(self, *, config: Config, transport: Transport | None = None,
                 aggregator: aggregate.Aggregator | None = None) -> None:
        cfg = config
        self.config = cfg
        n = cfg.topology.n_clients
        self.n_clients = n
        self.transport = transport or transport_mod.make(cfg.run.transport, n_clients=n)
        self.lo, self.hi = self.transport.block
        self.dtype = getattr(torch, cfg.train.dtype)
        self.seed = cfg.run.seed
        self.aggregator = aggregator or aggregate.FedAvg()
        if cfg.train.algorithm == "gradient_tracking" and cfg.train.local_steps != 1:
            raise ValueError("train.algorithm = 'gradient_tracking' communicates after every step; set train.local_steps = 1")

        t = cfg.topology
        self.graph = topology.build_graph(t.kind, n, seed=self.seed, p=t.p, k=t.k, beta=t.beta, degree=t.degree, path=t.path)
        self.is_star = t.kind == "star"
        # A star always runs FedAvg rounds, whatever train.algorithm says: the hub averages exactly,
        # so there is no consensus error for gradient tracking to correct.

        self.data = datasets.build(cfg.data, n_clients=n, seed=self.seed)
        self.x = torch.as_tensor(self.data.x[self.lo:self.hi], dtype=self.dtype)
        self.y = torch.as_tensor(self.data.y[self.lo:self.hi])
        # Which samples each client still trains on, and which nodes are still in the graph;
        # forgetting (exclude) changes both.
        self.retained = np.ones(self.data.y.shape, dtype=bool)
        self.members = np.ones(n, dtype=bool)
        self.x_test = torch.as_tensor(self.data.x_test, dtype=self.dtype)
        self.y_test = torch.as_tensor(self.data.y_test)

        self.model = models.FlatModel(models.build(cfg.model, input_shape=self.data.input_shape, n_classes=self.data.n_classes))
        self.dim = self.model.dim
        self.width = min(VMAP_WIDTH, n)
        self._grad_fn = grad_and_value(self._objective)

        self._update_topology()

        self.init_params = self._init_params()
        self.params = self.init_params.clone()
        self.tracker: torch.Tensor | None = None     # gradient tracking: y_i
        self.last_grad: torch.Tensor | None = None   # gradient tracking: grad at the current x_i
        self.ledger = torch.zeros(self.hi - self.lo, n, dtype=torch.float64)  # row i: C_i (see ledger.py)
        self.round = 0
        self.metrics: dict[str, list[float]] = {name: [] for name in METRICS}

    @property
    def sample_counts(self) -> np.ndarray:
        """Samples each client trains on (0 for a client that has been forgotten entirely)."""
        return self.retained.sum(axis=1).astype(np.float64) * self.members

    @property
    def has_data(self) -> np.ndarray:
        return self.sample_counts > 0

    # ------------------------------------------------------------------ setup
    def _static_mixing(self) -> np.ndarray:
        if self.is_star:
            return aggregate.fedavg_matrix(self.sample_counts)
        t = self.config.topology
        if t.mixing == "file" and self.members.all():
            return topology.load_mixing(t.mixing_path, self.graph)
        # After a node leaves, a user matrix no longer fits the graph: Metropolis weights are recomputed.
        W = topology.mixing_matrix(self.graph, "metropolis" if t.mixing == "file" else t.mixing)
        topology.validate_mixing(W, self.graph)
        return W

    def _update_topology(self) -> None:
        self.base_mixing = self._static_mixing()
        neighbours = {i: [] if self.is_star else sorted(self.graph.neighbors(i)) for i in range(self.n_clients)}
        self.halo = self.transport.neighbourhood(neighbours)
        ext_ids = list(range(self.lo, self.hi)) + list(self.halo.ids)
        self._ext_pos = np.full(self.n_clients, -1, dtype=np.int64)
        self._ext_pos[ext_ids] = np.arange(len(ext_ids))
        self._rows_of: tuple = (None, None, None)
        self._local_mask = torch.as_tensor(self.retained[self.lo:self.hi], dtype=self.dtype)
        self._local_active = torch.as_tensor(self.has_data[self.lo:self.hi], dtype=self.dtype)

    def exclude(self, *, samples: dict[int, np.ndarray] | None = None, removed: Iterable[int] = ()) -> None:
        """Take data out of training, and nodes out of the graph, for every later round.

        ``samples`` maps a client id to the indices of its samples to drop (all of them: the
        client keeps no data and, if it stays in the graph, only relays). ``removed`` nodes leave
        the graph: their edges are cut and mixing weights recomputed; if the remaining graph is
        disconnected this raises :class:`~p2pforget.topology.TopologyError`.
        """
        for j, idx in (samples or {}).items():
            self.retained[j, np.asarray(idx, dtype=np.int64)] = False
        removed = sorted(set(removed))
        if removed:
            self.members[removed] = False
            self.graph.remove_edges_from([e for j in removed for e in list(self.graph.edges(j))])
            kept = [v for v in self.graph.nodes if v >= self.n_clients or self.members[v]]
            topology.check_connected(self.graph.subgraph(kept),
                                     hint=f"removing node(s) {removed} splits the graph; use unlearn.mode = \"keep_relay\"")
        self._update_topology()

    def _init_params(self) -> torch.Tensor:
        if self.config.train.same_init or self.is_star:
            v = self.model.init_vector(seeding.int_seed(self.seed, purpose="init"), self.dtype)
            return v.expand(self.hi - self.lo, -1).clone()
        return torch.stack([self.model.init_vector(seeding.int_seed(self.seed, client=i, purpose="init"), self.dtype)
                            for i in range(self.lo, self.hi)])

    # ------------------------------------------------------------------ math
    def _objective(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                   active: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the samples with ``mask`` 1, plus ``weight_decay/2 * ||flat||^2``;
        zero for a client without data (``active`` 0), which only relays."""
        wd = self.config.train.weight_decay
        ce = F.cross_entropy(self.model.forward(flat, x), y, reduction="none")
        return (mask * ce).sum() / mask.sum().clamp(min=1) + active * 0.5 * wd * (flat * flat).sum()

    def gradients(self, params: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client gradients and objective values of stacked ``params`` on a stacked ``batch``
        ``(x, y, mask)`` (see :meth:`full_batch`)."""
        return fixed_width_vmap(self._grad_fn, self.width, params, *batch, self._local_active)

    def full_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every sample of this process's clients, with the mask of those still trained on."""
        return self.x, self.y, self._local_mask

    def _batch(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, m = self.config.train.batch_size, self.x.shape[1]
        if b == 0 or b >= m:
            return self.full_batch()
        idx = np.zeros((self.hi - self.lo, b), dtype=np.int64)
        mask = np.zeros((self.hi - self.lo, b))
        for r, i in enumerate(range(self.lo, self.hi)):
            pool = np.flatnonzero(self.retained[i])
            take = min(b, len(pool))
            idx[r, :take] = seeding.rng(self.seed, client=i, purpose="batch", counters=key).choice(pool, take, replace=False)
            mask[r, :take] = 1.0
        idx = torch.as_tensor(idx)
        rows = torch.arange(self.hi - self.lo)[:, None]
        return self.x[rows, idx], self.y[rows, idx], torch.as_tensor(mask, dtype=self.dtype)

    def mixing_at(self, round: int) -> np.ndarray:
        """The (n, n) mixing matrix used in ``round`` (edge dropout makes it time-varying)."""
        q = self.config.topology.dropout
        if q == 0 or self.is_star:
            return self.base_mixing
        g = topology.drop_edges(self.graph, q, seed=self.seed, round=round)
        return topology.mixing_matrix(g, "metropolis" if self.config.topology.mixing == "file" else self.config.topology.mixing)

    def _mix(self, rows: torch.Tensor, W: np.ndarray) -> torch.Tensor:
        ext = torch.cat([rows, self.halo.exchange(rows)])
        if self._rows_of[0] is not W:  # a static graph mixes with the same matrix object every round
            mr = aggregate.MixingRows.from_matrix(W, lo=self.lo, hi=self.hi)
            self._rows_of = (W, torch.as_tensor(self._ext_pos[mr.idx]), torch.as_tensor(mr.weight))
        _, idx, weight = self._rows_of
        return aggregate.gossip_mix(ext, idx, weight)

    def _bytes(self, W: np.ndarray, vectors: int) -> float:
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.is_star:
            messages = 2 * self.n_clients
        else:
            messages = int(np.count_nonzero(W) - np.count_nonzero(np.diag(W)))
        return float(messages * vectors * self.dim * itemsize)

    # ------------------------------------------------------------------ rounds
    def step(self) -> None:
        """One round of the configured algorithm, then the round's metrics."""
        W = self.mixing_at(self.round)
        if self.is_star:
            self._fedavg_round()
            sent = self._bytes(W, 1)
        elif self.config.train.algorithm == "gradient_tracking":
            self._tracking_round(W)
            sent = self._bytes(W, 2)
        else:
            self._dsgd_round(W)
            sent = self._bytes(W, 1)
        self._update_ledger(W)
        self.round += 1
        self._record(sent)

    def _update_ledger(self, W: np.ndarray) -> None:
        """``C <- W (C + I)`` with this round's mixing matrix (on a star, FedAvg's)."""
        if self.is_star:
            # FedAvg's matrix is 1 w^T and every ledger row equals, so W (C + I) = C + 1 w^T.
            self.ledger = self.ledger + torch.as_tensor(W[self.lo:self.hi])
            return
        eye = torch.zeros_like(self.ledger)
        eye[torch.arange(self.hi - self.lo), torch.arange(self.lo, self.hi)] = 1.0
        self.ledger = self._mix(self.ledger + eye, W)

    def _local_steps(self, params: torch.Tensor) -> torch.Tensor:
        lr = self.config.train.lr
        for s in range(self.config.train.local_steps):
            g, _ = self.gradients(params, self._batch((self.round, s)))
            params = params - lr * g
        return params

    def _dsgd_round(self, W: np.ndarray) -> None:
        """Adapt-then-combine DSGD: ``x <- W (x - lr * g)`` (Lian et al., NeurIPS 2017)."""
        self.params = self._mix(self._local_steps(self.params), W)

    def _tracking_round(self, W: np.ndarray) -> None:
        """DIGing gradient tracking (Nedic, Olshevsky & Shi, SIAM J. Optim. 2017):
        ``x <- W x - lr y``; ``y <- W y + g(x_new) - g(x)``; converges to the exact optimum with a constant step."""
        if self.tracker is None:
            self.last_grad, _ = self.gradients(self.params, self._batch((0, 0)))
            self.tracker = self.last_grad.clone()
        d = self.dim
        mixed = self._mix(torch.cat([self.params, self.tracker], dim=1), W)
        self.params = mixed[:, :d] - self.config.train.lr * self.tracker
        g, _ = self.gradients(self.params, self._batch((self.round + 1, 0)))
        self.tracker = mixed[:, d:] + g - self.last_grad
        self.last_grad = g

    def _fedavg_round(self) -> None:
        local = self._local_steps(self.params)
        full = self.transport.gather(local)
        new = None
        if self.transport.is_root:
            new = self.aggregator.aggregate(global_params=self.params[0], client_params=full, weights=self.sample_counts)
        new = self.transport.broadcast(new, like=self.params[0])
        self.params = new.expand(self.hi - self.lo, -1).clone()

    def train(self, rounds: int, *, progress: bool = True, callback: Callable[["Engine"], None] | None = None,
              desc: str = "train") -> None:
        """Run ``rounds`` more rounds; ``callback(engine)`` is called after each one."""
        bar = tqdm(total=rounds, desc=desc, disable=not (progress and self.transport.is_root), leave=False)
        for _ in range(rounds):
            self.step()
            bar.update()
            if self.transport.is_root:
                bar.set_postfix(loss=f"{self.metrics['loss_mean'][-1]:.4f}", acc=f"{self.metrics['test_acc_mean'][-1]:.3f}")
            if callback is not None:
                callback(self)
        bar.close()

    # ------------------------------------------------------------------ metrics
    def evaluate(self, params: torch.Tensor | None = None) -> dict[str, np.ndarray] | None:
        """Per-client train objective and test accuracy of stacked ``params`` (default: current),
        as full (n_clients,) arrays at the root (``None`` elsewhere)."""
        params = self.params if params is None else params
        n_loc = params.shape[0]
        xt = self.x_test.expand(n_loc, *self.x_test.shape)
        with torch.no_grad():
            loss = fixed_width_vmap(self._objective, self.width, params.detach(), *self.full_batch(), self._local_active)
            logits = fixed_width_vmap(self.model.forward, self.width, params.detach(), xt)
        acc = (logits.argmax(-1) == self.y_test).to(self.dtype).mean(dim=1)
        full = self.transport.gather(torch.stack([loss, acc], dim=1))
        if full is None:
            return None
        return {"loss": full[:, 0].numpy(), "test_acc": full[:, 1].numpy()}

    def gather_params(self, params: torch.Tensor | None = None) -> np.ndarray | None:
        """All clients' parameters (n_clients, d) at the root, ``None`` elsewhere."""
        full = self.transport.gather(self.params if params is None else params)
        return None if full is None else full.detach().numpy().copy()

    def _record(self, sent: float) -> None:
        per_client = self.evaluate()
        full = self.gather_params()
        if per_client is None:
            return
        m = self.members
        self.metrics["loss_mean"].append(float(per_client["loss"][self.has_data].mean()))
        self.metrics["test_acc_mean"].append(float(per_client["test_acc"][m].mean()))
        self.metrics["test_acc_min"].append(float(per_client["test_acc"][m].min()))
        self.metrics["consensus_distance"].append(consensus_distance(full[m]))
        self.metrics["bytes_sent"].append(sent)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray] | None:
        """Everything needed to continue training bit-identically (at the root; ``None`` elsewhere)."""
        out = {"round": np.array(self.round), "params": self.gather_params(), "ledger": self.gather_params(self.ledger)}
        if self.tracker is not None:
            out["tracker"] = self.gather_params(self.tracker)
            out["last_grad"] = self.gather_params(self.last_grad)
        if not self.transport.is_root:
            return None
        return out | {f"metrics/{k}": np.asarray(v, dtype=np.float64) for k, v in self.metrics.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (every process passes the same full dict)."""
        rows = slice(self.lo, self.hi)
        self.round = int(state["round"])
        self.params = torch.as_tensor(state["params"][rows], dtype=self.dtype).clone()
        self.ledger = torch.as_tensor(state["ledger"][rows], dtype=torch.float64).clone()
        if "tracker" in state:
            self.tracker = torch.as_tensor(state["tracker"][rows], dtype=self.dtype).clone()
            self.last_grad = torch.as_tensor(state["last_grad"][rows], dtype=self.dtype).clone()
        self.metrics = {k: [float(v) for v in state.get(f"metrics/{k}", [])] for k in METRICS}

    def forget(self, *, clients=(), samples: dict | None = None, reference: bool = True, progress: bool = True,
               **options):
        """Forget whole ``clients`` and/or ``samples`` (client id -> sample indices), with
        ``config.unlearn`` updated by ``options`` (e.g. ``epsilon=0.5, curvature="ggn"``); with
        ``reference`` also train Retrain. Returns a :class:`~p2pforget.unlearn.ForgetResult`
        (see :func:`p2pforget.unlearn.forget`)."""
        from . import unlearn
        from .config import replace

        opts = replace(self.config, unlearn=options).unlearn
        return unlearn.forget(self, clients=clients, samples=samples, options=opts, reference=reference, progress=progress)

    def objective_weights(self) -> np.ndarray:
        """Weight ``a_k`` of each client's objective in what training minimizes: 1 on a gossip graph
        (``sum_k f_k``); on a star, FedAvg's sample-count weights scaled so equal clients weigh 1."""
        if self.is_star:
            return self.sample_counts / self.data.y.shape[1]
        return self.has_data.astype(np.float64)

    def edges(self) -> np.ndarray:
        """The graph's edges as an (E, 2) array with ``u < v``."""
        return np.array(sorted(tuple(sorted(e)) for e in self.graph.edges), dtype=np.int64).reshape(-1, 2)


def consensus_distance(params: np.ndarray) -> float:
    """``mean_i ||x_i - mean_j x_j||`` over the rows of ``params``."""
    return float(np.linalg.norm(params - params.mean(axis=0), axis=1).mean())
