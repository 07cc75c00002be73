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
>>> engine.metrics["round"], len(engine.metrics["test_acc_mean"])
([1, 2], 2)
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from . import aggregate, data as datasets, devices, ledger as ledger_mod, models, optim, seeding, topology
from .config import Config
from . import transport as transport_mod
from .hooks import Hook
from .registry import AGGREGATORS, HOOKS, ROUNDS
from .tasks import Batch, Task, fixed_width_value_and_grad, fixed_width_vmap, row_by_row
from .transport import Transport

EVAL_METRICS = ("loss_mean", "test_acc_mean", "test_acc_min", "test_acc_of_mean", "consensus_distance")
"""Recorded at evaluation rounds (``run.eval_every``), listed in ``metrics["round"]``: the mean and
worst of the nodes' own test accuracies, and the test accuracy of the nodes' mean model."""
METRICS = ("round", *EVAL_METRICS, "bytes_sent")
"""``bytes_sent`` has one entry per round."""
PER_NODE = ("loss", "test_acc", "distance_to_mean")
"""Kept for every node at every evaluation round (``metrics/per_node/<name>``: ``[evaluations, n_clients]``),
with the score on each of the data's probes (e.g. ``ASR``, :mod:`p2pforget.poison`), whose mean over
the nodes is the metric ``<name>_mean``."""


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
        self.device = devices.select(cfg.run.device)
        self.seed = cfg.run.seed
        self.aggregator = aggregator or AGGREGATORS.get(cfg.train.aggregator)()

        # Before anything is allocated (the graph of a million nodes takes a while already).
        need = datasets.estimated_bytes(cfg.data, n_clients=n)
        if need is not None:
            devices.check_memory(need, f"the data of topology.n_clients = {n} clients x data.n_samples_per_client = "
                                 f"{cfg.data.n_samples_per_client} ({cfg.data.kind})",
                                 "use fewer clients or samples per client")
        t = cfg.topology
        self.graph = topology.build_graph(t.kind, n, seed=self.seed, **topology.graph_options(t))
        self.is_star = t.kind == "star"
        # A star always runs the two-phase (FedAvg) round, whatever train.algorithm says: the hub
        # averages exactly, so there is no consensus error for gradient tracking to correct.
        self.round_name = "star" if self.is_star else cfg.train.algorithm
        self._round_fn = ROUNDS.get(self.round_name)
        if not self.is_star and ROUNDS.entry(self.round_name).meta.get("hub"):
            raise ValueError(f"train.algorithm = {self.round_name!r} needs a hub: use topology.kind = \"star\"")
        # The configured rule checks the config it needs (e.g. gradient tracking's one local step),
        # even on a star, which replaces it.
        check = ROUNDS.entry(cfg.train.algorithm).meta.get("check")
        if check is not None:
            check(cfg, star=self.is_star)

        self.data = datasets.build(cfg.data, n_clients=n, seed=self.seed)
        self.x = torch.as_tensor(self.data.x[self.lo:self.hi], dtype=self.dtype, device=self.device)
        self.y = torch.as_tensor(self.data.y[self.lo:self.hi], device=self.device)
        # Which samples each client still trains on, and which nodes are still in the graph;
        # forgetting (exclude) changes both.
        self.retained = self.data.valid.copy()
        self.members = np.ones(n, dtype=bool)
        self.x_test = torch.as_tensor(self.data.x_test, dtype=self.dtype, device=self.device)
        self.y_test = torch.as_tensor(self.data.y_test, device=self.device)
        # Further per-sample inputs (e.g. caption tokens) travel with the samples into batches.
        self.extras = {k: torch.as_tensor(v[self.lo:self.hi], device=self.device) for k, v in self.data.extras.items()}
        self.extras_test = {k: torch.as_tensor(v, device=self.device) for k, v in self.data.extras_test.items()}
        # Further test sets every node is scored on at every evaluation (e.g. a backdoor's triggered inputs).
        self.probes = {name: {"x": torch.as_tensor(x, dtype=self.dtype, device=self.device),
                              "y": torch.as_tensor(y, device=self.device)} for name, (x, y) in self.data.probes.items()}
        self.metric_names = METRICS + tuple(f"{name}_mean" for name in self.probes)
        self.per_node_names = PER_NODE + tuple(self.probes)

        self.model = models.FlatModel(models.build(cfg.model, input_shape=self.data.input_shape, n_classes=self.data.n_classes))
        self.model.module.to(self.device)
        self.task = Task(model=self.model, weight_decay=cfg.train.weight_decay)
        self.dim = self.model.dim
        # Clients are computed in vmap batches of exactly `width` rows (the last one padded): fixed
        # batch shapes keep each client's arithmetic independent of how many clients a process
        # hosts, which keeps results bit-identical at any number of ranks.
        self.width = min(cfg.run.vmap_width, n)
        self.vectorized = True  # False after vmap failed once for this model: row-by-row fallback

        self._update_topology()
        ready = ROUNDS.entry(self.round_name).meta.get("ready")
        if ready is not None:
            ready(self)  # the rule's look at the built engine (e.g. a warning about the mixing spectrum)

        self.init_params = self._init_params()
        self.params = self.init_params.clone()
        # Running statistics (BatchNorm) are per-client state like the parameters ([n_local, 0] for
        # a model without any): updated by each local step, communicated by the model's buffer_rule.
        self.init_buffers = self.model.init_buffers(self.dtype).to(self.device).expand(self.hi - self.lo, -1).clone()
        self.buffers = self.init_buffers.clone()
        self.optimizer_state: dict[str, torch.Tensor] = {}  # e.g. gradient tracking's tracker / last_grad
        # What unlearning methods leave installed, acting in every later round (see hooks.py).
        self.hooks: dict[str, Hook] = {}
        self.ledger = self._empty_ledger()  # row i: C_i (see ledger.py)
        self.round = 0
        self.metrics: dict[str, list[float]] = {name: [] for name in self.metric_names}
        self.per_node: dict[str, list[np.ndarray]] = {name: [] for name in self.per_node_names}  # at the root
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
    def _static_mixing(self) -> sp.csr_array | None:
        """The gossip graph's sparse mixing matrix (``None`` on a star: its round is FedAvg, whose
        rank-one matrix ``1 w^T`` is kept as :attr:`fedavg_weights`)."""
        if self.is_star:
            return None
        t = self.config.topology
        if t.mixing == "file" and self.members.all():
            W = topology.load_mixing(t.mixing_path, self.graph)
        else:
            # After a node leaves, a user matrix no longer fits the graph: Metropolis weights are recomputed.
            W = topology.mixing_matrix(self.graph, t.mixing)
            topology.validate_mixing(W, self.graph)
        return topology.lazy(W) if t.lazy else W

    def _update_topology(self) -> None:
        self.base_mixing = self._static_mixing()
        self.fedavg_weights = aggregate.fedavg_weights(self.sample_counts) if self.is_star else None
        self._stats: topology.Stats | None = None
        self._edges: np.ndarray | None = None  # sorted edge array, for edge dropout
        neighbours = {i: [] if self.is_star else sorted(self.graph.neighbors(i)) for i in range(self.n_clients)}
        self.halo = self.transport.neighbourhood(neighbours)
        ext_ids = list(range(self.lo, self.hi)) + list(self.halo.ids)
        self._ext_pos = np.full(self.n_clients, -1, dtype=np.int64)
        self._ext_pos[ext_ids] = np.arange(len(ext_ids))
        self._rows_of: tuple = (None, None, None)
        self._round_mixing_of: tuple = (None, None)
        self._local_mask = torch.as_tensor(self.retained[self.lo:self.hi], dtype=self.dtype, device=self.device)
        self._local_active = torch.as_tensor(self.has_data[self.lo:self.hi], dtype=self.dtype, device=self.device)
        # Training computes the rows of clients that hold data only: a node that left, or a relay,
        # has a zero gradient, so computing (and charging) its row would be work nobody does. The
        # vmap width follows the clients that train, the same at any rank count.
        holding = np.flatnonzero(self.has_data[self.lo:self.hi])
        self._training_rows = (None if len(holding) == self.hi - self.lo
                               else torch.as_tensor(holding, dtype=torch.long, device=self.device))
        self.training_width = min(self.config.run.vmap_width, max(int(self.has_data.sum()), 1))

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
            topology.check_connected(self.member_graph(),
                                     hint=f"removing node(s) {removed} splits the graph; use unlearn.mode = \"keep_relay\"")
        self._update_topology()

    def _init_params(self) -> torch.Tensor:
        if self.config.train.same_init or self.is_star:
            v = self.model.init_vector(seeding.int_seed(self.seed, purpose="init"), self.dtype)
            return v.to(self.device).expand(self.hi - self.lo, -1).clone()
        return torch.stack([self.model.init_vector(seeding.int_seed(self.seed, client=i, purpose="init"), self.dtype)
                            for i in range(self.lo, self.hi)]).to(self.device)

    # ------------------------------------------------------------------ parameters and state
    def set_params(self, rows: torch.Tensor, *, keep_optimizer_state: bool = False, copy: bool = True) -> None:
        """Replace this process's stacked parameters; the optimizer state (gradient tracking's
        tracker) restarts from them unless ``keep_optimizer_state``. ``copy=False`` takes ``rows``
        as they are (for a fresh tensor nobody else holds, e.g. the output of :meth:`mix`)."""
        rows = rows.detach().to(device=self.device, dtype=self.dtype)
        self.params = rows.clone() if copy or rows.data_ptr() == self.params.data_ptr() else rows
        if not keep_optimizer_state:
            self.optimizer_state = {}

    # ------------------------------------------------------------------ math
    def objective(self, flat: torch.Tensor, batch: Batch, active: torch.Tensor) -> torch.Tensor:
        """One client's objective (the task's loss plus weight decay); see :class:`~p2pforget.tasks.Task`."""
        return self.task.objective(flat, batch, active)

    def gradients(self, params: torch.Tensor, batch: Batch, *, mask: torch.Tensor | None = None,
                  loss: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client gradients and objective values of stacked ``params`` on a stacked ``batch``
        (see :meth:`full_batch`). With a boolean ``mask`` (``[d]``, whole parameter tensors, e.g.
        ``model.mask("V")``) only those entries are differentiated (the rest of the gradient is 0),
        and back-propagation stops at the layers that do not need it.

        The clients' objectives are independent, so one backward pass of their sum through the
        vmapped forward gives every client's own gradient (the same numbers as a vmapped
        ``torch.func.grad``, with less overhead); the weight decay's gradient is added in closed
        form (:meth:`~p2pforget.tasks.Task.decay`). ``loss(flat, batch)`` replaces the task's data
        loss (e.g. an unlearning method's own)."""
        loss = self.task.data_loss if loss is None else loss
        if mask is None:
            g, values = self._value_and_grad(loss, params, batch)
        else:
            mask = mask.to(params.device)
            idx = torch.nonzero(mask).squeeze(1)

            def partial(sub, frozen, b):
                return loss(self.model.compose(frozen, sub, mask), b)

            g_sub, values = self._value_and_grad(partial, params[:, idx], params.detach(), batch)
            g = torch.zeros_like(params)
            g[:, idx] = g_sub
        if self.task.weight_decay:
            value, grad = self.task.decay(params.detach(), self._local_active)
            values = values + value
            g = g + (grad if mask is None else grad * mask.to(grad.dtype))
        return g, values

    def _value_and_grad(self, fn: Callable, params: torch.Tensor, *args, update=None, width: int | None = None):
        width = self.width if width is None else width
        if self.vectorized:
            try:
                return fixed_width_value_and_grad(fn, width, params, *args, update=update)
            except (RuntimeError, NotImplementedError) as e:
                return self._unbatched(e, fixed_width_value_and_grad, fn, width, params, *args, loop=True,
                                       update=update)
        return fixed_width_value_and_grad(fn, width, params, *args, loop=True, update=update)

    def training_gradients(self, params: torch.Tensor, batch: Batch, *, update=None, loss: Callable | None = None):
        """Like :meth:`gradients` without a mask (data loss only: the caller adds the weight decay),
        for a training step: only the rows of clients that hold data are computed; the others'
        gradients are zero, as their objective is. With ``update``, the full gradient is handed to
        ``update(slice(0, n_local), g)`` and the values are returned. ``loss`` as in :meth:`gradients`."""
        rows = self._training_rows
        loss = self.task.data_loss if loss is None else loss
        if rows is None:
            return self._value_and_grad(loss, params, batch, update=update, width=self.training_width)
        n_loc = params.shape[0]
        sub = {k: v[rows] for k, v in batch.items()}
        g = torch.zeros_like(params)
        values = torch.zeros(n_loc, dtype=params.dtype, device=params.device)
        if len(rows):
            def collect(part: slice, grad: torch.Tensor) -> None:
                g[rows[part]] = grad

            values[rows] = self._value_and_grad(loss, params[rows], sub, update=collect,
                                                width=self.training_width).to(values.dtype)
        if update is not None:
            update(slice(0, n_loc), g)
            return values
        return g, values

    def _unbatched(self, error: Exception, compute: Callable, *args, **kwargs):
        """``vmap`` failed with ``error``: ``compute(*args, **kwargs)`` clients one by one instead
        and stay row by row from now on, reported once. vmap's own errors do not always say so
        (torch 2.11 rejects a batched attention mask as "attn_bias: wrong shape"), so any error is
        retried; one that the row-by-row computation raises too is the model's and propagates."""
        out = compute(*args, **kwargs)
        self.vectorized = False
        warnings.warn(f"model.kind = {self.config.model.kind!r} cannot be vectorized by torch.func.vmap "
                      f"({' '.join(str(error).split())[:160]}); computing clients one by one (slower)", stacklevel=3)
        return out

    def per_client(self, fn: Callable, *args) -> torch.Tensor:
        """``fn(*row_args)`` for every local client, vmapped in the engine's fixed-width chunks
        (``run.vmap_width``); row by row for a model that ``vmap`` cannot batch, reported once."""
        if self.vectorized:
            try:
                return fixed_width_vmap(fn, self.width, *args)
            except (RuntimeError, NotImplementedError) as e:
                return self._unbatched(e, row_by_row, fn, *args)
        return row_by_row(fn, *args)

    def full_batch(self, dtype: torch.dtype | None = None) -> Batch:
        """Every sample of this process's clients, with the mask of those still trained on; in
        ``dtype`` (default: the training dtype), e.g. float64 for curvature and certificates."""
        batch = {"x": self.x, "y": self.y, "mask": self._local_mask} | self._extras_batch(self.extras, self.y.shape, None)
        if dtype is None or dtype == self.dtype:
            return batch
        return batch | {"x": self.x.to(dtype), "mask": self._local_mask.to(dtype)}

    def _extras_batch(self, extras: dict[str, torch.Tensor], shape: tuple[int, int], key: tuple[int, int] | None) -> Batch:
        """``extras`` plus ``u``: one uniform number in [0, 1) per sample for the task's own random
        choices (e.g. which caption of an image), drawn per ``(round, step)`` ``key`` from streams
        keyed by client id (0 for full batches); nothing for data without extras."""
        if not extras:
            return {}
        if key is None:
            u = torch.zeros(shape, dtype=self.dtype, device=self.device)
        else:
            keys = seeding.uniform_keys(self.seed, np.arange(self.lo, self.hi), purpose="batch/choice", counters=key,
                                        width=shape[1])
            u = torch.as_tensor((keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53, dtype=self.dtype, device=self.device)
        return dict(extras) | {"u": u}

    def test_batch(self, n_local: int | None = None) -> Batch:
        """The test split as a batch repeated for ``n_local`` clients (default: this process's)."""
        n_local = self.hi - self.lo if n_local is None else n_local
        batch = {"x": self.x_test, "y": self.y_test} | self.extras_test
        return {k: v.expand(n_local, *v.shape) for k, v in batch.items()}

    def batch(self, key: tuple[int, int]) -> Batch:
        """The minibatch of every local client for ``key = (round, step)`` (``train.batch_size``;
        0 = full batch). Sampled from streams keyed by client id, so any rank count draws the same."""
        b, m = self.config.train.batch_size, self.x.shape[1]
        if b == 0 or b >= m:
            return self.full_batch()
        keys = seeding.uniform_keys(self.seed, np.arange(self.lo, self.hi), purpose="batch", counters=key, width=m)
        idx, mask = seeding.sample_without_replacement(keys, self.retained[self.lo:self.hi], b)
        flat = torch.as_tensor(idx + np.arange(self.hi - self.lo)[:, None] * m, device=self.device).reshape(-1)
        n_loc = self.hi - self.lo
        x = torch.index_select(self.x.reshape(n_loc * m, *self.x.shape[2:]), 0, flat).reshape(n_loc, b, *self.x.shape[2:])
        y = torch.index_select(self.y.reshape(-1), 0, flat).reshape(n_loc, b)
        extras = {k: torch.index_select(v.reshape(n_loc * m, *v.shape[2:]), 0, flat).reshape(n_loc, b, *v.shape[2:])
                  for k, v in self.extras.items()}
        return ({"x": x, "y": y, "mask": torch.as_tensor(mask, dtype=self.dtype, device=self.device)}
                | self._extras_batch(extras, (n_loc, b), key))

    def local_steps(self, params: torch.Tensor, *, grad_mask: torch.Tensor | None = None,
                    key_round: int | None = None, loss: Callable | None = None) -> torch.Tensor:
        """``train.local_steps`` steps of ``train.optimizer`` (plain SGD by default) at the round's
        learning rate (``train.lr`` and its schedule) of every local client from ``params``; the
        optimizer's state (momentum, Adam moments) is kept per client in :attr:`optimizer_state`.

        ``grad_mask`` (boolean ``[d]``) trains only those parameters (the others are frozen and not
        differentiated); batches are keyed by ``(key_round, step)`` (default: the current round);
        ``loss(flat, batch)`` replaces the task's data loss (default).
        """
        cfg = self.config.train
        key_round = self.round if key_round is None else key_round
        grad_mask = None if grad_mask is None else grad_mask.to(params.device)
        lr = optim.learning_rate(cfg, key_round, self.config.run.rounds)
        plain = optim.is_plain_sgd(cfg)
        decay = self.task.weight_decay and not optim.decouples_decay(cfg)
        if not plain and not all(k in self.optimizer_state for k in optim.state_names(cfg.optimizer)):
            self.optimizer_state |= optim.init_state(cfg.optimizer, params.shape[0], params.shape[1], dtype=self.dtype,
                                                     device=self.device)
        state = {k: v for k, v in self.optimizer_state.items() if k.startswith("opt/")}

        def update(rows: slice, old: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
            if plain:
                torch.sub(old, g.mul_(lr), out=out)
            else:
                out.copy_(optim.apply(old, g, {k: v[rows] for k, v in state.items()}, lr=lr, cfg=cfg,
                                      active=self._local_active[rows]))

        for s in range(cfg.local_steps):
            batch = self.batch((key_round, s))
            if self.model.buffer_dim:
                self._update_buffers(params, batch)
            if grad_mask is not None:
                g, _ = self.gradients(params, batch, mask=grad_mask, loss=loss)
                if not decay and self.task.weight_decay:  # gradients() added it: decoupled instead
                    g = g - self.task.decay(params.detach(), self._local_active)[1] * grad_mask.to(g.dtype)
                for hook in self.hooks.values():
                    extra = hook.gradient(params.detach(), slice(0, params.shape[0]))
                    if extra is not None:
                        g = g + extra * grad_mask.to(g.dtype)
                new = torch.empty_like(params)
                update(slice(0, params.shape[0]), params.detach(), g, new)
                params = torch.where(grad_mask, new, params) if not plain else new
                continue
            # The step is applied batch by batch of clients as their gradients come out of the
            # backward pass: the same numbers as `params - lr * gradients(...)`, without a full
            # gradient tensor.
            new = torch.empty_like(params)

            def step(rows: slice, g: torch.Tensor, old: torch.Tensor = params) -> None:
                if decay:
                    g = g + self.task.decay(old[rows].detach(), self._local_active[rows])[1]
                for hook in self.hooks.values():
                    extra = hook.gradient(old[rows].detach(), rows)
                    if extra is not None:
                        g = g + extra
                update(rows, old[rows].detach(), g, new[rows])

            self.training_gradients(params, batch, update=step, loss=loss)
            params = new
        return params

    def _update_buffers(self, params: torch.Tensor, batch: Batch) -> None:
        """Each training client's running statistics after the forward of its ``batch`` at
        ``params`` (the update one ``module.train()`` step makes). Batch statistics are taken over
        the whole batch, so a batch must hold no padding."""
        active = self._local_active.bool()
        short = active & (batch["mask"] < 1).any(dim=1)
        if bool(short.any()):
            j = self.lo + int(torch.nonzero(short)[0, 0])
            raise ValueError(f"model.kind = {self.config.model.kind!r} keeps running statistics (BatchNorm), which a batch "
                             f"computes over all its samples, but client {j} has fewer samples than its batch "
                             f"({int(batch['mask'].shape[1])}); set train.batch_size to at most the smallest client's "
                             "sample count, or use a model without running statistics (e.g. GroupNorm)")
        extras = {k: v for k, v in batch.items() if k not in ("y", "mask", "u")}
        fresh = self.per_client(lambda p, b, x: self.model.updated_buffers(p, b, x), params.detach(), self.buffers,
                                extras["x"])
        self.buffers = torch.where(active[:, None], fresh, self.buffers)

    def with_buffers(self, params: torch.Tensor, buffers: torch.Tensor | None = None) -> torch.Tensor:
        """Stacked local ``params`` followed by running statistics (default: the engine's), the
        vectors a model that keeps statistics is evaluated at (``module.eval()``); ``params`` as
        they are for a model without any."""
        if not self.model.buffer_dim or params.shape[-1] != self.dim:
            return params
        return torch.cat([params, (self.buffers if buffers is None else buffers).to(params)], dim=-1)

    def _communicate_buffers(self, W: sp.csr_array | None) -> float:
        """Running statistics travel with the models under the ``average`` rule: mixed with the
        round's graph matrix, or on a star the hub's FedAvg average; bytes sent."""
        if not self.model.buffer_dim or self.model.buffer_rule == "local":
            return 0.0
        if self.is_star:
            w = torch.as_tensor(self.fedavg_weights[self.lo:self.hi], dtype=torch.float64, device=self.device)
            mean = self.member_mean(self.buffers, weights=w)
            self.buffers = mean.to(self.dtype).expand_as(self.buffers).clone()
        else:
            self.buffers = self.mix(self.buffers, self.base_mixing if W is None else W)
        return self.message_bytes(W, 1, entries=self.model.buffer_dim)

    def mixing_at(self, round: int) -> sp.csr_array | None:
        """The sparse (n, n) mixing matrix used in ``round`` (edge dropout makes it time-varying;
        ``None`` on a star)."""
        t = self.config.topology
        if t.dropout == 0 or self.is_star:
            return self.base_mixing
        if self._edges is None:
            self._edges = topology.edge_array(self.graph)
        kept = topology.kept_edges(self._edges, t.dropout, seed=self.seed, round=round)
        W = topology.mixing_from_edges(self.n_clients, kept, t.mixing)
        return topology.lazy(W) if t.lazy else W

    def mix(self, rows: torch.Tensor, W: np.ndarray | None = None) -> torch.Tensor:
        """One gossip step ``x_i <- sum_j W_ij x_j`` of stacked local ``rows`` (default ``W``: the
        current static mixing matrix); neighbours' rows come through the transport."""
        W = self.base_mixing if W is None else W
        ext = torch.cat([rows, self.halo.exchange(rows)]) if len(self.halo.ids) else rows
        idx, weight = self._mixing_rows(W)
        return aggregate.gossip_mix(ext, idx, weight)

    def round_mixing(self, W: sp.csr_array | None) -> sp.csr_array | None:
        """The matrix the round rule actually mixes with, given the graph's ``W`` for the round:
        ``W`` itself, or what the rule's registry entry derives from it (``mixing`` meta, e.g.
        push-sum's column-stochastic matrix); cached while ``W`` stays the same. The influence
        ledger follows this matrix."""
        derive = ROUNDS.entry(self.round_name).meta.get("mixing")
        if derive is None or W is None:
            return W
        if self._round_mixing_of[0] is not W:
            self._round_mixing_of = (W, derive(W, self.n_clients))
        return self._round_mixing_of[1]

    def _mixing_rows(self, W: sp.csr_array) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of ``W`` as padded neighbour lists: positions in ``[local rows,
        halo rows]`` and weights (cached: a static graph mixes with the same matrix every round)."""
        if self._rows_of[0] is not W:
            mr = aggregate.MixingRows.from_matrix(W, lo=self.lo, hi=self.hi)
            self._rows_of = (W, torch.as_tensor(self._ext_pos[mr.idx], device=self.device),
                             torch.as_tensor(mr.weight, device=self.device))
        return self._rows_of[1], self._rows_of[2]

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
            total = aggregate.row_sum(full[torch.as_tensor(nodes, device=full.device)]) if self.transport.is_root else None
            total = self.transport.broadcast(total, like=flat[0])
            messages = 2 * len(nodes) if self.is_star else 2 * (len(nodes) - 1)
            return total.expand_as(flat).reshape(rows.shape).clone(), float(messages * flat.shape[1] * itemsize), 1
        W = self.base_mixing
        R = topology.gossip_rounds(W, nodes, tol)
        x = flat
        for _ in tqdm(range(R), desc="gossip sum", leave=False, disable=not (progress and self.transport.is_root) or R < 200):
            x = self.mix(x, W)
        messages = topology.message_count(W)
        return (len(nodes) * x).reshape(rows.shape), float(R * messages * flat.shape[1] * itemsize), R

    def message_bytes(self, W: sp.csr_array | None, vectors: int, *, entries: int | None = None,
                      senders: int | None = None) -> float:
        """Bytes one exchange of ``vectors`` vectors of ``entries`` numbers (default: the model size)
        moves over ``W``'s edges (on a star: up to the hub from the clients that hold data, and back
        down to every member; ``senders``: that many clients upload instead, e.g. forgotten clients
        that still step on their data during unlearning)."""
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.is_star:
            # down to every client still in the federation, up from those that hold data: a client
            # that left sends and receives nothing
            messages = int(self.members.sum()) + (int(self.has_data.sum()) if senders is None else senders)
        else:
            messages = topology.message_count(W)
        return float(messages * vectors * (self.dim if entries is None else entries) * itemsize)

    # ------------------------------------------------------------------ rounds
    def step(self) -> None:
        """One round of the configured algorithm (see :mod:`p2pforget.rounds`), then, at an
        evaluation round (``run.eval_every``), the round's metrics."""
        W = self.mixing_at(self.round)
        before = self.params
        vectors = self._round_fn(self, W)
        for hook in self.hooks.values():
            self.set_params(hook.after_round(before, self.params), keep_optimizer_state=True, copy=False)
        sent = self.message_bytes(W, vectors) + self._communicate_buffers(W)
        if self.ledger is not None:
            self._update_ledger(self.round_mixing(W))
        self.round += 1
        if self.transport.is_root:
            self.metrics["bytes_sent"].append(sent)
        if self.evaluates(self.round):
            self._record()

    def evaluates(self, round: int) -> bool:
        """Whether the metrics are computed after ``round``: every ``run.eval_every`` rounds and
        at the last round of the run (``eval_every = 0``: only there)."""
        k = self.config.run.eval_every
        return round == self.config.run.rounds or (k > 0 and round % k == 0)

    def _empty_ledger(self):
        """A zero ledger of ``[ledger] kind``: dense ``[n_local, n]`` (full), :class:`~p2pforget.ledger.SparseRows`
        (sparse) or ``None`` (off)."""
        kind, rows = self.config.ledger.kind, self.hi - self.lo
        if kind == "off":
            return None
        if kind == "sparse":
            return ledger_mod.SparseRows.empty(rows, self.config.ledger.keep, device=self.device)
        return torch.zeros(rows, self.n_clients, dtype=torch.float64, device=self.device)

    def ledger_shares(self, clients: list[int]) -> torch.Tensor:
        """``[n_local, len(clients)]``: the share of each client's updates in each local node's
        model, from the influence ledger (see :mod:`p2pforget.ledger`)."""
        if self.ledger is None:
            raise ValueError("the influence ledger is off ([ledger] kind = \"off\"); set it to \"full\" or \"sparse\"")
        if isinstance(self.ledger, ledger_mod.SparseRows):
            return self.ledger.shares(clients)
        return torch.as_tensor(ledger_mod.shares(self.ledger.cpu().numpy())[:, clients], device=self.device)

    def _update_ledger(self, W: sp.csr_array | None) -> None:
        """``C <- W (C + I)`` with the matrix this round mixed with (on a star, FedAvg's; for push-sum
        the column-stochastic push matrix: the de-biased model divides a row by its weight, which
        leaves the row's shares as they are)."""
        if self.is_star:
            self.ledger = ledger_mod.fedavg_step(self.ledger, torch.as_tensor(self.fedavg_weights, device=self.device),
                                                 keep=self.config.ledger.keep)
            return
        if isinstance(self.ledger, ledger_mod.SparseRows):
            packed = self.ledger.pack(torch.arange(self.lo, self.hi, device=self.device))
            pos, weight = self._mixing_rows(W)
            self.ledger = ledger_mod.sparse_mix(torch.cat([packed, self.halo.exchange(packed)]), pos, weight,
                                                keep=self.config.ledger.keep, n=self.n_clients)
            return
        eye = torch.zeros_like(self.ledger)
        eye[torch.arange(self.hi - self.lo), torch.arange(self.lo, self.hi)] = 1.0
        self.ledger = self.mix(self.ledger + eye, W)

    def train(self, rounds: int | None = None, *, progress: bool = True,
              callback: Callable[["Engine"], None] | None = None, desc: str = "train") -> None:
        """Run ``rounds`` more rounds (default: up to ``run.rounds``); ``callback(engine)`` is
        called after each one."""
        if rounds is None:
            rounds = max(self.config.run.rounds - self.round, 0)
        bar = tqdm(total=rounds, desc=desc, disable=not (progress and self.transport.is_root), leave=False)
        for _ in range(rounds):
            self.step()
            bar.update()
            if self.transport.is_root and self.metrics["round"] and self.metrics["round"][-1] == self.round:
                bar.set_postfix(loss=f"{self.metrics['loss_mean'][-1]:.4f}", acc=f"{self.metrics['test_acc_mean'][-1]:.3f}")
            if callback is not None:
                callback(self)
        bar.close()

    # ------------------------------------------------------------------ metrics
    def evaluate(self, params: torch.Tensor | None = None) -> dict[str, np.ndarray] | None:
        """Per-client train objective, test accuracy and distance to the members' mean model of
        stacked ``params`` (default: current), as full (n_clients,) arrays at the root (``None``
        elsewhere). Only per-client numbers travel: the mean model comes from an allreduce."""
        params = self.params if params is None else params
        with torch.no_grad():
            loss = self.per_client(self.task.objective, params.detach(), self.full_batch(), self._local_active)
            scored = self.with_buffers(params.detach())
            acc = self.per_client(self.task.score, scored, self.test_batch(params.shape[0]))
            mean = self.member_mean(params)
            mean_statistics = self.member_mean(self.buffers) if self.model.buffer_dim else None
            dist = torch.linalg.vector_norm(params.detach().double() - mean, dim=1)
            finite = torch.isfinite(params).all(dim=1)
            probed = [self.per_client(self.task.score, scored, self._probe_batch(name, params.shape[0])).double()
                      for name in self.probes]
        full = self.transport.gather(torch.stack([loss.double(), acc.double(), dist, finite.double(), *probed], dim=1))
        if full is None:
            return None
        with torch.no_grad():  # the mean model itself, at the root (every process holds the same mean)
            averaged = mean if mean_statistics is None else torch.cat([mean, mean_statistics])
            of_mean = float(self.task.score(averaged.to(self.dtype), {k: v[0] for k, v in self.test_batch(1).items()}))
        full = full.cpu().numpy()
        return {"loss": full[:, 0], "test_acc": full[:, 1], "distance_to_mean": full[:, 2], "finite": full[:, 3] > 0,
                "test_acc_of_mean": of_mean} | {name: full[:, 4 + k] for k, name in enumerate(self.probes)}

    def _probe_batch(self, name: str, n_local: int) -> Batch:
        return {k: v.expand(n_local, *v.shape) for k, v in self.probes[name].items()}

    def member_mean(self, params: torch.Tensor, *, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the member nodes' rows of ``params`` (float64, on every process), summed
        exactly in 64-bit fixed point: the result does not depend on how clients are spread over
        processes, at a resolution of about ``2^-60 * max|x| * n``. ``weights`` (this process's
        rows, summing to one over the members): the weighted sum instead."""
        keep = torch.as_tensor(self.members[self.lo:self.hi], device=params.device)
        rows = params.detach().double()
        if weights is not None:
            rows = rows * weights.to(rows)[:, None]
        rows = rows[keep]
        finite = torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))
        top = finite.abs().max() if finite.numel() else torch.zeros((), dtype=torch.float64, device=params.device)
        top = float(self.transport.allreduce(top.reshape(1), "max")[0])
        n = int(self.members.sum())
        shift = 61 - math.ceil(math.log2(max(top, 1e-300) * n + 1e-300))
        q = torch.round(torch.ldexp(finite, torch.tensor(shift, device=params.device))).to(torch.int64).sum(dim=0)
        total = self.transport.allreduce(q, "sum")
        return torch.ldexp(total.double(), torch.tensor(-shift, device=params.device)) / (1 if weights is not None else n)

    def gather_params(self, params: torch.Tensor | None = None) -> np.ndarray | None:
        """All clients' parameters (n_clients, d) at the root, ``None`` elsewhere."""
        full = self.transport.gather(self.params if params is None else params)
        return None if full is None else full.detach().cpu().numpy().copy()

    def _record(self) -> None:
        start = time.perf_counter()
        per_client = self.evaluate()
        self.eval_seconds += time.perf_counter() - start
        problem = None
        if per_client is not None:
            m = self.members
            self.metrics["round"].append(self.round)
            self.metrics["loss_mean"].append(float(per_client["loss"][self.has_data].mean()))
            self.metrics["test_acc_mean"].append(float(per_client["test_acc"][m].mean()))
            self.metrics["test_acc_min"].append(float(per_client["test_acc"][m].min()))
            self.metrics["test_acc_of_mean"].append(per_client["test_acc_of_mean"])
            self.metrics["consensus_distance"].append(float(per_client["distance_to_mean"][m].mean()))
            for name in self.probes:
                self.metrics[f"{name}_mean"].append(float(per_client[name][m].mean()))
            for name in self.per_node_names:
                self.per_node[name].append(np.where(m, per_client[name], np.nan))  # NaN: not in the graph
            problem = _divergence(per_client["finite"][m], per_client["loss"][self.has_data], np.flatnonzero(m))
        problem = self.transport.bcast_object(problem)  # every process stops in the same round
        if problem:
            lr = self.config.train.lr
            raise DivergenceError(f"training diverged by round {self.round}: {problem}; lower train.lr "
                                  f"(now {lr:g}, e.g. to {lr / 10:g}) and start the run again")

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray] | None:
        """Everything needed to continue training bit-identically (at the root; ``None`` elsewhere)."""
        out = {"round": np.array(self.round), "params": self.gather_params()}
        if self.model.buffer_dim:
            out["buffers"] = self.gather_params(self.buffers)
        if isinstance(self.ledger, ledger_mod.SparseRows):
            out["ledger_index"] = self.gather_params(self.ledger.index)
            out["ledger_value"] = self.gather_params(self.ledger.value)
            out["ledger_dropped"] = self.gather_params(self.ledger.dropped)
        elif self.ledger is not None:
            out["ledger"] = self.gather_params(self.ledger)
        for name in sorted(self.optimizer_state):
            out[name] = self.gather_params(self.optimizer_state[name])
        for name, hook in self.hooks.items():
            rows, shared = hook.state()
            out |= {f"hooks/{name}/rows/{k}": self.gather_params(v) for k, v in rows.items()}
            out |= {f"hooks/{name}/shared/{k}": v for k, v in shared.items()}
        if not self.transport.is_root:
            return None
        out |= {f"metrics/per_node/{k}": np.asarray(v, dtype=np.float64).reshape(len(v), self.n_clients)
                for k, v in self.per_node.items()}
        return out | {f"metrics/{k}": np.asarray(v, dtype=np.int64 if k == "round" else np.float64)
                      for k, v in self.metrics.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (every process passes the same full dict), checked against this
        engine's shapes first (a damaged or foreign checkpoint is refused, naming the array)."""
        state = _renamed(state)
        self._check_state(state)
        rows = slice(self.lo, self.hi)
        self.round = int(state["round"])
        self.params = torch.as_tensor(state["params"][rows], dtype=self.dtype).to(self.device).clone()
        self.buffers = (torch.as_tensor(state["buffers"][rows], dtype=self.dtype).to(self.device).clone()
                        if self.model.buffer_dim else self.init_buffers.clone())
        self.ledger = self._empty_ledger()
        if isinstance(self.ledger, ledger_mod.SparseRows) and "ledger_index" in state:
            self.ledger = ledger_mod.SparseRows(
                index=torch.as_tensor(state["ledger_index"][rows], device=self.device).clone(),
                value=torch.as_tensor(state["ledger_value"][rows], dtype=torch.float64, device=self.device).clone(),
                dropped=torch.as_tensor(state["ledger_dropped"][rows], dtype=torch.float64, device=self.device).clone())
        elif self.ledger is not None and "ledger" in state:
            self.ledger = torch.as_tensor(state["ledger"][rows], dtype=torch.float64).to(self.device).clone()
        self.optimizer_state = {k: torch.as_tensor(v[rows], dtype=self.dtype).to(self.device).clone()
                                for k, v in state.items()
                                if k not in ("round", "params", "buffers") and not k.startswith(("ledger", "metrics/", "hooks/"))}
        self.hooks = {}
        for name in sorted({k.split("/")[1] for k in state if k.startswith("hooks/")}):
            part = {k[len(f"hooks/{name}/"):]: v for k, v in state.items() if k.startswith(f"hooks/{name}/")}
            self.hooks[name] = HOOKS.get(name).from_state(
                {k[5:]: np.asarray(v)[rows] for k, v in part.items() if k.startswith("rows/")},
                {k[7:]: np.asarray(v) for k, v in part.items() if k.startswith("shared/")}, dtype=self.dtype, device=self.device)
        self.metrics = {k: [(int(v) if k == "round" else float(v)) for v in state.get(f"metrics/{k}", [])]
                        for k in self.metric_names}
        self.per_node = {k: list(np.asarray(state.get(f"metrics/per_node/{k}", np.zeros((0, self.n_clients)))))
                         for k in self.per_node_names}
        if not self.metrics["round"] and self.metrics["loss_mean"]:  # run files written before eval_every
            self.metrics["round"] = list(range(1, len(self.metrics["loss_mean"]) + 1))

    def fork(self, *, fresh: bool = False) -> "Engine":
        """A second engine over the same data, model, transport and exclusions, with its own copy
        of everything training changes (models, statistics, optimizer state, ledger, hooks, metrics, graph),
        so that it can run on without touching this one; nothing is rebuilt from the config.
        ``fresh``: it starts where training started (round 0, the initial models), as retraining
        from scratch does.
        Under MPI every process calls it (the neighbourhood exchange is set up again).

        >>> from p2pforget import Engine, config
        >>> engine = Engine(config=config.from_dict({"topology": {"n_clients": 4}}))
        >>> engine.train(2, progress=False)
        >>> twin = engine.fork()
        >>> twin.train(1, progress=False)
        >>> engine.round, twin.round, engine.fork(fresh=True).round
        (2, 3, 0)
        """
        twin = copy.copy(self)
        twin.graph = self.graph.copy()
        twin.retained, twin.members = self.retained.copy(), self.members.copy()
        twin._update_topology()
        if fresh:
            twin.round, twin.params, twin.optimizer_state, twin.hooks = 0, self.init_params.clone(), {}, {}
            twin.buffers = self.init_buffers.clone()
            twin.ledger = twin._empty_ledger()
            twin.metrics = {name: [] for name in self.metric_names}
            twin.per_node = {name: [] for name in self.per_node_names}
            twin.eval_seconds = 0.0
            return twin
        twin.params, twin.buffers = self.params.clone(), self.buffers.clone()
        twin.optimizer_state = {k: v.clone() for k, v in self.optimizer_state.items()}
        if isinstance(self.ledger, ledger_mod.SparseRows):
            twin.ledger = dataclasses.replace(self.ledger, index=self.ledger.index.clone(), value=self.ledger.value.clone(),
                                              dropped=self.ledger.dropped.clone())
        elif self.ledger is not None:
            twin.ledger = self.ledger.clone()
        twin.hooks = {name: hook.fork() for name, hook in self.hooks.items()}
        twin.metrics = {k: list(v) for k, v in self.metrics.items()}
        twin.per_node = {k: list(v) for k, v in self.per_node.items()}
        return twin

    def _check_state(self, state: dict[str, np.ndarray]) -> None:
        fix = "the checkpoint does not belong to this config or is damaged: restore the run file from a copy or rerun"

        def bad(key: str, what: str) -> ValueError:
            return ValueError(f"checkpoint/{key} {what}; {fix}")

        for key in ("round", "params") + (("buffers",) if self.model.buffer_dim else ()):
            if key not in state:
                raise bad(key, "is missing")
        r = np.asarray(state["round"])
        if r.shape != () or not np.issubdtype(r.dtype, np.integer) or int(r) < 0:
            raise bad("round", f"must be one integer >= 0, got {r.tolist()!r}")
        n, d = self.n_clients, self.dim
        params = np.asarray(state["params"])
        if params.shape != (n, d):
            raise bad("params", f"has shape {params.shape}, but this config's model has {n} clients x {d} parameters")
        if not np.issubdtype(params.dtype, np.floating):
            raise bad("params", f"holds {params.dtype}, not floating-point numbers")
        finite = np.isfinite(params).all(axis=1)
        if not finite[self.members].all():
            raise bad("params", f"holds NaN or inf at clients {np.flatnonzero(~finite & self.members)[:5].tolist()}")
        for key, value in state.items():
            if key in ("round", "params") or key.startswith("metrics/") or (key.startswith("hooks/") and "/shared/" in key):
                continue
            value = np.asarray(value)
            if key == "ledger" and value.shape != (n, n):
                raise bad(key, f"has shape {value.shape}, not ({n}, {n})")
            if key == "buffers" and value.shape != (n, self.model.buffer_dim):
                raise bad(key, f"has shape {value.shape}, but this config's model keeps {n} clients x "
                               f"{self.model.buffer_dim} running statistics")
            if value.ndim == 0 or value.shape[0] != n:
                raise bad(key, f"has shape {value.shape}: its first axis must hold the {n} clients")

    def member_graph(self):
        """The graph of the nodes still in it (and a star's hub)."""
        return self.graph.subgraph([v for v in self.graph.nodes if v >= self.n_clients or self.members[v]])

    def topology_stats(self) -> topology.Stats:
        """Degrees, diameter and spectral gap of the graph of the nodes still in it, computed once
        per graph (a star's FedAvg round averages exactly: gap 1)."""
        if self._stats is None:
            g = self.member_graph()
            if self.is_star:
                self._stats = topology.stats(g, gap=1.0)
            else:
                ids = np.flatnonzero(self.members)
                self._stats = topology.stats(g, self.base_mixing[ids][:, ids])
        return self._stats

    def objective_weights(self) -> np.ndarray:
        """Weight ``a_k`` of each client's objective in what training minimizes: 1 on a gossip graph
        (``sum_k f_k``); on a star, FedAvg's sample-count weights scaled so equal clients weigh 1."""
        if self.is_star:
            return self.sample_counts / self.data.counts.mean()
        return self.has_data.astype(np.float64)

    def edges(self) -> np.ndarray:
        """The graph's edges as an (E, 2) array with ``u < v``."""
        return topology.edge_array(self.graph)


def consensus_distance(params: np.ndarray) -> float:
    """``mean_i ||x_i - mean_j x_j||`` over the rows of ``params``."""
    return float(np.linalg.norm(params - params.mean(axis=0), axis=1).mean())


def _divergence(finite: np.ndarray, losses: np.ndarray, ids: np.ndarray) -> str | None:
    """What is non-finite among the nodes' parameters (``finite`` flags) and their clients'
    ``losses`` (``None``: all finite)."""
    if not finite.all():
        return f"{int((~finite).sum())} node(s) have non-finite parameters (first: client {int(ids[~finite][0])})"
    if not np.isfinite(losses).all():
        return f"the training loss is {float(losses[~np.isfinite(losses)][0])}"
    return None



def _renamed(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint written before hooks in today's names: each hook's registry entry lists the
    keys it was stored under then (``legacy``: old key -> key under ``hooks/<name>/``)."""
    moved = {old: f"hooks/{name}/{new}" for name in HOOKS.names()
             for old, new in HOOKS.entry(name).meta.get("legacy", {}).items()}
    return {moved.get(k, k): v for k, v in state.items()}
