"""The extension contract: one abstract class per extension point, and the engine members an
extension may use.

A registry (:mod:`p2pforget.registry`) checks what it is given against its extension point when
it is registered, so a plug-in that lacks a required method fails at import with the method
named, not in the middle of a run. A class need not inherit from these classes: one that defines
the abstract methods counts as a subclass (as ``collections.abc`` does).

=================  ======================================  ==============================================
extension point    registry / config key                   contract
=================  ======================================  ==============================================
:class:`Unlearner` ``METHODS`` / ``unlearn.method``        ``unlearn(engine, request, options) -> Outcome``
:class:`Aggregator` ``AGGREGATORS`` / ``train.aggregator`` ``aggregate(uploads) -> Tensor``
:class:`RoundRule` ``ROUNDS`` / ``train.algorithm``        ``(engine, W) -> vectors sent per message``
:class:`Dataset`   ``DATASETS`` / ``data.kind``            ``(data_cfg, n_clients, seed) -> FederatedData``
:class:`Model`     ``MODELS`` / ``model.kind``             ``(model_cfg, input_shape, n_classes) -> nn.Module``
=================  ======================================  ==============================================

Round rules, datasets and models are usually plain functions (any callable is accepted); the
classes are there for a plug-in that keeps state. Each may register ``options=`` (a frozen
dataclass: its own config table, see docs/guide/extending.md).

Example
-------
>>> class Mean:
...     def aggregate(self, uploads):
...         return uploads.client_params.mean(dim=0)
>>> issubclass(Mean, Aggregator)
True
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .aggregate import Uploads
    from .data import FederatedData
    from .engine import Engine
    from .unlearn import ForgetRequest, Outcome


class _Interface(abc.ABC):
    """A class counts as a subclass when it defines every abstract method (duck typing, checked)."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        required = [name for name in cls.__abstractmethods__]
        if cls in (Unlearner, Aggregator, RoundRule, Dataset, Model) and required:
            return all(callable(getattr(other, name, None)) for name in required) or NotImplemented
        return NotImplemented


class Unlearner(_Interface):
    """An unlearning method. ``unlearn`` must call ``engine.exclude`` for the request, communicate
    only through the engine (every byte counted) and return the new local models."""

    @abc.abstractmethod
    def unlearn(self, engine: "Engine", request: "ForgetRequest", options: Any) -> "Outcome":
        ...

    def check(self, engine: "Engine", request: "ForgetRequest", options: Any) -> None:
        """Raise ``ValueError`` for a request or options this method cannot run (before any work)."""


class Aggregator(_Interface):
    """The star hub's rule: the new global model from the clients' uploads."""

    @abc.abstractmethod
    def aggregate(self, uploads: "Uploads") -> "torch.Tensor":
        ...


class RoundRule(_Interface):
    """One training round: update ``engine``'s models (``set_params``) with the round's mixing
    matrix ``W``; return how many model vectors every message carried."""

    @abc.abstractmethod
    def __call__(self, engine: "Engine", W: Any) -> int:
        ...


class Dataset(_Interface):
    """A dataset builder: the federation's data for ``n_clients`` clients from ``[data]``."""

    @abc.abstractmethod
    def __call__(self, cfg: Any, n_clients: int, seed: int) -> "FederatedData":
        ...


class Model(_Interface):
    """A model builder: an ``nn.Module`` from ``[model]``, the input shape and the class count."""

    @abc.abstractmethod
    def __call__(self, cfg: Any, input_shape: tuple[int, ...], n_classes: int) -> "nn.Module":
        ...


ENGINE_API: dict[str, str] = {
    # the federation
    "config": "the experiment's Config",
    "n_clients": "clients in the federation",
    "lo": "first client id this process hosts",
    "hi": "one past the last client id this process hosts",
    "local_ids": "range(lo, hi)",
    "seed": "run.seed",
    "device": "the torch device",
    "dtype": "the training dtype",
    "dim": "parameters per model",
    "graph": "the gossip graph (networkx; a star's hub is node n_clients)",
    "is_star": "whether the topology is a star (FedAvg rounds)",
    "members": "[n_clients] bool: nodes still in the graph",
    "retained": "[n_clients, m] bool: samples still trained on",
    "sample_counts": "[n_clients] samples each client trains on",
    "has_data": "[n_clients] bool: clients that hold data",
    "active": "[n_local] 1 for local clients that hold data",
    "objective_weights": "each client's weight in the global objective",
    "data": "the FederatedData",
    "model": "the FlatModel",
    "task": "the objective, scores and losses of the model",
    "aggregator": "the star hub's Aggregator",
    "transport": "moves rows between processes (gather, bcast_object, allreduce)",
    # state and its life
    "round": "rounds done",
    "params": "[n_local, dim] this process's models",
    "set_params": "replace this process's models",
    "buffers": "[n_local, buffer_dim] running statistics (BatchNorm)",
    "optimizer_state": "per-client optimizer state (momentum, trackers)",
    "hooks": "what methods installed, acting every round (p2pforget.hooks)",
    "ledger": "the influence ledger (p2pforget.ledger.Ledger; None when [ledger] kind = \"off\")",
    "ledger.shares": "each client's share of every local model",
    "metrics": "the per-round metrics (at the root)",
    "eval_seconds": "seconds spent on per-round metrics (bookkeeping, charged to nobody)",
    "train": "run more rounds",
    "evaluates": "whether a round computes the metrics",
    "evaluate": "per-client metrics of stacked models",
    "fork": "an independent twin (or a fresh one: round 0)",
    "exclude": "take samples out of training and nodes out of the graph",
    # engine.batches: the clients' data as batches (p2pforget.engine.batches.Batches)
    "batches": "the clients' data as batches",
    "batches.minibatch": "the round's minibatches",
    "batches.full": "every sample with the mask of those still trained on",
    "batches.test": "the test split for every local client",
    "batches.x_test": "the test inputs",
    "batches.probes": "extra test sets scored every evaluation (e.g. a backdoor's triggered inputs)",
    "batches.samples": "the samples a mask picks, gathered from the processes that hold them",
    "batches.client_samples": "samples of one client in a given order, from the process that holds them",
    "batches.inputs": "every client's training inputs on every process (gathered)",
    # engine.compute: the clients' arithmetic (p2pforget.engine.compute.Compute)
    "compute": "gradients, local steps and running statistics",
    "compute.objective": "the regularized training objective",
    "compute.gradients": "gradients of every local client",
    "compute.training_gradients": "gradients of the clients that train, streamed to an update",
    "compute.local_steps": "train.local_steps optimizer steps of every local client",
    "compute.per_client": "a function of every local client's row, vmapped",
    "compute.with_buffers": "models followed by their running statistics, for evaluation",
    # engine.network: communication (p2pforget.engine.network.Network)
    "network": "mixing, exchanges, sums and bytes",
    "network.base_mixing": "the graph's mixing matrix",
    "network.round_mixing": "the matrix a round rule mixes with",
    "network.mix": "one gossip step of stacked rows",
    "network.neighbours": "a client's neighbours",
    "network.neighbour_rows": "the neighbours' rows, through the transport",
    "network.sum": "the exact sum of rows over the network (tree or gossip), with its bytes",
    "network.mean": "the exact mean of the members' rows",
    "network.gather": "all clients' rows at the root",
    "network.message_bytes": "bytes one exchange moves",
    "network.member_graph": "the graph of the nodes still in it",
}
"""The engine members an extension (unlearning method, round rule, metric, plug-in) may use, each
with what it is; a dotted name is a member of one of the engine's parts (``engine.network.mix``).
``tests/test_api.py`` checks that the package's methods, round rules, metrics and the example
plug-ins use no other, and that each exists."""
