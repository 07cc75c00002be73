"""Unlearning: forget requests, the :class:`Unlearner` interface, and :func:`forget`, which runs a
method next to the Retrain reference and measures both.

One method per module: :mod:`.certified` (decentralized Newton/Fisher with calibrated noise) and
:mod:`.retrain` (training from scratch without the forgotten data: the gold reference).

Example
-------
>>> from p2pforget import Engine, config
>>> cfg = config.from_dict({"topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10},
...                         "train": {"dtype": "float64"}, "unlearn": {"noise": False}})
>>> engine = Engine(config=cfg)
>>> engine.train(3, progress=False)
>>> result = engine.forget(clients=[2], progress=False)
>>> result.certificate["method"], result.forgotten
('certified', {2: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]})
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import metrics
from ..config import UnlearnConfig

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget: whole clients and/or some samples of clients, and what happens to a forgotten
    client's node (``remove``: it leaves the graph; ``keep_relay``: it stays, holding no data)."""

    samples: dict[int, np.ndarray]   # client id -> indices of its samples to forget
    whole_clients: tuple[int, ...]
    mode: str

    @property
    def removed(self) -> tuple[int, ...]:
        return self.whole_clients if self.mode == "remove" else ()

    @classmethod
    def build(cls, engine: "Engine", *, clients=(), samples: dict | None = None, mode: str = "remove") -> "ForgetRequest":
        n, m = engine.retained.shape
        out: dict[int, np.ndarray] = {}
        for j in clients:
            _check_client(engine, int(j))
            out[int(j)] = np.flatnonzero(engine.retained[int(j)])
        for j, idx in (samples or {}).items():
            j = int(j)
            _check_client(engine, j)
            idx = np.unique(np.asarray(idx, dtype=np.int64))
            if len(idx) and (idx.min() < 0 or idx.max() >= m):
                raise ValueError(f"sample indices of client {j} must lie in 0..{m - 1}; got {idx.min()}..{idx.max()}")
            gone = idx[~engine.retained[j, idx]]
            if len(gone):
                raise ValueError(f"client {j}'s samples {gone.tolist()[:5]} were already forgotten")
            out[j] = np.union1d(out.get(j, np.array([], dtype=np.int64)), idx)
        if not out or not any(len(v) for v in out.values()):
            raise ValueError("nothing to forget: give clients (e.g. --clients 3) or samples (e.g. --samples 3:0,5)")
        whole = tuple(sorted(j for j in out if len(out[j]) == engine.retained[j].sum()))
        return cls(samples=out, whole_clients=whole, mode=mode)


def _check_client(engine: "Engine", j: int) -> None:
    if not 0 <= j < engine.n_clients:
        raise ValueError(f"client {j} does not exist; client ids are 0..{engine.n_clients - 1}")
    if not engine.members[j] or not engine.has_data[j]:
        raise ValueError(f"client {j} holds no data any more (it was forgotten before)")


@dataclass
class Outcome:
    """What an unlearning method produces (local rows of this process).

    ``release()`` returns the models to publish and the certificate. It runs outside the cost
    measurement: the simulator evaluates the certificate with global knowledge of the data.
    """

    noiseless: torch.Tensor
    release: Callable[[], tuple[torch.Tensor, dict[str, Any]]]
    comm_bytes: float
    extra_flops: float = 0.0  # work the FLOP counter cannot see (dense solves)


class Unlearner(Protocol):
    """One unlearning method. ``unlearn`` must call ``engine.exclude`` for the request and return the
    new local parameters; it may communicate only through ``engine``'s transport."""

    name: str

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: UnlearnConfig) -> Outcome:
        ...


def registry() -> dict[str, type]:
    from .certified import CertifiedNewton
    from .retrain import Retrain

    return {"certified": CertifiedNewton, "retrain": Retrain}


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
    certificate: dict[str, Any]
    cost: dict[str, Cost]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)


def measured(fn):
    """Run ``fn()`` and return ``(result, seconds, flops)``."""
    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, time.perf_counter() - start, float(counter.get_total_flops())


def forget(engine: "Engine", *, clients=(), samples: dict | None = None, options: UnlearnConfig | None = None,
           reference: bool = True, progress: bool = True) -> ForgetResult:
    """Forget ``clients`` and/or ``samples`` (client id -> indices) with ``options.method``, and train
    the Retrain reference next to it (unless ``reference=False``).

    Afterwards ``engine`` trains without the forgotten data, from the noiseless unlearned models
    (each node's private state; the released, noised models are in the result) or, with
    ``finetune_rounds``, from the fine-tuned released models. Metrics are computed on the released
    models of the nodes still in the graph.
    """
    from .retrain import retrain

    opts = options or engine.config.unlearn
    methods = registry()
    if opts.method not in methods:
        raise ValueError(f"unknown unlearn.method {opts.method!r}; choose one of: {', '.join(methods)}")
    request = ForgetRequest.build(engine, clients=clients, samples=samples, mode=opts.mode)
    forgotten_mask = np.zeros_like(engine.retained)
    for j, idx in request.samples.items():
        forgotten_mask[j, idx] = True

    trained = engine.params.clone()
    rounds = engine.round
    outcome, seconds, flops = measured(lambda: methods[opts.method]().unlearn(engine, request, opts))
    cost = Cost(seconds=seconds, flops=flops + outcome.extra_flops, comm_bytes=outcome.comm_bytes)
    released, certificate = outcome.release()
    # Nodes continue from their noiseless models and publish noised ones, so that later requests
    # start from the exact correction (sequential deletion as in Sekhari et al. 2021) ...
    engine.params = outcome.noiseless.clone()
    engine.tracker = engine.last_grad = None  # gradient tracking restarts from the new models
    if opts.finetune_rounds:
        # ... unless they fine-tune: training the published models on the remaining data is
        # post-processing that never touches the forgotten data, so the certificate still holds.
        engine.params = released.clone()
        _, seconds, flops = measured(lambda: engine.train(opts.finetune_rounds, progress=False, desc="fine-tune"))
        cost.seconds += seconds
        cost.flops += flops
        cost.comm_bytes += float(sum(engine.metrics["bytes_sent"][rounds:])) if engine.transport.is_root else 0.0
        released = engine.params.clone()
    cost = {"unlearn": cost}

    nodes = np.flatnonzero(engine.members)
    sets = metrics.EvalSets.from_masks(engine, forgotten_mask, engine.retained & engine.members[:, None])
    evaluated = {"trained": metrics.evaluate(engine, trained, sets, nodes=nodes),
                 "unlearned": metrics.evaluate(engine, released, sets, nodes=nodes)}
    local = {"trained": trained, "unlearned_noiseless": outcome.noiseless, "unlearned": released}
    if reference:
        retrained, r_cost = retrain(engine, rounds=rounds, progress=progress)
        cost["retrain"] = r_cost
        local["retrained"] = retrained.params
        evaluated["retrained"] = metrics.evaluate(engine, retrained.params, sets, nodes=nodes)

    gathered = {k: engine.gather_params(v) for k, v in local.items()}
    result = ForgetResult(method=opts.method, forgotten={j: v.tolist() for j, v in request.samples.items()},
                          mode=opts.mode, certificate=certificate, cost=cost)
    if engine.transport.is_root:
        result.params = gathered
        result.metrics = evaluated
        if reference:
            ref = gathered["retrained"]
            base = metrics.distance(gathered["trained"], ref, nodes)
            for name in evaluated:
                d = metrics.distance(gathered[name], ref, nodes)
                evaluated[name]["distance_to_retrain"] = d
                evaluated[name]["relative_distance_to_retrain"] = d / base if base > 0 else 0.0
    return result
