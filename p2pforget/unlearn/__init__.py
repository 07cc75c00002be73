"""Unlearning: forget requests, the :class:`Unlearner` interface, and :func:`forget`, which runs a
method next to the Retrain reference and measures both.

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

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import config as config_mod, metrics
from ..registry import METHODS

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
    counted_flops: float | None = None  # set by a method that counts its own FLOPs: it is not run again
    rounds: int = 1

    @classmethod
    def plain(cls, params: torch.Tensor, *, comm_bytes: float, rounds: int = 1) -> "Outcome":
        """The outcome of a method that publishes its models as they are, with no certificate."""
        return cls(noiseless=params, release=lambda: (params, None),
                   comm_bytes=comm_bytes, rounds=rounds)


class Unlearner(Protocol):
    """One unlearning method, registered with ``@METHODS.register(name, options=OptionsDataclass)``.

    ``unlearn`` must call ``engine.exclude`` for the request and return the new local parameters; it
    uses only the engine's public API and communicates only through it (every byte counted).
    """

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: Any) -> Outcome:
        ...

    # Optional: ``check(engine, request, options)`` raises ``ValueError`` for options the data
    # rule out; :func:`forget` calls it before any work.


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
    full = engine.full_batch()
    batch = {k: torch.stack([v[i, take[i]] for i in range(n_loc)]) for k, v in full.items() if k not in ("mask", "u")}
    return batch | {"mask": torch.as_tensor(mask, dtype=engine.dtype, device=engine.device)}


def evaluation_flops(engine: "Engine") -> float:
    """FLOPs of the engine's per-round metric evaluation (the same every round)."""
    return measured(lambda: engine.evaluate())[2]


def evaluated_rounds(engine: "Engine", start: int, rounds: int) -> int:
    """How many of the rounds ``start+1 .. start+rounds`` evaluate the engine's metrics."""
    return sum(engine.evaluates(r) for r in range(start + 1, start + rounds + 1))


def continue_training(engine: "Engine", rounds: int, request: ForgetRequest) -> float:
    """Train up to ``rounds`` more rounds with the engine's own algorithm (after the exclusion: the
    forgotten data take no part), calling ``request.after_round`` after each and stopping when it
    says so; returns the bytes sent. The per-round metric evaluation goes to ``request.excluded``."""
    start, eval_seconds = engine.round, engine.eval_seconds
    for _ in range(rounds):
        engine.train(1, progress=False, desc="unlearn")
        if request.after_round(engine.params):
            break
    request.excluded["seconds"] += engine.eval_seconds - eval_seconds
    evaluated = evaluated_rounds(engine, start, engine.round - start)
    if evaluated:
        # Measuring one evaluation is itself an evaluation, inside the caller's measurement: it is
        # left out too.
        _, seconds, flops = measured(lambda: engine.evaluate())
        request.excluded["seconds"] += seconds
        request.excluded["flops"] += (evaluated + 1) * flops
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
        local = change(engine.params, engine.local_steps(engine.params, key_round=key + engine.round * 1000 + r), r)
        if engine.is_star:
            full = engine.transport.gather(local)
            avg = weighted_average(full, weights) if engine.transport.is_root else None
            new = engine.transport.broadcast(avg, like=local[0]).expand_as(local)
        else:
            new = engine.mix(local, engine.base_mixing)
        engine.set_params(new)
        comm += engine.message_bytes(engine.base_mixing, 1, senders=int((np.asarray(weights) > 0).sum()))
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


def measured(fn):
    """Run ``fn()`` and return ``(result, seconds, flops)``."""
    # The FLOP counter imports torch._dynamo on its first use (about two seconds): import it before
    # the clock starts, so that whichever method is measured first is not charged for it.
    import torch._dynamo  # noqa: F401

    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, time.perf_counter() - start, float(counter.get_total_flops())


def _starting_point(engine: "Engine") -> dict[str, Any]:
    """What :func:`_flops_from` needs to start a method again where it started: the engine's
    state (on every process) and its exclusions."""
    return {"state": engine.transport.bcast_object(engine.state()), "retained": engine.retained.copy(),
            "members": engine.members.copy()}


def _flops_from(engine: "Engine", before: dict[str, Any], method: "Unlearner", request: ForgetRequest, opts) -> float:
    """The FLOPs of ``method`` on ``request``, counted by running it again from ``before`` on a
    copy of ``engine``, without the FA trace (its work is not the method's) and less the
    measurement work the method reports in ``request.excluded``. The timed run goes without the
    counter, which slows small operations down several times (Retrain is timed without it too)."""
    twin = type(engine)(config=engine.config, transport=engine.transport, aggregator=engine.aggregator)
    twin.exclude(samples={j: np.flatnonzero(~before["retained"][j]) for j in range(engine.n_clients)},
                 removed=np.flatnonzero(~before["members"]).tolist())
    twin.load_state(before["state"])
    quiet = dataclasses.replace(request, observe=None, excluded={"seconds": 0.0, "flops": 0.0}, progress=False,
                                monitor=None if request.monitor is None else request.monitor.fresh())
    _, _, flops = measured(lambda: _run_method(method, twin, quiet, opts))
    return flops - quiet.excluded["flops"]


def _run_method(method: "Unlearner", engine: "Engine", request: ForgetRequest, opts) -> Outcome:
    """The method on the request, its monitor (stopping rule and guard) started first: the
    guard's look at the starting models is the method's work too."""
    if request.monitor is not None:
        request.monitor.begin(engine.params)
    return method.unlearn(engine, request, opts)


def _observer(engine: "Engine", sets: metrics.EvalSets, nodes: np.ndarray, trace: list[float], spent: dict[str, float],
              *, optimum: np.ndarray | None = None, distances: list[float] | None = None):
    """``observe(params)``: FA of ``params`` appended to ``trace`` (and, with ``optimum``, the largest
    distance over ``nodes`` to it appended to ``distances`` at the root); its seconds and FLOPs are
    added to ``spent`` so that they can be taken out of the cost."""
    def observe(params: torch.Tensor) -> None:
        start = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            fa = metrics.forget_accuracy(engine, params, sets, nodes=nodes)
            if distances is not None:
                full = engine.gather_params(params)
                if full is not None:
                    distances.append(float(np.linalg.norm(full[nodes] - optimum, axis=1).max()))
        spent["seconds"] += time.perf_counter() - start
        spent["flops"] += float(counter.get_total_flops())
        spent["calls"] = spent.get("calls", 0) + 1
        if fa is not None:
            trace.append(fa)
    return observe


def _remaining_optimum(engine: "Engine") -> np.ndarray | None:
    """At the root, the optimum of the remaining objective for a strongly convex model small enough
    for a dense Newton solve (see :func:`.certified.remaining_optimum`); ``None`` otherwise."""
    from .certified import remaining_optimum

    if not engine.transport.is_root:
        return None
    return remaining_optimum(engine, np.zeros(engine.dim))  # from a start no method chose


def _prepare(engine: "Engine", *, clients, samples, method, mode, options):
    name = method or engine.config.unlearn.method
    entry = METHODS.entry(name)
    cfg = engine.config
    if options:
        cfg = config_mod.replace(cfg, unlearn={name: options})
    opts = cfg.unlearn.options(name)
    mode = mode or cfg.unlearn.mode
    if mode not in ("remove", "keep_relay"):
        raise config_mod.ConfigError(f"unlearn.mode = {mode!r} is not valid; choose one of: remove, keep_relay")
    request = ForgetRequest.build(engine, clients=clients, samples=samples, mode=mode)
    method_obj = entry.obj()
    if hasattr(method_obj, "check"):
        method_obj.check(engine, request, opts)
    return name, entry, opts, mode, request


def check_request(engine: "Engine", *, clients=(), samples: dict | None = None, method: str | None = None,
                  mode: str | None = None, **options) -> None:
    """Raise ``ValueError`` naming the problem if :func:`forget` with these arguments would fail on
    the request or the method's options (clients that do not exist, sample indices out of range,
    options the data rule out), before any work is done. Changes nothing."""
    _prepare(engine, clients=clients, samples=samples, method=method, mode=mode, options=options)


def forget(engine: "Engine", *, clients=(), samples: dict | None = None, method: str | None = None,
           mode: str | None = None, reference: bool = True, progress: bool = True,
           stopping: "config_mod.StoppingConfig | None" = None, **options) -> ForgetResult:
    """Forget ``clients`` and/or ``samples`` (client id -> indices) with ``method`` (default
    ``unlearn.method``; ``options`` override keys of its ``[unlearn.<method>]`` table), and train
    the Retrain reference next to it (unless ``reference=False``). ``stopping`` (default
    ``[stopping]`` of the config) is the stopping rule and collapse guard (:mod:`.stopping`); the
    result's ``status`` says how the method ended.

    Afterwards ``engine`` trains without the forgotten data, from the noiseless unlearned models
    (each node's private state; the released, noised models are in the result) or, with a
    method's ``finetune_rounds``, from the fine-tuned released models. Metrics are computed on the
    released models of the nodes still in the graph.
    """
    from .retrain import retrain

    name, entry, opts, mode, request = _prepare(engine, clients=clients, samples=samples, method=method, mode=mode,
                                                options=options)
    forgotten_mask = np.zeros_like(engine.retained)
    for j, idx in request.samples.items():
        forgotten_mask[j, idx] = True
    retained_after = engine.retained & ~forgotten_mask
    members_after = engine.members.copy()
    members_after[list(request.removed)] = False
    nodes = np.flatnonzero(members_after)
    sets = metrics.EvalSets.from_masks(engine, forgotten_mask, retained_after & members_after[:, None])
    trace: list[float] = []
    spent = request.excluded
    from .stopping import Monitor

    # Retrain is the reference: it runs as configured, unguarded and unstopped.
    monitor = None if name == "retrain" else Monitor.build(engine, stopping or engine.config.stopping,
                                                           forgotten=request.samples, nodes=nodes)
    request = dataclasses.replace(request, observe=_observer(engine, sets, nodes, trace, spent), progress=progress,
                                  monitor=monitor)

    trained = engine.params.clone()
    rounds = engine.round
    before = _starting_point(engine)
    import torch._dynamo  # noqa: F401  (imported on first use of torch.func: not the method's time)

    start = time.perf_counter()
    outcome = _run_method(entry.obj(), engine, request, opts)
    if monitor is not None and monitor.roll_back:
        # The guard saw the models collapse: they go back to the last check that passed.
        outcome = Outcome.plain(monitor.last_good.clone(), comm_bytes=outcome.comm_bytes, rounds=outcome.rounds)
        engine.set_params(outcome.noiseless)
    seconds = time.perf_counter() - start
    flops = (outcome.counted_flops if outcome.counted_flops is not None
             else _flops_from(engine, before, entry.obj(), request, opts))
    cost = Cost(seconds=seconds - spent["seconds"], flops=flops + outcome.extra_flops, comm_bytes=outcome.comm_bytes)
    retrain_trace: list[float] = []
    r_spent = {"seconds": 0.0, "flops": 0.0}
    fresh = None
    # The remaining optimum (convex models, simulator's global knowledge), traced along Retrain.
    optimum = _remaining_optimum(engine) if reference else None
    traced = engine.transport.bcast_object(optimum is not None)  # every rank takes part in the trace's gathers
    retrain_distances: list[float] | None = [] if traced else None
    if reference:
        fresh, r_cost = retrain(engine, rounds=rounds, progress=progress,
                                observe=_observer(engine, sets, nodes, retrain_trace, r_spent, optimum=optimum,
                                                  distances=retrain_distances))
        r_cost.seconds -= r_spent["seconds"]  # the FA trace is left out of both sides' cost alike
    released, certificate = outcome.release()
    # Nodes continue from their noiseless models and publish noised ones, so that later requests
    # start from the exact correction (sequential deletion as in Sekhari et al. 2021) ...
    engine.set_params(outcome.noiseless)
    finetune = getattr(opts, "finetune_rounds", 0)
    if finetune:
        # ... unless they fine-tune: training the published models on the remaining data is
        # post-processing that never touches the forgotten data, so a certificate still holds.
        engine.set_params(released)
        eval_seconds, start = engine.eval_seconds, engine.round
        _, seconds, flops = measured(lambda: engine.train(finetune, progress=False, desc="fine-tune"))
        cost.seconds += seconds - (engine.eval_seconds - eval_seconds)
        cost.flops += flops - evaluated_rounds(engine, start, finetune) * evaluation_flops(engine)
        cost.comm_bytes += float(sum(engine.metrics["bytes_sent"][rounds:])) if engine.transport.is_root else 0.0
        released = engine.params.clone()
    status = {"status": "ok", "flagged": False}
    if monitor is not None:
        # The guard's last look, at what is released, is the method's work too.
        status, seconds, flops = measured(lambda: monitor.final(released))
        cost.seconds += seconds
        cost.flops += flops
    cost = {"unlearn": cost}

    evaluated = {"trained": metrics.evaluate(engine, trained, sets, nodes=nodes),
                 "unlearned": metrics.evaluate(engine, released, sets, nodes=nodes)}
    if not spent.get("calls"):  # a one-shot method: its trace is the released models' FA (every rank takes part)
        fa = metrics.forget_accuracy(engine, released, sets, nodes=nodes)
        trace = [fa] if fa is not None else []
    local = {"trained": trained, "unlearned_noiseless": outcome.noiseless, "unlearned": released}
    if reference:
        cost["retrain"] = r_cost
        local["retrained"] = fresh.params
        evaluated["retrained"] = metrics.evaluate(engine, fresh.params, sets, nodes=nodes)

    gathered = {k: engine.gather_params(v) for k, v in local.items()}
    result = ForgetResult(method=name, forgotten={j: v.tolist() for j, v in request.samples.items()},
                          mode=mode, certificate=certificate, cost=cost, status=status)
    if engine.transport.is_root:
        # A node that left the graph releases nothing: its row of the released models is NaN.
        gathered["unlearned"] = np.where(members_after[:, None], gathered["unlearned"], np.nan)
        result.params = gathered
        result.metrics = evaluated
        fa_trained = evaluated["trained"]["FA"]["mean"] if evaluated["trained"]["FA"] else None
        result.traces = {"unlearned": [float(v) for v in trace if v is not None]}
        if reference:
            result.traces["retrained"] = [float(v) for v in retrain_trace if v is not None]
            ref = gathered["retrained"]
            base = metrics.distance(gathered["trained"], ref, nodes)
            target = evaluated["retrained"]["FA"]["mean"] if evaluated["retrained"]["FA"] else None
            for key in ("unlearned", "retrained"):
                evaluated[key].update(metrics.time_to_forget(result.traces[key], target=target, start=fa_trained))
            if optimum is not None:
                # The honest reference for a convex model: the remaining optimum itself, which
                # Retrain only approaches.
                for key in ("trained", "unlearned_noiseless", "unlearned", "retrained"):
                    dist = float(np.linalg.norm(gathered[key][nodes] - optimum, axis=1).max())
                    evaluated["unlearned" if key == "unlearned_noiseless" else key][
                        "distance_to_remaining_optimum" + ("_noiseless" if key == "unlearned_noiseless" else "")] = dist
                # Retrain at equal quality: the rounds (and their share of its seconds) until its
                # models are as close to the optimum as the unlearned noiseless ones.
                target = evaluated["unlearned"]["distance_to_remaining_optimum_noiseless"]
                hit = next((k + 1 for k, d in enumerate(retrain_distances) if d <= target), None)
                evaluated["retrained"]["equal_quality_rounds"] = hit
                evaluated["retrained"]["equal_quality_seconds"] = (r_cost.seconds * hit / rounds
                                                                   if hit is not None and rounds else None)
            for key in evaluated:
                # noiseless against noiseless: the release's noise is not an unlearning error
                d = metrics.distance(gathered["unlearned_noiseless" if key == "unlearned" else key], ref, nodes)
                evaluated[key]["distance_to_retrain"] = d
                evaluated[key]["relative_distance_to_retrain"] = d / base if base > 0 else 0.0
        if engine.config.audit.after_forget and engine.data.x_holdout is not None:
            from ..audit import audit

            result.audit = audit(engine, forgotten=request.samples, nodes=nodes, options=engine.config.audit,
                                 seed=engine.seed, models={k: gathered[k] for k in ("trained", "unlearned", "retrained")
                                                           if k in gathered})
    return result


from . import certified, retrain, foul, finetune, gradient_ascent, negation, ease, sfron, random_label, salun, stopping  # noqa: E402,F401  (register methods)
