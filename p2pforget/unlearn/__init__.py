"""Unlearning: forget requests, the :class:`~p2pforget.api.Unlearner` interface, and :func:`forget`
(:mod:`.pipeline`), which runs a method once next to the Retrain reference and measures both.

One method per module, each registered in :data:`~p2pforget.registry.METHODS` with its options
dataclass (the keys of ``[unlearn.<method>]``): :mod:`.certified` (decentralized Newton/Fisher with
calibrated noise), :mod:`.retrain` (the gold reference), :mod:`.foul` (FOUL), :mod:`.ease` (EASE, for CLIP), :mod:`.sfron` (SFR-on), and the baselines
:mod:`.finetune`, :mod:`.gradient_ascent`, :mod:`.negation` (NoT), :mod:`.random_label` and
:mod:`.salun` (SalUn).

Example
-------
>>> from p2pforget import Engine, config
>>> from p2pforget.unlearn import forget
>>> cfg = config.from_dict({"topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10},
...                         "train": {"dtype": "float64"}, "unlearn": {"certified": {"noise": False}}})
>>> engine = Engine(config=cfg)
>>> engine.train(3, progress=False)
>>> result = forget(engine, clients=[2], progress=False)
>>> result.method, result.forgotten
('certified', {2: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..flops import measured

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget: whole clients and/or some samples of clients, and what happens to a forgotten
    client's node (``remove``: it leaves the graph; ``keep_relay``: it stays, holding no data).

    A method that works in rounds calls :meth:`after_round` after each of them and stops when it
    returns ``True``: it calls ``observe(params)`` (when set), so the caller can trace forgetting
    over time (time-to-forget), and asks the ``monitor`` (the stopping rule and collapse guard of
    :mod:`.stopping`, whose work is the method's). ``excluded`` collects the seconds and FLOPs of
    measurement work (the trace, the engine's per-round metrics), which the caller takes out of the
    method's cost, as it does for Retrain.
    """

    samples: dict[int, np.ndarray]   # client id -> indices of its samples to forget
    whole_clients: tuple[int, ...]
    mode: str
    observe: Callable[[torch.Tensor], None] | None = field(default=None, compare=False)
    excluded: dict[str, float] = field(default_factory=lambda: {"seconds": 0.0, "flops": 0.0}, compare=False)
    progress: bool = field(default=True, compare=False)  # whether the method may show progress bars
    monitor: Any = field(default=None, compare=False)  # a stopping.Monitor, or None: the method runs its budget

    def after_round(self, params: torch.Tensor) -> bool:
        """Call after each of the method's rounds with the current models: ``True`` means stop."""
        if self.observe is not None:
            self.observe(params)
        return self.monitor is not None and self.monitor.check(params)

    @property
    def stopped(self) -> bool:
        """Whether the monitor has stopped the method (for a loop whose rounds call a helper)."""
        return self.monitor is not None and self.monitor.stopped

    @property
    def clients(self) -> list[int]:
        """Every client with forgotten samples, in increasing id."""
        return sorted(self.samples)

    @property
    def removed(self) -> tuple[int, ...]:
        return self.whole_clients if self.mode == "remove" else ()

    @classmethod
    def build(cls, engine: "Engine", *, clients=(), samples: dict | None = None, mode: str = "remove") -> "ForgetRequest":
        out: dict[int, np.ndarray] = {}
        for j in clients:
            _check_client(engine, int(j))
            out[int(j)] = np.flatnonzero(engine.retained[int(j)])
        for j, idx in (samples or {}).items():
            j = int(j)
            _check_client(engine, j)
            idx = np.unique(np.asarray(idx, dtype=np.int64))
            m = int(engine.data.counts[j])
            if len(idx) and (idx.min() < 0 or idx.max() >= m):
                raise ValueError(f"sample indices of client {j} must lie in 0..{m - 1}; got {idx.min()}..{idx.max()}")
            gone = idx[~engine.retained[j, idx]]
            if len(gone):
                raise ValueError(f"client {j}'s samples {gone.tolist()[:5]} were already forgotten")
            out[j] = np.union1d(out.get(j, np.array([], dtype=np.int64)), idx)
        if not out or not any(len(v) for v in out.values()):
            raise ValueError("nothing to forget: give clients (e.g. --clients 3) or samples (e.g. --samples 3:0,5)")
        whole = tuple(sorted(j for j in out if len(out[j]) == engine.retained[j].sum()))
        left = engine.retained & engine.members[:, None]
        for j, idx in out.items():
            left[j, idx] = False
        if not left.any():
            raise ValueError("this request would forget every sample still trained on, leaving nothing to train or "
                             "unlearn towards; keep at least one client's data (forget fewer clients)")
        return cls(samples=out, whole_clients=whole, mode=mode)


def _check_client(engine: "Engine", j: int) -> None:
    if not 0 <= j < engine.n_clients:
        raise ValueError(f"client {j} does not exist; client ids are 0..{engine.n_clients - 1}")
    if not engine.members[j] or not engine.has_data[j]:
        raise ValueError(f"client {j} holds no data any more (it was forgotten before)")


@dataclass
class Outcome:
    """What an unlearning method produces (local rows of this process).

    ``release()`` returns the models to publish and the certificate (``None`` for a method that
    issues none), drawn from ``noiseless``; it runs outside the cost measurement. ``noiseless`` is
    each node's private state (the released models for a method that adds no noise); ``rounds``
    is how many communication rounds the method ran.
    """

    noiseless: torch.Tensor
    release: Callable[..., tuple[torch.Tensor, dict[str, Any] | None]]
    comm_bytes: float
    extra_flops: float = 0.0  # work the FLOP counter cannot see (dense solves)
    rounds: int = 1

    @classmethod
    def plain(cls, params: torch.Tensor, *, comm_bytes: float, rounds: int = 1) -> "Outcome":
        """The outcome of a method that publishes its models as they are, with no certificate."""
        return cls(noiseless=params, release=lambda: (params, None),
                   comm_bytes=comm_bytes, rounds=rounds)


def class_samples(engine: "Engine", classes) -> dict[int, np.ndarray]:
    """A class-level request as a sample-level one: client id -> indices of its samples still
    trained on whose label is one of ``classes`` (clients without any are left out). Pass it as
    ``forget(engine, samples=class_samples(engine, [3]))``.

    >>> from p2pforget import Engine, config
    >>> engine = Engine(config=config.from_dict({"topology": {"n_clients": 3}, "data": {"n_samples_per_client": 6}}))
    >>> picked = class_samples(engine, [1])
    >>> all((engine.data.y[j, idx] == 1).all() for j, idx in picked.items())
    True
    """
    wanted = np.isin(engine.data.y, np.asarray(list(classes))) & engine.retained
    return {j: np.flatnonzero(wanted[j]) for j in range(engine.n_clients) if wanted[j].any()}


def require_classifier(engine: "Engine", method: str) -> None:
    """Refuse a model that defines its own losses (CLIP's contrastive loss, a model with its own
    ``score``): methods that relabel samples or ascend their cross-entropy need a classifier."""
    if engine.task.has_terms or hasattr(engine.model.module, "score"):
        raise ValueError(f"unlearn.method = {method!r} needs a classifier trained with cross-entropy; "
                         f"model.kind = {engine.config.model.kind!r} defines its own losses")


def forget_batch(engine: "Engine", samples: dict[int, np.ndarray]) -> dict[str, torch.Tensor]:
    """The given samples of this process's clients (client id -> indices) as one dense batch
    ``[n_local, b, ...]`` (``b`` = the most samples any client has), with their extras (e.g.
    caption tokens) and ``mask`` (1 for real samples; clients without any are all padding)."""
    n_loc = engine.hi - engine.lo
    width = max(max((len(v) for v in samples.values()), default=1), 1)
    idx = np.zeros((n_loc, width), dtype=np.int64)
    mask = np.zeros((n_loc, width))
    for j, picked in samples.items():
        if engine.lo <= j < engine.hi:
            idx[j - engine.lo, :len(picked)] = picked
            mask[j - engine.lo, :len(picked)] = 1.0
    take = torch.as_tensor(idx, device=engine.device)
    full = engine.batches.full()
    batch = {k: torch.stack([v[i, take[i]] for i in range(n_loc)]) for k, v in full.items() if k not in ("mask", "u")}
    return batch | {"mask": torch.as_tensor(mask, dtype=engine.dtype, device=engine.device)}


def evaluation_work(engine: "Engine", start: int, rounds: int) -> tuple[float, float, float]:
    """The engine's per-round metric evaluations in rounds ``start+1 .. start+rounds`` (simulator
    bookkeeping, charged to nobody): ``(their FLOPs, one evaluation's FLOPs, its seconds)``,
    counted on one evaluation run here; zeros when none of the rounds evaluates. Run inside a
    caller's measurement, that one evaluation is measurement work too: the caller leaves it out."""
    evaluated = sum(engine.evaluates(r) for r in range(start + 1, start + rounds + 1))
    if not evaluated:
        return 0.0, 0.0, 0.0
    _, seconds, one = measured(lambda: engine.evaluate())
    return evaluated * one, one, seconds


def continue_training(engine: "Engine", rounds: int, request: ForgetRequest) -> float:
    """Train up to ``rounds`` more rounds with the engine's own algorithm (after the exclusion: the
    forgotten data take no part), calling ``request.after_round`` after each and stopping when it
    says so; returns the bytes sent. The per-round metric evaluation goes to ``request.excluded``."""
    start, eval_seconds = engine.round, engine.eval_seconds
    for _ in range(rounds):
        engine.train(1, progress=False, desc="unlearn")
        if request.after_round(engine.params):
            break
    flops, one, seconds = evaluation_work(engine, start, engine.round - start)
    request.excluded["seconds"] += engine.eval_seconds - eval_seconds + seconds
    request.excluded["flops"] += flops + one
    sent = float(sum(engine.metrics["bytes_sent"][start:])) if engine.transport.is_root else None
    return engine.transport.bcast_object(sent)


def rounds_with_local_change(engine: "Engine", rounds: int, request: ForgetRequest,
                              change: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], *, weights: np.ndarray,
                              key: int) -> float:
    """``rounds`` rounds in which every node trains its local steps on the data it still trains on,
    ``change(params, local, r)`` turns those local models into the ones sent (e.g. adding a step on
    the forgotten data at the nodes that hold them), and the result is averaged at the hub (star,
    ``weights``, e.g. the sample counts before the forgotten data were excluded, so that the
    nodes stepping on them count) or mixed with the neighbours (gossip); calls
    ``request.after_round`` after each round (stopping when it says so) and returns the bytes sent. Batches are keyed by
    ``key + round * 1000 + r`` so that they never repeat training's."""
    from ..aggregate import weighted_average

    comm = 0.0
    for r in range(rounds):
        local = change(engine.params, engine.compute.local_steps(engine.params, key_round=key + engine.round * 1000 + r), r)
        if engine.is_star:
            full = engine.transport.gather(local)
            avg = weighted_average(full, weights) if engine.transport.is_root else None
            new = engine.transport.broadcast(avg, like=local[0]).expand_as(local)
        else:
            new = engine.network.mix(local, engine.network.base_mixing)
        engine.set_params(new)
        comm += engine.network.message_bytes(engine.network.base_mixing, 1, senders=int((np.asarray(weights) > 0).sum()))
        if request.after_round(engine.params):
            break
    return comm


@dataclass
class Cost:
    seconds: float
    flops: float
    comm_bytes: float


@dataclass
class ForgetResult:
    """Everything one forget request produced; the arrays and metric dicts are filled at the root."""

    method: str
    forgotten: dict[int, list[int]]
    mode: str
    certificate: dict[str, Any] | None
    cost: dict[str, Cost]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    traces: dict[str, list[float]] = field(default_factory=dict)  # FA after each unlearning / retraining round
    audit: dict[str, Any] | None = None  # see p2pforget.audit; at the root, when [audit] after_forget
    status: dict[str, Any] = field(default_factory=lambda: {"status": "ok", "flagged": False})  # see .stopping


from .pipeline import check_request, forget  # noqa: E402
from . import certified, retrain, foul, finetune, gradient_ascent, negation, ease, sfron, random_label, salun, stopping  # noqa: E402,F401  (register methods)
