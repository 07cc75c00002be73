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

import time
import warnings
from typing import Callable, Iterable

import numpy as np
import torch
from torch.func import grad_and_value
from tqdm import tqdm

from . import aggregate, data as datasets, models, seeding, topology
from .config import Config
from . import transport as transport_mod
from .registry import AGGREGATORS, ROUNDS
from .tasks import Batch, Task, fixed_width_vmap
from .transport import Transport

VMAP_WIDTH = 8
"""Clients are evaluated in vmap batches of exactly ``min(VMAP_WIDTH, n_clients)`` rows (the last
batch padded). Fixed batch shapes keep each client's arithmetic independent of how many
clients its process hosts, which keeps results bit-identical at any number of ranks."""

METRICS = ("loss_mean", "test_acc_mean", "test_acc_min", "consensus_distance", "bytes_sent")


class DivergenceError(ValueError):
    """Training produced non-finite parameters or losses."""


class Engine:
    """Decentralized training of ``n_clients`` models on a gossip graph (or a star = FedAvg).

    Methods (unlearning, baselines, user plug-ins) use only the public API below: the task and
    its objective, :meth:`batch`/:meth:`full_batch`, :meth:`gradients`, :meth:`local_steps`,
    :meth:`mix`, :meth:`network_sum`, :meth:`set_params`, :attr:`optimizer_state`,
    :meth:`exclude`, :meth:`evaluate` and the transport.

    Parameters
    ----------
    config : Config
        The experiment.
    transport : Transport, optional
        Where this process's clients sit; defaults to all clients in-process.
    aggregator : Aggregator, optional
        The star hub's rule (default: the one registered as ``train.aggregator``, FedAvg).
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
        self.aggregator = aggregator or AGGREGATORS.get(cfg.train.aggregator)()

        t = cfg.topology
        self.graph = topology.build_graph(t.kind, n, seed=self.seed, p=t.p, k=t.k, beta=t.beta, degree=t.degree, path=t.path)
        self.is_star = t.kind == "star"
        # A star always runs the two-phase (FedAvg) round, whatever train.algorithm says: the hub
        # averages exactly, so there is no consensus error for gradient tracking to correct.
        self.round_name = "star" if self.is_star else cfg.train.algorithm
        self._round_fn = ROUNDS.get(self.round_name)
        if not self.is_star and ROUNDS.entry(self.round_name).meta.get("hub"):
            raise ValueError(f"train.algorithm = {self.round_name!r} needs a hub: use topology.kind = \"star\"")
        if cfg.train.algorithm == "gradient_tracking" and cfg.train.local_steps != 1:
            raise ValueError("train.algorithm = 'gradient_tracking' communicates after every step; set train.local_steps = 1")

        self.data = datasets.build(cfg.data, n_clients=n, seed=self.seed)
        self.x = torch.as_tensor(self.data.x[self.lo:self.hi], dtype=self.dtype)
        self.y = torch.as_tensor(self.data.y[self.lo:self.hi])
        # Which samples each client still trains on, and which nodes are still in the graph;
        # forgetting (exclude) changes both.
        self.retained = self.data.valid.copy()
        self.members = np.ones(n, dtype=bool)
        self.x_test = torch.as_tensor(self.data.x_test, dtype=self.dtype)
        self.y_test = torch.as_tensor(self.data.y_test)

        self.model = models.FlatModel(models.build(cfg.model, input_shape=self.data.input_shape, n_classes=self.data.n_classes))
        self.task = Task(model=self.model, weight_decay=cfg.train.weight_decay)
        self.dim = self.model.dim
        self.width = min(VMAP_WIDTH, n)
        self._grad_fn = grad_and_value(self.task.objective)

        self._update_topology()
        self._warn_if_slow_mixing()

        self.init_params = self._init_params()
        self.params = self.init_params.clone()
        self.optimizer_state: dict[str, torch.Tensor] = {}  # e.g. gradient tracking's tracker / last_grad
        self.ledger = torch.zeros(self.hi - self.lo, n, dtype=torch.float64)  # row i: C_i (see ledger.py)
        self.round = 0
        self.metrics: dict[str, list[float]] = {name: [] for name in METRICS}
        self.eval_seconds = 0.0  # spent on the per-round metrics: simulator bookkeeping, not training

    @property
    def sample_counts(self) -> np.ndarray:
        """Samples each client trains on (0 for a client that has been forgotten entirely)."""
        return self.retained.sum(axis=1).astype(np.float64) * self.members

    @property
    def has_data(self) -> np.ndarray:
        return self.sample_counts > 0

    @property
    def active(self) -> torch.Tensor:
        """``[n_local]``: 1 for local clients that hold data (their objective has weight decay), 0 for relays."""
        return self._local_active

    @property
    def local_ids(self) -> range:
        return range(self.lo, self.hi)

    # ------------------------------------------------------------------ setup
    def _static_mixing(self) -> np.ndarray:
        if self.is_star:
            return aggregate.fedavg_matrix(self.sample_counts)
        t = self.config.topology
        if t.mixing == "file" and self.members.all():
            W = topology.load_mixing(t.mixing_path, self.graph)
        else:
            # After a node leaves, a user matrix no longer fits the graph: Metropolis weights are recomputed.
            W = topology.mixing_matrix(self.graph, "metropolis" if t.mixing == "file" else t.mixing)
            topology.validate_mixing(W, self.graph)
        return topology.lazy(W) if t.lazy else W

    def _warn_if_slow_mixing(self) -> None:
        """Gradient tracking stalls when the mixing matrix has an eigenvalue near -1 (e.g. -0.6 on a
        torus); lazy mixing moves the spectrum into [0, 1]."""
        if self.is_star or self.config.topology.lazy or self.round_name != "gradient_tracking" or self.n_clients > 2000:
            return
        lowest = float(np.linalg.eigvalsh((self.base_mixing + self.base_mixing.T) / 2).min())
        if lowest < -0.5:
            warnings.warn(f"the mixing matrix has eigenvalue {lowest:.2f}: gradient tracking may stall or diverge; "
                          "set topology.lazy = true (W <- (W + I)/2) or lower train.lr", stacklevel=3)

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

    # ------------------------------------------------------------------ parameters and state
    def set_params(self, rows: torch.Tensor, *, keep_optimizer_state: bool = False) -> None:
        """Replace this process's stacked parameters; the optimizer state (gradient tracking's
        tracker) restarts from them unless ``keep_optimizer_state``."""
        self.params = rows.detach().to(self.dtype).clone()
        if not keep_optimizer_state:
            self.optimizer_state = {}

    # ------------------------------------------------------------------ math
    def objective(self, flat: torch.Tensor, batch: Batch, active: torch.Tensor) -> torch.Tensor:
        """One client's objective (the task's loss plus weight decay); see :class:`~p2pforget.tasks.Task`."""
        return self.task.objective(flat, batch, active)

    def gradients(self, params: torch.Tensor, batch: Batch, *, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client gradients and objective values of stacked ``params`` on a stacked ``batch``
        (see :meth:`full_batch`). With a boolean ``mask`` (``[d]``, whole parameter tensors, e.g.
        ``model.mask("V")``) only those entries are differentiated (the rest of the gradient is 0),
        and back-propagation stops at the layers that do not need it."""
        if mask is None:
            return fixed_width_vmap(self._grad_fn, self.width, params, batch, self._local_active)
        idx = torch.nonzero(mask).squeeze(1)

        def partial(sub, frozen, b, active):
            return self.task.objective(self.model.compose(frozen, sub, mask), b, active)

        g_sub, value = fixed_width_vmap(grad_and_value(partial), self.width, params[:, idx], params.detach(), batch,
                                        self._local_active)
        g = torch.zeros_like(params)
        g[:, idx] = g_sub
        return g, value

    def per_client(self, fn: Callable, *args) -> torch.Tensor:
        """``fn(*row_args)`` for every local client, vmapped in the engine's fixed-width chunks."""
        return fixed_width_vmap(fn, self.width, *args)

    def full_batch(self) -> Batch:
        """Every sample of this process's clients, with the mask of those still trained on."""
        return {"x": self.x, "y": self.y, "mask": self._local_mask}

    def batch(self, key: tuple[int, int]) -> Batch:
        """The minibatch of every local client for ``key = (round, step)`` (``train.batch_size``;
        0 = full batch). Sampled from streams keyed by client id, so any rank count draws the same."""
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
        return {"x": self.x[rows, idx], "y": self.y[rows, idx], "mask": torch.as_tensor(mask, dtype=self.dtype)}

    def local_steps(self, params: torch.Tensor, *, grad_mask: torch.Tensor | None = None,
                    key_round: int | None = None) -> torch.Tensor:
        """``train.local_steps`` SGD steps (``train.lr``) of every local client from ``params``.

        ``grad_mask`` (boolean ``[d]``) trains only those parameters (the others are frozen and not
        differentiated); batches are keyed by ``(key_round, step)`` (default: the current round).
        """
        lr = self.config.train.lr
        key_round = self.round if key_round is None else key_round
        for s in range(self.config.train.local_steps):
            g, _ = self.gradients(params, self.batch((key_round, s)), mask=grad_mask)
            params = params - lr * g
        return params

    def mixing_at(self, round: int) -> np.ndarray:
        """The (n, n) mixing matrix used in ``round`` (edge dropout makes it time-varying)."""
        t = self.config.topology
        if t.dropout == 0 or self.is_star:
            return self.base_mixing
        g = topology.drop_edges(self.graph, t.dropout, seed=self.seed, round=round)
        W = topology.mixing_matrix(g, "metropolis" if t.mixing == "file" else t.mixing)
        return topology.lazy(W) if t.lazy else W

    def mix(self, rows: torch.Tensor, W: np.ndarray | None = None) -> torch.Tensor:
        """One gossip step ``x_i <- sum_j W_ij x_j`` of stacked local ``rows`` (default ``W``: the
        current static mixing matrix); neighbours' rows come through the transport."""
        W = self.base_mixing if W is None else W
        ext = torch.cat([rows, self.halo.exchange(rows)])
        if self._rows_of[0] is not W:  # a static graph mixes with the same matrix object every round
            mr = aggregate.MixingRows.from_matrix(W, lo=self.lo, hi=self.hi)
            self._rows_of = (W, torch.as_tensor(self._ext_pos[mr.idx]), torch.as_tensor(mr.weight))
        _, idx, weight = self._rows_of
        return aggregate.gossip_mix(ext, idx, weight)

    def neighbour_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """This process's ``rows`` followed by the rows of its clients' graph neighbours hosted
        elsewhere (through the transport), and ``pos``: client id -> row in that tensor (-1 if absent)."""
        return torch.cat([rows, self.halo.exchange(rows)]), self._ext_pos

    def neighbours(self, client: int) -> list[int]:
        """The graph neighbours of ``client`` that are still members, in increasing id."""
        return sorted(j for j in self.graph.neighbors(client) if j < self.n_clients and self.members[j])

    def network_sum(self, rows: torch.Tensor, *, tol: float = 1e-10, averaging: str = "tree",
                    progress: bool = True) -> tuple[torch.Tensor, float, int]:
        """Every node's estimate of ``sum_k rows_k`` over the nodes in the graph; returns
        ``(estimates, bytes sent, mixing rounds)``.

        ``gossip``: mix with the remaining graph's matrix until the estimates agree to a relative
        ``tol``, then scale the average by the node count. ``tree``: the exact sum up a spanning tree
        of the graph and back down (``2 (M - 1)`` messages; on a star the hub sums, ``2 M`` messages).
        """
        nodes = np.flatnonzero(self.members)
        flat = rows.reshape(rows.shape[0], -1)
        itemsize = flat.element_size()
        if self.is_star or averaging == "tree":
            full = self.transport.gather(flat)
            total = full[torch.as_tensor(nodes)].sum(dim=0) if self.transport.is_root else None
            total = self.transport.broadcast(total, like=flat[0])
            messages = 2 * len(nodes) if self.is_star else 2 * (len(nodes) - 1)
            return total.expand_as(flat).reshape(rows.shape).clone(), float(messages * flat.shape[1] * itemsize), 1
        W = self.base_mixing
        R = topology.gossip_rounds(W, nodes, tol)
        x = flat
        for _ in tqdm(range(R), desc="gossip sum", leave=False, disable=not (progress and self.transport.is_root) or R < 200):
            x = self.mix(x, W)
        messages = np.count_nonzero(W) - np.count_nonzero(np.diag(W))
        return (len(nodes) * x).reshape(rows.shape), float(R * messages * flat.shape[1] * itemsize), R

    def message_bytes(self, W: np.ndarray, vectors: int, *, entries: int | None = None) -> float:
        """Bytes one exchange of ``vectors`` vectors of ``entries`` numbers (default: the model size)
        moves over ``W``'s edges (on a star: up to the hub and back)."""
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.is_star:
            messages = 2 * self.n_clients
        else:
            messages = int(np.count_nonzero(W) - np.count_nonzero(np.diag(W)))
        return float(messages * vectors * (self.dim if entries is None else entries) * itemsize)

    # ------------------------------------------------------------------ rounds
    def step(self) -> None:
        """One round of the configured algorithm (see :mod:`p2pforget.rounds`), then the round's metrics."""
        W = self.mixing_at(self.round)
        vectors = self._round_fn(self, W)
        sent = self.message_bytes(W, vectors)
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
        self.ledger = self.mix(self.ledger + eye, W)

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
            loss = fixed_width_vmap(self.task.objective, self.width, params.detach(), self.full_batch(), self._local_active)
            logits = fixed_width_vmap(self.task.logits, self.width, params.detach(), xt)
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
        start = time.perf_counter()
        per_client = self.evaluate()
        full = self.gather_params()
        self.eval_seconds += time.perf_counter() - start
        problem = None
        if per_client is not None:
            m = self.members
            self.metrics["loss_mean"].append(float(per_client["loss"][self.has_data].mean()))
            self.metrics["test_acc_mean"].append(float(per_client["test_acc"][m].mean()))
            self.metrics["test_acc_min"].append(float(per_client["test_acc"][m].min()))
            self.metrics["consensus_distance"].append(consensus_distance(full[m]))
            self.metrics["bytes_sent"].append(sent)
            problem = _divergence(full[m], per_client["loss"][self.has_data], np.flatnonzero(m))
        problem = self.transport.bcast_object(problem)  # every process stops in the same round
        if problem:
            lr = self.config.train.lr
            raise DivergenceError(f"training diverged in round {self.round}: {problem}; lower train.lr "
                                  f"(now {lr:g}, e.g. to {lr / 10:g}) and start the run again")

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray] | None:
        """Everything needed to continue training bit-identically (at the root; ``None`` elsewhere)."""
        out = {"round": np.array(self.round), "params": self.gather_params(), "ledger": self.gather_params(self.ledger)}
        for name in sorted(self.optimizer_state):
            out[name] = self.gather_params(self.optimizer_state[name])
        if not self.transport.is_root:
            return None
        return out | {f"metrics/{k}": np.asarray(v, dtype=np.float64) for k, v in self.metrics.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (every process passes the same full dict)."""
        rows = slice(self.lo, self.hi)
        self.round = int(state["round"])
        self.params = torch.as_tensor(state["params"][rows], dtype=self.dtype).clone()
        self.ledger = torch.as_tensor(state["ledger"][rows], dtype=torch.float64).clone()
        self.optimizer_state = {k: torch.as_tensor(v[rows], dtype=self.dtype).clone() for k, v in state.items()
                                if k not in ("round", "params", "ledger") and not k.startswith("metrics/")}
        self.metrics = {k: [float(v) for v in state.get(f"metrics/{k}", [])] for k in METRICS}

    def objective_weights(self) -> np.ndarray:
        """Weight ``a_k`` of each client's objective in what training minimizes: 1 on a gossip graph
        (``sum_k f_k``); on a star, FedAvg's sample-count weights scaled so equal clients weigh 1."""
        if self.is_star:
            return self.sample_counts / self.data.counts.mean()
        return self.has_data.astype(np.float64)

    def edges(self) -> np.ndarray:
        """The graph's edges as an (E, 2) array with ``u < v``."""
        return np.array(sorted(tuple(sorted(e)) for e in self.graph.edges), dtype=np.int64).reshape(-1, 2)


def consensus_distance(params: np.ndarray) -> float:
    """``mean_i ||x_i - mean_j x_j||`` over the rows of ``params``."""
    return float(np.linalg.norm(params - params.mean(axis=0), axis=1).mean())


def _divergence(params: np.ndarray, losses: np.ndarray, ids: np.ndarray) -> str | None:
    """What is non-finite among the nodes' ``params`` and their clients' ``losses`` (``None``: all finite)."""
    bad = ~np.isfinite(params).all(axis=1)
    if bad.any():
        return f"{int(bad.sum())} node(s) have non-finite parameters (first: client {int(ids[bad][0])})"
    if not np.isfinite(losses).all():
        return f"the training loss is {float(losses[~np.isfinite(losses)][0])}"
    return None
