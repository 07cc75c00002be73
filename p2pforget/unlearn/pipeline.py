"""One forget request: the method runs once, and everything measured about it is a probe on that run.

:func:`forget` is a short pipeline:

1. :func:`plan` checks the request and builds what the probes need (evaluation sets, the
   stopping rule and guard of :mod:`.stopping`);
2. :func:`run_method` runs the method **once** under :func:`~p2pforget.flops.measured`: its
   seconds and FLOPs (gossip included) come from that run, less the work of the probes that
   watch it (the FA trace, the engine's per-round metrics), which report what they spent;
3. :func:`retrain_reference` trains Retrain on a fresh :meth:`~p2pforget.engine.Engine.fork` of the
   engine (same data, no rebuilding), measured the same way;
4. the release, an optional fine-tune, the guard's last look, metrics, distances and the audit.

Example
-------
>>> from p2pforget import Engine, config
>>> cfg = config.from_dict({"topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10},
...                         "train": {"dtype": "float64"}, "unlearn": {"certified": {"noise": False}}})
>>> engine = Engine(config=cfg)
>>> engine.train(3, progress=False)
>>> result = forget(engine, clients=[2], progress=False)
>>> sorted(result.cost), result.status["status"]
(['retrain', 'unlearn'], 'ok')
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import config as config_mod, metrics
from ..flops import counter, measured
from ..registry import METHODS
from . import Cost, ForgetRequest, ForgetResult, Outcome, evaluation_work

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass
class Plan:
    """A checked request and what its probes need."""

    name: str
    method: Any
    options: Any
    request: ForgetRequest
    sets: metrics.EvalSets
    nodes: np.ndarray          # the nodes still in the graph afterwards
    members_after: np.ndarray
    monitor: Any               # a stopping.Monitor, or None (Retrain as the method runs unguarded)
    trace: list[float]         # FA after each of the method's rounds


def _resolve(engine: "Engine", *, clients, samples, method, mode, options):
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
    return name, method_obj, opts, request


def check_request(engine: "Engine", *, clients=(), samples: dict | None = None, method: str | None = None,
                  mode: str | None = None, **options) -> None:
    """Raise ``ValueError`` naming the problem if :func:`forget` with these arguments would fail on
    the request or the method's options (clients that do not exist, sample indices out of range,
    options the data rule out), before any work is done. Changes nothing."""
    _resolve(engine, clients=clients, samples=samples, method=method, mode=mode, options=options)


def plan(engine: "Engine", *, clients=(), samples: dict | None = None, method: str | None = None,
         mode: str | None = None, progress: bool = False, stopping: "config_mod.StoppingConfig | None" = None,
         options: dict | None = None) -> Plan:
    """Check the request and set up its probes (see :func:`forget` for the arguments)."""
    from .stopping import Monitor

    name, method_obj, opts, request = _resolve(engine, clients=clients, samples=samples, method=method, mode=mode,
                                               options=options or {})
    forgotten = np.zeros_like(engine.retained)
    for j, idx in request.samples.items():
        forgotten[j, idx] = True
    members_after = engine.members.copy()
    members_after[list(request.removed)] = False
    nodes = np.flatnonzero(members_after)
    sets = metrics.EvalSets.from_masks(engine, forgotten, engine.retained & ~forgotten & members_after[:, None])
    # Retrain is the reference: it runs as configured, unguarded and unstopped.
    monitor = None if name == "retrain" else Monitor.build(engine, stopping or engine.config.stopping,
                                                           forgotten=request.samples, nodes=nodes)
    trace: list[float] = []
    request = dataclasses.replace(request, observe=observer(engine, sets, nodes, trace, request.excluded),
                                  progress=progress, monitor=monitor)
    return Plan(name=name, method=method_obj, options=opts, request=request, sets=sets, nodes=nodes,
                members_after=members_after, monitor=monitor, trace=trace)


def observer(engine: "Engine", sets: metrics.EvalSets, nodes: np.ndarray, trace: list[float], spent: dict[str, float],
             *, optimum: np.ndarray | None = None, distances: list[float] | None = None):
    """``observe(params)``: FA of ``params`` appended to ``trace`` (and, with ``optimum``, the largest
    distance over ``nodes`` to it appended to ``distances`` at the root); its seconds and FLOPs are
    added to ``spent`` so that they can be taken out of the cost of the run it watches."""
    def observe(params: torch.Tensor) -> None:
        start = time.perf_counter()
        with counter() as count:
            fa = metrics.forget_accuracy(engine, params, sets, nodes=nodes)
            if distances is not None:
                full = engine.network.gather(params)
                if full is not None:
                    distances.append(float(np.linalg.norm(full[nodes] - optimum, axis=1).max()))
        spent["seconds"] += time.perf_counter() - start
        spent["flops"] += float(count.get_total_flops())
        spent["calls"] = spent.get("calls", 0) + 1
        if fa is not None:
            trace.append(fa)
    return observe


def run_method(engine: "Engine", p: Plan) -> tuple[Outcome, Cost]:
    """The method on the request, once, its monitor (stopping rule and guard) started first: the
    guard's look at the starting models is the method's work too. A guard that saw the models
    collapse sends them back to its last passing check."""
    def run() -> Outcome:
        if p.monitor is not None:
            p.monitor.begin(engine.params)
        outcome = p.method.unlearn(engine, p.request, p.options)
        if p.monitor is not None and p.monitor.roll_back:
            outcome = Outcome.plain(p.monitor.last_good.clone(), comm_bytes=outcome.comm_bytes, rounds=outcome.rounds)
            engine.set_params(outcome.noiseless)
        return outcome

    outcome, seconds, flops = measured(run)
    spent = p.request.excluded
    return outcome, Cost(seconds=seconds - spent["seconds"], flops=flops - spent["flops"] + outcome.extra_flops,
                         comm_bytes=outcome.comm_bytes)


def retrain_reference(engine: "Engine", p: Plan, *, rounds: int, progress: bool) -> dict[str, Any]:
    """Retrain, the reference: a fresh fork of ``engine`` (after the method's exclusions) trained
    ``rounds`` rounds, measured like the method; its FA trace and, for a convex model small enough
    for a dense Newton solve, its distance to the remaining optimum after every round."""
    from .retrain import retrain

    optimum = remaining_optimum(engine)
    traced = engine.transport.bcast_object(optimum is not None)  # every rank takes part in the trace's gathers
    trace: list[float] = []
    distances: list[float] | None = [] if traced else None
    spent = {"seconds": 0.0, "flops": 0.0}
    fresh, cost = retrain(engine, rounds=rounds, progress=progress,
                          observe=observer(engine, p.sets, p.nodes, trace, spent, optimum=optimum, distances=distances))
    # The FA trace is left out of both sides' cost alike.
    cost = dataclasses.replace(cost, seconds=cost.seconds - spent["seconds"], flops=cost.flops - spent["flops"])
    return {"engine": fresh, "cost": cost, "trace": trace, "optimum": optimum, "distances": distances}


def remaining_optimum(engine: "Engine") -> np.ndarray | None:
    """At the root, the optimum of the remaining objective for a strongly convex model small enough
    for a dense Newton solve (see :func:`.certified.remaining_optimum`); ``None`` otherwise."""
    from .certified import optimum_solvable, remaining_optimum as optimum_from

    if not optimum_solvable(engine):
        return None
    inputs = engine.batches.inputs()  # every process takes part; only the root uses them
    if not engine.transport.is_root:
        return None
    return optimum_from(engine, np.zeros(engine.dim), inputs)  # from a start no method chose


def _fine_tune(engine: "Engine", released: torch.Tensor, rounds: int, start: int, cost: Cost) -> torch.Tensor:
    """Train the published models ``rounds`` more rounds on the remaining data (post-processing
    that never touches the forgotten data, so a certificate still holds), charged to ``cost``."""
    engine.set_params(released)
    eval_seconds, first = engine.eval_seconds, engine.round
    _, seconds, flops = measured(lambda: engine.train(rounds, progress=False, desc="fine-tune"))
    cost.seconds += seconds - (engine.eval_seconds - eval_seconds)
    cost.flops += flops - evaluation_work(engine, first, rounds)[0]
    cost.comm_bytes += float(sum(engine.metrics["bytes_sent"][start:])) if engine.transport.is_root else 0.0
    return engine.params.clone()


def forget(engine: "Engine", *, clients=(), samples: dict | None = None, method: str | None = None,
           mode: str | None = None, reference: bool = True, progress: bool = False,
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
    p = plan(engine, clients=clients, samples=samples, method=method, mode=mode, progress=progress,
             stopping=stopping, options=options)
    trained, trained_statistics, rounds = engine.params.clone(), engine.buffers.clone(), engine.round
    outcome, cost = run_method(engine, p)
    ref = retrain_reference(engine, p, rounds=rounds, progress=progress) if reference else None
    released, certificate = outcome.release()
    # Nodes continue from their noiseless models and publish noised ones, so that later requests
    # start from the exact correction (sequential deletion as in Sekhari et al. 2021) ...
    engine.set_params(outcome.noiseless)
    finetune = getattr(p.options, "finetune_rounds", 0)
    if finetune:
        # ... unless they fine-tune the published models.
        released = _fine_tune(engine, released, finetune, rounds, cost)
    status = {"status": "ok", "flagged": False}
    if p.monitor is not None:
        # The guard's last look, at what is released, is the method's work too.
        status, seconds, flops = measured(lambda: p.monitor.final(released))
        cost.seconds += seconds
        cost.flops += flops

    result = ForgetResult(method=p.name, forgotten={j: v.tolist() for j, v in p.request.samples.items()},
                          mode=p.request.mode, certificate=certificate, cost={"unlearn": cost}, status=status)
    local = {"trained": trained, "unlearned_noiseless": outcome.noiseless, "unlearned": released}
    if ref is not None:
        result.cost["retrain"] = ref["cost"]
        local["retrained"] = ref["engine"].params
    # each model with its own running statistics, for a model that keeps them
    statistics = {"trained": trained_statistics, "unlearned": engine.buffers,
                  "retrained": ref["engine"].buffers if ref is not None else None}
    evaluated = {key: metrics.evaluate(engine, engine.compute.with_buffers(local[key], statistics[key]), p.sets, nodes=p.nodes)
                 for key in ("trained", "unlearned", "retrained") if key in local}
    trace = p.trace
    if not p.request.excluded.get("calls"):  # a one-shot method: its trace is the released models' FA (every rank takes part)
        fa = metrics.forget_accuracy(engine, released, p.sets, nodes=p.nodes)
        trace = [fa] if fa is not None else []
    gathered = {k: engine.network.gather(v) for k, v in local.items()}
    audited = engine.config.audit.after_forget and engine.data.x_holdout is not None
    if audited:  # what the audit reads of the data, from the processes that hold it (every rank takes part)
        from ..audit import AuditData

        audit_data = AuditData.gather(engine, p.request.samples, engine.config.audit)
    if engine.transport.is_root:
        # A node that left the graph releases nothing: its row of the released models is NaN.
        gathered["unlearned"] = np.where(p.members_after[:, None], gathered["unlearned"], np.nan)
        result.params, result.metrics = gathered, evaluated
        result.traces = {"unlearned": [float(v) for v in trace if v is not None]}
        if ref is not None:
            result.traces["retrained"] = [float(v) for v in ref["trace"] if v is not None]
            _compare_with_retrain(result, ref, p.nodes, rounds)
        if audited:
            from ..audit import audit

            result.audit = audit(engine, forgotten=p.request.samples, nodes=p.nodes, options=engine.config.audit,
                                 seed=engine.seed, models={k: gathered[k] for k in ("trained", "unlearned", "retrained")
                                                           if k in gathered}, data=audit_data)
    return result


def _compare_with_retrain(result: ForgetResult, ref: dict[str, Any], nodes: np.ndarray, rounds: int) -> None:
    """At the root: time-to-forget, distances to Retrain's models and, for a convex model, to the
    remaining optimum, and Retrain's rounds and seconds at equal quality."""
    evaluated, gathered = result.metrics, result.params
    fa_trained = evaluated["trained"]["FA"]["mean"] if evaluated["trained"]["FA"] else None
    target = evaluated["retrained"]["FA"]["mean"] if evaluated["retrained"]["FA"] else None
    for key in ("unlearned", "retrained"):
        evaluated[key].update(metrics.time_to_forget(result.traces[key], target=target, start=fa_trained))
    optimum = ref["optimum"]
    if optimum is not None:
        # The honest reference for a convex model: the remaining optimum itself, which Retrain
        # only approaches.
        for key in ("trained", "unlearned_noiseless", "unlearned", "retrained"):
            dist = float(np.linalg.norm(gathered[key][nodes] - optimum, axis=1).max())
            evaluated["unlearned" if key == "unlearned_noiseless" else key][
                "distance_to_remaining_optimum" + ("_noiseless" if key == "unlearned_noiseless" else "")] = dist
        # Retrain at equal quality: the rounds (and their share of its seconds) until its models
        # are as close to the optimum as the unlearned noiseless ones.
        goal = evaluated["unlearned"]["distance_to_remaining_optimum_noiseless"]
        hit = next((k + 1 for k, d in enumerate(ref["distances"]) if d <= goal), None)
        evaluated["retrained"]["equal_quality_rounds"] = hit
        evaluated["retrained"]["equal_quality_seconds"] = (ref["cost"].seconds * hit / rounds
                                                           if hit is not None and rounds else None)
    ref_params = gathered["retrained"]
    base = metrics.distance(gathered["trained"], ref_params, nodes)
    for key in evaluated:
        # noiseless against noiseless: the release's noise is not an unlearning error
        d = metrics.distance(gathered["unlearned_noiseless" if key == "unlearned" else key], ref_params, nodes)
        evaluated[key]["distance_to_retrain"] = d
        evaluated[key]["relative_distance_to_retrain"] = d / base if base > 0 else 0.0
