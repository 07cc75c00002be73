"""State: everything needed to continue training bit-identically (models, statistics, optimizer state,
ledger, hooks, metrics), restoring it, and forking an independent twin.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..registry import HOOKS

if TYPE_CHECKING:
    from .core import Engine


def state(engine: "Engine") -> dict[str, np.ndarray] | None:
    """See :meth:`p2pforget.engine.Engine.state`."""
    e, gather = engine, engine.network.gather
    out = {"round": np.array(e.round), "params": gather()}
    if e.model.buffer_dim:
        out["buffers"] = gather(e.buffers)
    if e.ledger is not None:
        out |= {k: gather(v) for k, v in e.ledger.arrays().items()}
    for name in sorted(e.optimizer_state):
        out[name] = gather(e.optimizer_state[name])
    for name, hook in e.hooks.items():
        rows, shared = hook.state()
        out |= {f"hooks/{name}/rows/{k}": gather(v) for k, v in rows.items()}
        out |= {f"hooks/{name}/shared/{k}": v for k, v in shared.items()}
    if not e.transport.is_root:
        return None
    out |= {f"metrics/per_node/{k}": np.asarray(v, dtype=np.float64).reshape(len(v), e.n_clients)
            for k, v in e.per_node.items()}
    return out | {f"metrics/{k}": np.asarray(v, dtype=np.int64 if k == "round" else np.float64)
                  for k, v in e.metrics.items()}


def load_state(engine: "Engine", state: dict[str, np.ndarray]) -> None:
    """See :meth:`p2pforget.engine.Engine.load_state`."""
    e = engine
    state = _renamed(state)
    _check_state(e, state)
    rows = slice(e.lo, e.hi)
    e.round = int(state["round"])
    e.params = torch.as_tensor(state["params"][rows], dtype=e.dtype).to(e.device).clone()
    e.buffers = (torch.as_tensor(state["buffers"][rows], dtype=e.dtype).to(e.device).clone()
                 if e.model.buffer_dim else e.init_buffers.clone())
    e.ledger = e.empty_ledger()
    if e.ledger is not None:
        e.ledger.load(state, rows)
    e.optimizer_state = {k: torch.as_tensor(v[rows], dtype=e.dtype).to(e.device).clone()
                         for k, v in state.items()
                         if k not in ("round", "params", "buffers") and not k.startswith(("ledger", "metrics/", "hooks/"))}
    e.hooks = {}
    for name in sorted({k.split("/")[1] for k in state if k.startswith("hooks/")}):
        part = {k[len(f"hooks/{name}/"):]: v for k, v in state.items() if k.startswith(f"hooks/{name}/")}
        e.hooks[name] = HOOKS.get(name).from_state(
            {k[5:]: np.asarray(v)[rows] for k, v in part.items() if k.startswith("rows/")},
            {k[7:]: np.asarray(v) for k, v in part.items() if k.startswith("shared/")}, dtype=e.dtype, device=e.device)
    e.metrics = {k: [(int(v) if k == "round" else float(v)) for v in state.get(f"metrics/{k}", [])] for k in e.metrics}
    e.per_node = {k: list(np.asarray(state.get(f"metrics/per_node/{k}", np.zeros((0, e.n_clients))))) for k in e.per_node}
    if not e.metrics["round"] and e.metrics["loss_mean"]:  # run files written before eval_every
        e.metrics["round"] = list(range(1, len(e.metrics["loss_mean"]) + 1))


def fork(engine: "Engine", *, fresh: bool = False) -> "Engine":
    """See :meth:`p2pforget.engine.Engine.fork`."""
    twin = copy.copy(engine)
    twin.graph = engine.graph.copy()
    twin.retained, twin.members = engine.retained.copy(), engine.members.copy()
    twin.batches, twin.compute, twin.network = (part.bound(twin) for part in (engine.batches, engine.compute, engine.network))
    twin.refresh()
    if fresh:
        twin.round, twin.params, twin.optimizer_state, twin.hooks = 0, engine.init_params.clone(), {}, {}
        twin.buffers = engine.init_buffers.clone()
        twin.ledger = twin.empty_ledger()
        twin.metrics = {name: [] for name in engine.metrics}
        twin.per_node = {name: [] for name in engine.per_node}
        twin.eval_seconds = 0.0
        return twin
    twin.params, twin.buffers = engine.params.clone(), engine.buffers.clone()
    twin.optimizer_state = {k: v.clone() for k, v in engine.optimizer_state.items()}
    twin.ledger = None if engine.ledger is None else engine.ledger.copy()
    twin.hooks = {name: hook.fork() for name, hook in engine.hooks.items()}
    twin.metrics = {k: list(v) for k, v in engine.metrics.items()}
    twin.per_node = {k: list(v) for k, v in engine.per_node.items()}
    return twin


def node_module(engine: "Engine", client: int, params: torch.Tensor | None = None) -> torch.nn.Module:
    """See :meth:`p2pforget.engine.Engine.node_module`."""
    e = engine
    if not 0 <= client < e.n_clients:
        raise ValueError(f"client {client} does not exist; client ids are 0..{e.n_clients - 1}")
    rows = e.network.gather(e.params if params is None else params)
    statistics = e.network.gather(e.buffers)
    row = e.transport.bcast_object(None if rows is None else (rows[client], statistics[client]))
    module = copy.deepcopy(e.model.module)
    named = e.model.unflatten(torch.as_tensor(row[0], dtype=e.dtype))
    named |= e.model.unflatten_buffers(torch.as_tensor(row[1], dtype=e.dtype))
    module.load_state_dict(named, strict=False)
    return module.to(e.dtype).eval()


def _check_state(e: "Engine", state: dict[str, np.ndarray]) -> None:
    fix = "the checkpoint does not belong to this config or is damaged: restore the run file from a copy or rerun"

    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"checkpoint/{key} {what}; {fix}")

    for key in ("round", "params") + (("buffers",) if e.model.buffer_dim else ()):
        if key not in state:
            raise bad(key, "is missing")
    r = np.asarray(state["round"])
    if r.shape != () or not np.issubdtype(r.dtype, np.integer) or int(r) < 0:
        raise bad("round", f"must be one integer >= 0, got {r.tolist()!r}")
    n, d = e.n_clients, e.dim
    params = np.asarray(state["params"])
    if params.shape != (n, d):
        raise bad("params", f"has shape {params.shape}, but this config's model has {n} clients x {d} parameters")
    if not np.issubdtype(params.dtype, np.floating):
        raise bad("params", f"holds {params.dtype}, not floating-point numbers")
    finite = np.isfinite(params).all(axis=1)
    if not finite[e.members].all():
        raise bad("params", f"holds NaN or inf at clients {np.flatnonzero(~finite & e.members)[:5].tolist()}")
    for key, value in state.items():
        if key in ("round", "params") or key.startswith("metrics/") or (key.startswith("hooks/") and "/shared/" in key):
            continue
        value = np.asarray(value)
        if key == "ledger" and value.shape != (n, n):
            raise bad(key, f"has shape {value.shape}, not ({n}, {n})")
        if key == "buffers" and value.shape != (n, e.model.buffer_dim):
            raise bad(key, f"has shape {value.shape}, but this config's model keeps {n} clients x "
                           f"{e.model.buffer_dim} running statistics")
        if value.ndim == 0 or value.shape[0] != n:
            raise bad(key, f"has shape {value.shape}: its first axis must hold the {n} clients")


def _renamed(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint written before hooks in today's names: each hook's registry entry lists the
    keys it was stored under then (``legacy``: old key -> key under ``hooks/<name>/``)."""
    moved = {old: f"hooks/{name}/{new}" for name in HOOKS.names()
             for old, new in HOOKS.entry(name).meta.get("legacy", {}).items()}
    return {moved.get(k, k): v for k, v in state.items()}
