"""One experiment from a config: build the engine, train with checkpoints, write the run files.

Example
-------
>>> import tempfile
>>> from p2pforget import config
>>> cfg = config.from_dict({"run": {"rounds": 2}, "topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10}})
>>> result = run(cfg, out=tempfile.mkdtemp(), progress=False)
>>> sorted(result.report["final"])[:2]
['bytes_sent', 'consensus_distance']
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import config as config_mod, history, topology
from .config import Config
from .engine import Engine
from .transport import Transport
from .unlearn import ForgetResult, forget


class ResumeError(ValueError):
    """The run directory cannot be resumed with this config."""


@dataclass
class RunResult:
    engine: Engine
    out: Path
    report: dict[str, Any]


def _static_arrays(engine: Engine, rounds: int) -> dict[str, np.ndarray]:
    arrays = {"topology/edges": engine.edges()}
    if engine.config.topology.dropout > 0 and not engine.is_star:
        arrays["topology/mixing"] = np.stack([engine.mixing_at(t) for t in range(rounds)])
    else:
        arrays["topology/mixing"] = engine.base_mixing
    if engine.config.data.save:
        d = engine.data
        for i in range(engine.n_clients):
            arrays[f"data/client_{i:04d}/x"] = d.x[i]
            arrays[f"data/client_{i:04d}/y"] = d.y[i]
        arrays["data/test/x"] = d.x_test
        arrays["data/test/y"] = d.y_test
    return arrays


def _comparable(cfg: Config) -> dict[str, Any]:
    d = config_mod.to_dict(cfg)
    for key in ("rounds", "out", "checkpoint_every", "transport"):
        d["run"].pop(key)
    return d


def _check_resumable(cfg: Config, stored_toml: str) -> None:
    old, new = _comparable(config_mod.loads(stored_toml)), _comparable(cfg)
    diffs = [f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in new for k in new[s] if old[s][k] != new[s][k]]
    if diffs:
        raise ResumeError("cannot resume: the config differs from the stored run in " + "; ".join(diffs)
                          + " (only run.rounds, run.out, run.checkpoint_every and run.transport may change)")


class RunWriter:
    """Writes ``history.h5`` (with a resumable checkpoint) and ``report.json`` for one engine."""

    def __init__(self, engine: Engine, out: Path) -> None:
        self.engine = engine
        self.out = out
        self.started = time.perf_counter()
        self.seconds_before = 0.0
        self._static: dict[str, np.ndarray] | None = None

    def snapshot(self, *, rounds_total: int, complete: bool) -> dict[str, Any] | None:
        """Gather state and (at the root) write both run files; returns the report at the root."""
        e = self.engine
        state = e.state()
        if self._static is None:  # written unchanged at every checkpoint: gather and build once
            init = e.gather_params(e.init_params)
            self._static = _static_arrays(e, rounds_total) | {"params/init": init} if e.transport.is_root else {}
        if not e.transport.is_root:
            return None
        seconds = self.seconds_before + time.perf_counter() - self.started
        arrays = dict(self._static)
        arrays["params/trained"] = state["params"]
        arrays["ledger/influence"] = state["ledger"]
        for k, v in state.items():
            if k.startswith("metrics/"):
                arrays[k] = v
            else:
                arrays[f"checkpoint/{k}"] = v
        attrs = {
            "config_toml": config_mod.dumps(e.config),
            "version": history.FORMAT_VERSION,
            "n_clients": e.n_clients,
            "world_size": e.transport.size,
            "rounds_done": e.round,
            "complete": complete,
            "seconds": seconds,
        }
        history.write_h5(self.out / "history.h5", attrs=attrs, arrays=arrays)
        report = build_report(e, seconds=seconds, complete=complete)
        history.write_json(self.out / "report.json", report)
        return report


def build_report(engine: Engine, *, seconds: float, complete: bool) -> dict[str, Any]:
    s = topology.stats(engine.graph, engine.base_mixing)
    return {
        "config": config_mod.to_dict(engine.config),
        "n_clients": engine.n_clients,
        "world_size": engine.transport.size,
        "rounds_done": engine.round,
        "complete": complete,
        "seconds": seconds,
        "topology": vars(s),
        "final": {k: (v[-1] if v else None) for k, v in engine.metrics.items()},
        "bytes_total": float(sum(engine.metrics["bytes_sent"])),
    }


def _read_checkpoint(engine: Engine, cfg: Config, out: Path, writer: RunWriter) -> dict[str, np.ndarray]:
    """The root reads and checks the checkpoint; every process gets it (or the root's error)."""
    payload: dict[str, np.ndarray] | Exception | None = None
    if engine.transport.is_root:
        try:
            stored = history.read_h5(out / "history.h5")
            _check_resumable(cfg, stored.attrs["config_toml"])
            payload = {k.removeprefix("checkpoint/"): v for k, v in stored.arrays.items() if k.startswith("checkpoint/")}
            payload |= {k: v for k, v in stored.arrays.items() if k.startswith("metrics/")}
            writer.seconds_before = float(stored.attrs.get("seconds", 0.0))
        except (ValueError, FileNotFoundError) as e:
            payload = e
    payload = engine.transport.bcast_object(payload)
    if isinstance(payload, Exception):
        raise payload
    return payload


def run(cfg: Config, *, out: str | Path | None = None, resume: bool = False, transport: Transport | None = None,
        progress: bool = True, callback: Callable[[Engine], None] | None = None) -> RunResult:
    """Train ``cfg.run.rounds`` rounds, checkpointing every ``run.checkpoint_every`` rounds.

    With ``resume=True`` the run continues from the checkpoint in ``out/history.h5`` and ends
    with the same numbers as an uninterrupted run.
    """
    out = Path(out if out is not None else cfg.run.out)
    engine = Engine(config=cfg, transport=transport)
    writer = RunWriter(engine, out)
    if resume:
        engine.load_state(_read_checkpoint(engine, cfg, out, writer))
        if engine.round > cfg.run.rounds:
            raise ResumeError(f"the stored run already has {engine.round} rounds, more than run.rounds = {cfg.run.rounds}")
    every = cfg.run.checkpoint_every

    def after_round(e: Engine) -> None:
        if e.round % every == 0 and e.round < cfg.run.rounds:
            writer.snapshot(rounds_total=cfg.run.rounds, complete=False)
        if callback is not None:
            callback(e)

    engine.train(cfg.run.rounds - engine.round, progress=progress, callback=after_round)
    report = writer.snapshot(rounds_total=cfg.run.rounds, complete=True)
    clients, samples = forget_request(cfg)
    if clients or samples:
        result = forget(engine, clients=clients, samples=samples, progress=progress)
        report = record_forget(engine, out, result)
    return RunResult(engine=engine, out=out, report=report or {})


def forget_request(cfg: Config) -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """The clients and samples ``[unlearn]`` asks to forget."""
    return cfg.unlearn.clients, {int(k): v for k, v in cfg.unlearn.samples.items()}


def record_forget(engine: Engine, out: Path, result: ForgetResult) -> dict[str, Any] | None:
    """Add a forget request's models, certificate, metrics and cost to the run files (root only);
    returns the updated report."""
    if not engine.transport.is_root:
        return None
    path = out / "history.h5"
    stored = history.read_h5(path)
    arrays = dict(stored.arrays)
    arrays.update({f"params/{k}": v for k, v in result.params.items() if k != "trained"})
    arrays["unlearn/retained"] = engine.retained
    arrays["unlearn/members"] = engine.members
    for name, trace in result.traces.items():
        arrays[f"unlearn/fa_trace/{name}"] = np.asarray(trace, dtype=np.float64)
    cert = result.certificate or {}
    cost = {name: vars(c) for name, c in result.cost.items()}
    attrs = {k: v for k, v in cert.items() if isinstance(v, (int, float, str, bool))}
    attrs |= {"forgotten": json.dumps(result.forgotten), "mode": result.mode, "method": result.method,
              "has_certificate": bool(cert)}
    attrs |= {k: float(v) for k, v in cost["unlearn"].items()}
    group_attrs = dict(stored.group_attrs) | {"unlearn": attrs}
    history.write_h5(path, attrs=stored.attrs | {"unlearned": True}, arrays=arrays, group_attrs=group_attrs)
    report = json.loads((out / "report.json").read_text())
    if "retrain" in cost:
        cost["ratio_to_retrain"] = {k: (cost["unlearn"][k] / cost["retrain"][k] if cost["retrain"][k] else None)
                                    for k in cost["unlearn"]}
    report |= {"unlearn": cert | {"method": result.method, "forgotten": result.forgotten, "mode": result.mode},
               "metrics": result.metrics, "cost": cost, "traces": result.traces}
    history.write_json(out / "report.json", report)
    return report


def load_run(run_dir: str | Path, *, overrides: list[str] = (), transport: Transport | None = None) -> Engine:
    """Rebuild the engine of a finished run (its last checkpoint, and any forgetting already done).

    Only ``unlearn.*`` keys may be overridden: the rest describes how the models were trained.
    """
    run_dir = Path(run_dir)
    bad = [o for o in overrides if not o.strip().startswith("unlearn.")]
    if bad:
        raise ValueError(f"only [unlearn] keys can change on a finished run; got {bad[0]!r}")
    payload: Any = None
    if transport is None or transport.is_root:
        try:
            stored = history.read_h5(run_dir / "history.h5")
            keep = ("checkpoint/", "metrics/", "unlearn/", "params/unlearned_noiseless")
            payload = (stored.attrs["config_toml"], {k: v for k, v in stored.arrays.items() if k.startswith(keep)})
        except (ValueError, FileNotFoundError) as e:
            payload = e
    if transport is not None:
        payload = transport.bcast_object(payload)
    if isinstance(payload, Exception):
        raise payload
    toml, arrays = payload
    cfg = config_mod.with_overrides(config_mod.loads(toml), list(overrides))
    engine = Engine(config=cfg, transport=transport)
    state = {k.removeprefix("checkpoint/"): v for k, v in arrays.items() if k.startswith("checkpoint/")}
    engine.load_state(state | {k: v for k, v in arrays.items() if k.startswith("metrics/")})
    if "unlearn/retained" in arrays:
        engine.exclude(samples={j: np.flatnonzero(~arrays["unlearn/retained"][j]) for j in range(engine.n_clients)},
                       removed=np.flatnonzero(~arrays["unlearn/members"]).tolist())
        rows = arrays["params/unlearned_noiseless"][engine.lo:engine.hi]
        engine.set_params(torch.as_tensor(rows, dtype=engine.dtype))
    return engine
