"""The engine's kernel: its state (this process's clients, models, statistics, optimizer state,
metrics), membership and exclusions, and the round loop; see :mod:`p2pforget.engine`."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .. import aggregate, data as datasets, devices, models, seeding, topology
from ..config import Config
from .. import transport as transport_mod
from ..hooks import Hook
from ..progress import bar as progress_bar
from ..registry import AGGREGATORS, DATASETS, ROUNDS
from ..tasks import Task, as_inputs
from ..transport import Transport
from .batches import Batches
from .checkpoint import Checkpoint
from .compute import Compute
from .evaluation import Evaluation
from .gossip import Gossip

EVAL_METRICS = ("loss_mean", "test_acc_mean", "test_acc_min", "test_acc_of_mean", "consensus_distance")
"""Recorded at evaluation rounds (``run.eval_every``), listed in ``metrics["round"]``: the mean and
worst of the nodes' own test accuracies, and the test accuracy of the nodes' mean model."""
METRICS = ("round", *EVAL_METRICS, "bytes_sent")
"""``bytes_sent`` has one entry per round."""
PER_NODE = ("loss", "test_acc", "distance_to_mean")
"""Kept for every node at every evaluation round (``metrics/per_node/<name>``: ``[evaluations, n_clients]``),
with the score on each of the data's probes (e.g. ``ASR``, :mod:`p2pforget.poison`), whose mean over
the nodes is the metric ``<name>_mean``."""


class Engine(Batches, Compute, Gossip, Evaluation, Checkpoint):
    """Decentralized training of ``n_clients`` models on a gossip graph (or a star = FedAvg).

    Extensions (unlearning methods, round rules, metrics, user plug-ins) use only the members
    listed in :data:`p2pforget.api.ENGINE_API`.

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
        # A builder that plans on a pool reads only this process's clients; the others build all first.
        held = self.hi - self.lo if DATASETS.entry(cfg.data.kind).meta.get("planned") else n
        need = datasets.estimated_bytes(cfg.data, n_clients=held)
        if need is not None:
            devices.check_memory(need, f"the data of {held} of topology.n_clients = {n} clients x "
                                 f"data.n_samples_per_client = {cfg.data.n_samples_per_client} ({cfg.data.kind})",
                                 "use fewer clients or samples per client, or more processes")
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

        # Each process builds and keeps its own clients' inputs only (labels and counts of all).
        self.data = datasets.build(cfg.data, n_clients=n, seed=self.seed, clients=range(self.lo, self.hi))
        # On the CPU the inputs stay in the data's own array: a minibatch is cast to the training
        # dtype as it is drawn, and a copy of all of them in that dtype (Engine.x) is made only if
        # something asks for it (full batches), not held beside the data by every run.
        self._inputs = torch.as_tensor(self.data.x) if self.device.type == "cpu" else as_inputs(self.data.x, self.dtype, self.device)
        self._cast_inputs: torch.Tensor | None = None
        self.y = torch.as_tensor(self.data.y[self.lo:self.hi], device=self.device)
        # Which samples each client still trains on, and which nodes are still in the graph;
        # forgetting (exclude) changes both.
        self.retained = self.data.valid.copy()
        self.members = np.ones(n, dtype=bool)
        self.x_test = as_inputs(self.data.x_test, self.dtype, self.device)
        self.y_test = torch.as_tensor(self.data.y_test, device=self.device)
        # Further per-sample inputs (e.g. caption tokens) travel with the samples into batches.
        self.extras = {k: torch.as_tensor(v, device=self.device) for k, v in self.data.extras.items()}
        self.extras_test = {k: torch.as_tensor(v, device=self.device) for k, v in self.data.extras_test.items()}
        # Further test sets every node is scored on at every evaluation (e.g. a backdoor's triggered inputs).
        self.probes = {name: {"x": as_inputs(x, self.dtype, self.device),
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
            # one row seen n_local times (read-only: every user clones it); at 100,000 clients a
            # materialized copy would be 1.1 GB of the same numbers
            return v.to(self.device).expand(self.hi - self.lo, -1)
        return torch.stack([self.model.init_vector(seeding.int_seed(self.seed, client=i, purpose="init"), self.dtype)
                            for i in range(self.lo, self.hi)]).to(self.device)

    def set_params(self, rows: torch.Tensor, *, keep_optimizer_state: bool = False, copy: bool = True) -> None:
        """Replace this process's stacked parameters; the optimizer state (gradient tracking's
        tracker) restarts from them unless ``keep_optimizer_state``. ``copy=False`` takes ``rows``
        as they are (for a fresh tensor nobody else holds, e.g. the output of :meth:`mix`)."""
        rows = rows.detach().to(device=self.device, dtype=self.dtype)
        self.params = rows.clone() if copy or rows.data_ptr() == self.params.data_ptr() else rows
        if not keep_optimizer_state:
            self.optimizer_state = {}

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

    def train(self, rounds: int | None = None, *, progress: bool = False,
              callback: Callable[["Engine"], None] | None = None, desc: str = "train") -> None:
        """Run ``rounds`` more rounds (default: up to ``run.rounds``); ``callback(engine)`` is
        called after each one."""
        if rounds is None:
            rounds = max(self.config.run.rounds - self.round, 0)
        bar = progress_bar(total=rounds, desc=desc, show=progress and self.transport.is_root, leave=False)
        for _ in range(rounds):
            self.step()
            bar.update()
            if self.transport.is_root and self.metrics["round"] and self.metrics["round"][-1] == self.round:
                bar.set_postfix(loss=f"{self.metrics['loss_mean'][-1]:.4f}", acc=f"{self.metrics['test_acc_mean'][-1]:.3f}")
            if callback is not None:
                callback(self)
        bar.close()
