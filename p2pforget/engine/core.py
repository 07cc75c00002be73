"""The engine's kernel: its state (this process's clients, models, statistics, optimizer state,
ledger, metrics), membership and exclusions, and the round loop; see :mod:`p2pforget.engine`."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .. import aggregate, data as datasets, devices, models, seeding, topology
from ..config import Config
from .. import transport as transport_mod
from ..hooks import Hook
from ..ledger import Ledger
from ..progress import bar as progress_bar
from ..registry import AGGREGATORS, DATASETS, ROUNDS
from ..tasks import Task
from ..transport import Transport
from . import checkpoint, evaluation
from .batches import Batches
from .compute import Compute
from .network import Network

EVAL_METRICS = ("loss_mean", "test_acc_mean", "test_acc_min", "test_acc_of_mean", "consensus_distance")
"""Recorded at evaluation rounds (``run.eval_every``), listed in ``metrics["round"]``: the mean and
worst of the nodes' own test accuracies, and the test accuracy of the nodes' mean model."""
METRICS = ("round", *EVAL_METRICS, "bytes_sent")
"""``bytes_sent`` has one entry per round."""
PER_NODE = ("loss", "test_acc", "distance_to_mean")
"""Kept for every node at every evaluation round (``metrics/per_node/<name>``: ``[evaluations, n_clients]``),
with the score on each of the data's probes (e.g. ``ASR``, :mod:`p2pforget.poison`), whose mean over
the nodes is the metric ``<name>_mean``."""


class Engine:
    """Decentralized training of ``n_clients`` models on a gossip graph (or a star = FedAvg).

    The engine holds the state and runs the round; its parts do the rest: ``batches`` (the
    clients' data as batches, :class:`~p2pforget.engine.batches.Batches`), ``compute``
    (gradients, local steps, running statistics, :class:`~p2pforget.engine.compute.Compute`) and
    ``network`` (mixing, exchanges, sums, bytes, :class:`~p2pforget.engine.network.Network`).
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
        # Which samples each client still trains on, and which nodes are still in the graph;
        # forgetting (exclude) changes both.
        self.retained = self.data.valid.copy()
        self.members = np.ones(n, dtype=bool)
        self.model = models.FlatModel(models.build(cfg.model, input_shape=self.data.input_shape, n_classes=self.data.n_classes))
        self.model.module.to(self.device)
        self.task = Task(model=self.model, weight_decay=cfg.train.weight_decay)
        self.dim = self.model.dim
        self.batches, self.compute, self.network = Batches(self), Compute(self), Network(self)
        self.refresh()
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
        self.ledger = self.empty_ledger()
        self.round = 0
        probes = tuple(self.batches.probes)
        self.metrics: dict[str, list[float]] = {name: [] for name in METRICS + tuple(f"{p}_mean" for p in probes)}
        self.per_node: dict[str, list[np.ndarray]] = {name: [] for name in PER_NODE + probes}  # at the root
        self.eval_seconds = 0.0  # spent on the per-round metrics: simulator bookkeeping, not training

    @property
    def sample_counts(self) -> np.ndarray:
        """Samples each client trains on (0 for a client that has been forgotten entirely)."""
        return self.retained.sum(axis=1).astype(np.float64) * self.members

    @property
    def has_data(self) -> np.ndarray:
        return self.sample_counts > 0

    @property
    def local_ids(self) -> range:
        return range(self.lo, self.hi)

    def objective_weights(self) -> np.ndarray:
        """Weight ``a_k`` of each client's objective in what training minimizes: 1 on a gossip graph
        (``sum_k f_k``); on a star, FedAvg's sample-count weights scaled so equal clients weigh 1."""
        if self.is_star:
            return self.sample_counts / self.data.counts.mean()
        return self.has_data.astype(np.float64)

    def refresh(self) -> None:
        """Follow the membership and exclusions in every part (after :meth:`exclude`, in a fork)."""
        # [n_local]: 1 for local clients that hold data (their objective has weight decay), 0 for relays
        self.active = torch.as_tensor(self.has_data[self.lo:self.hi], dtype=self.dtype, device=self.device)
        for part in (self.batches, self.compute, self.network):
            part.refresh()

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
            topology.check_connected(self.network.member_graph(),
                                     hint=f"removing node(s) {removed} splits the graph; use unlearn.mode = \"keep_relay\"")
        self.refresh()

    def _init_params(self) -> torch.Tensor:
        if self.config.train.same_init or self.is_star:
            v = self.model.init_vector(seeding.int_seed(self.seed, purpose="init"), self.dtype)
            # one row seen n_local times (read-only: every user clones it); at 100,000 clients a
            # materialized copy would be 1.1 GB of the same numbers
            return v.to(self.device).expand(self.hi - self.lo, -1)
        return torch.stack([self.model.init_vector(seeding.int_seed(self.seed, client=i, purpose="init"), self.dtype)
                            for i in range(self.lo, self.hi)]).to(self.device)

    def empty_ledger(self) -> Ledger | None:
        """A zero influence ledger of ``[ledger] kind`` for this process's nodes (``None``: off)."""
        cfg = self.config.ledger
        return Ledger.empty(cfg.kind_for(self.n_clients), lo=self.lo, hi=self.hi, n=self.n_clients, keep=cfg.keep,
                            device=self.device)

    def set_params(self, rows: torch.Tensor, *, keep_optimizer_state: bool = False, copy: bool = True) -> None:
        """Replace this process's stacked parameters; the optimizer state (gradient tracking's
        tracker) restarts from them unless ``keep_optimizer_state``. ``copy=False`` takes ``rows``
        as they are (for a fresh tensor nobody else holds, e.g. the output of ``network.mix``)."""
        rows = rows.detach().to(device=self.device, dtype=self.dtype)
        self.params = rows.clone() if copy or rows.data_ptr() == self.params.data_ptr() else rows
        if not keep_optimizer_state:
            self.optimizer_state = {}

    def step(self) -> None:
        """One round of the configured algorithm (see :mod:`p2pforget.rounds`), then, at an
        evaluation round (``run.eval_every``), the round's metrics."""
        W = self.network.mixing_at(self.round)
        before = self.params
        vectors = self._round_fn(self, W)
        for hook in self.hooks.values():
            self.set_params(hook.after_round(before, self.params), keep_optimizer_state=True, copy=False)
        sent = self.network.message_bytes(W, vectors) + self.network.share_buffers(W)
        if self.ledger is not None:
            self.ledger.step(self.network.round_mixing(W), self.network)
        self.round += 1
        if self.transport.is_root:
            self.metrics["bytes_sent"].append(sent)
        if self.evaluates(self.round):
            evaluation.record(self)

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

    def evaluate(self, params: torch.Tensor | None = None) -> dict[str, np.ndarray] | None:
        """Per-client train objective, test accuracy and distance to the members' mean model of
        stacked ``params`` (default: current), as full (n_clients,) arrays at the root (``None``
        elsewhere). Only per-client numbers travel: the mean model comes from an allreduce."""
        return evaluation.evaluate(self, params)

    def state(self) -> dict[str, np.ndarray] | None:
        """Everything needed to continue training bit-identically (at the root; ``None`` elsewhere)."""
        return checkpoint.state(self)

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (every process passes the same full dict), checked against this
        engine's shapes first (a damaged or foreign checkpoint is refused, naming the array)."""
        checkpoint.load_state(self, state)

    def fork(self, *, fresh: bool = False) -> "Engine":
        """A second engine over the same data, model, transport and exclusions, with its own copy
        of everything training changes (models, statistics, optimizer state, ledger, hooks, metrics,
        graph), so that it can run on without touching this one; nothing is rebuilt from the config.
        ``fresh``: it starts where training started (round 0, the initial models), as retraining
        from scratch does. Under MPI every process calls it (the neighbourhood exchange is set up again).

        >>> from p2pforget import Engine, config
        >>> engine = Engine(config=config.from_dict({"topology": {"n_clients": 4}}))
        >>> engine.train(2, progress=False)
        >>> twin = engine.fork()
        >>> twin.train(1, progress=False)
        >>> engine.round, twin.round, engine.fork(fresh=True).round
        (2, 3, 0)
        """
        return checkpoint.fork(self, fresh=fresh)

    def node_module(self, client: int, params: torch.Tensor | None = None) -> torch.nn.Module:
        """Node ``client``'s model (default: its current one; or its row of stacked local
        ``params``) as a standalone ``nn.Module`` in ``eval()`` mode, running statistics
        included: ``engine.node_module(3)(x)`` is what node 3 predicts. Every process takes part
        under MPI, and every process gets the module.

        >>> from p2pforget import Engine, config
        >>> engine = Engine(config=config.from_dict({"topology": {"n_clients": 3}, "data": {"n_samples_per_client": 6}}))
        >>> x = engine.batches.x_test
        >>> bool((engine.node_module(1)(x).argmax(1) == engine.task.logits(engine.params[1], x).argmax(1)).all())
        True
        """
        return checkpoint.node_module(self, client, params)
