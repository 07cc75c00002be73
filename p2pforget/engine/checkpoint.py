"""State: everything needed to continue training bit-identically (models, statistics, optimizer state,
ledger, hooks, metrics), restoring it, and forking an independent twin.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import ledger as ledger_mod
from ..registry import HOOKS

if TYPE_CHECKING:
    from .core import Engine


class Checkpoint:
    """Checkpoints and forks (a part of :class:`~p2pforget.engine.Engine`)."""

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

    def node_module(self, client: int, params: torch.Tensor | None = None) -> torch.nn.Module:
        """Node ``client``'s model (default: its current one; or its row of stacked local
        ``params``) as a standalone ``nn.Module`` in ``eval()`` mode, running statistics
        included: ``engine.node_module(3)(x)`` is what node 3 predicts. Every process takes part
        under MPI, and every process gets the module.

        >>> from p2pforget import Engine, config
        >>> engine = Engine(config=config.from_dict({"topology": {"n_clients": 3}, "data": {"n_samples_per_client": 6}}))
        >>> module = engine.node_module(1)
        >>> bool((module(engine.x_test).argmax(1) == engine.task.logits(engine.params[1], engine.x_test).argmax(1)).all())
        True
        """
        if not 0 <= client < self.n_clients:
            raise ValueError(f"client {client} does not exist; client ids are 0..{self.n_clients - 1}")
        rows = self.gather_params(self.params if params is None else params)
        statistics = self.gather_params(self.buffers)
        row = self.transport.bcast_object(None if rows is None else (rows[client], statistics[client]))
        module = copy.deepcopy(self.model.module)
        named = self.model.unflatten(torch.as_tensor(row[0], dtype=self.dtype))
        named |= self.model.unflatten_buffers(torch.as_tensor(row[1], dtype=self.dtype))
        module.load_state_dict(named, strict=False)
        return module.to(self.dtype).eval()

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


def _renamed(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint written before hooks in today's names: each hook's registry entry lists the
    keys it was stored under then (``legacy``: old key -> key under ``hooks/<name>/``)."""
    moved = {old: f"hooks/{name}/{new}" for name in HOOKS.names()
             for old, new in HOOKS.entry(name).meta.get("legacy", {}).items()}
    return {moved.get(k, k): v for k, v in state.items()}
