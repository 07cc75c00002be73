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
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from . import config as config_mod, history, metrics, release
from .config import Config
from .engine import EVAL_METRICS, DivergenceError, Engine
from . import transport as transport_mod
from .transport import Transport
from .unlearn import ForgetResult, check_request, forget


class ResumeError(ValueError):
    """The run directory cannot be resumed with this config."""


# What forget requests add to a run file; carried unchanged through every later checkpoint.
RECORD_ARRAYS = ("unlearn/", "params/unlearned", "params/retrained")
RECORD_ATTRS = ("unlearned", "unlearn_round", "requests_json")
RECORD_REPORT = ("unlearn", "metrics", "cost", "traces", "audit", "requests")


@dataclass
class RunResult:
    engine: Engine
    out: Path
    report: dict[str, Any]


@dataclass
class Records:
    """The forget requests recorded in a run: arrays, attributes and report entries that every
    later snapshot keeps."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    group_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, stored: history.RunFile) -> "Records":
        return cls(arrays={k: v for k, v in stored.arrays.items() if k.startswith(RECORD_ARRAYS)},
                   group_attrs={k: v for k, v in stored.group_attrs.items() if k == "unlearn"},
                   attrs={k: stored.attrs[k] for k in RECORD_ATTRS if k in stored.attrs})

    @property
    def requests(self) -> list[dict[str, Any]]:
        return json.loads(self.attrs.get("requests_json", "[]"))

    def report(self) -> dict[str, Any]:
        """The latest request's entries at the top level (as ``p2pforget forget`` prints them) and
        every request in order under ``requests``."""
        requests = self.requests
        return (requests[-1] | {"requests": requests}) if requests else {}


MIXING_ENTRIES_STORED = 5_000_000
"""Time-varying mixing matrices (edge dropout) are stored per round up to this many entries in
all; above it only the base matrix is (each round's is ``engine.network.mixing_at(t)``, a pure function
of the seed and the round)."""


def _static_arrays(engine: Engine, rounds: int, inputs: np.ndarray | None) -> dict[str, np.ndarray]:
    """What every checkpoint writes unchanged (at the root): the graph, its mixing, and with
    ``data.save`` every client's ``inputs`` (gathered by every process) and labels."""
    arrays = {"topology/edges": engine.network.edges()}
    if engine.is_star:
        arrays["topology/fedavg_weights"] = engine.network.fedavg_weights
    else:
        mixings = [engine.network.base_mixing]
        if engine.config.topology.dropout > 0 and rounds * engine.network.base_mixing.nnz <= MIXING_ENTRIES_STORED:
            mixings = [engine.network.mixing_at(t) for t in range(rounds)]
        arrays |= _sparse_stack(mixings)
    if engine.config.data.save:
        d = engine.data
        for i in range(engine.n_clients):
            arrays[f"data/client_{i:04d}/x"] = inputs[i]
            arrays[f"data/client_{i:04d}/y"] = d.y[i]
        arrays["data/test/x"] = d.x_test
        arrays["data/test/y"] = d.y_test
    return arrays


def _sparse_stack(mixings: list) -> dict[str, np.ndarray]:
    """Mixing matrices as one COO list: ``topology/mixing/{round,row,col,weight}``."""
    parts = [sp.coo_array(W) for W in mixings]
    return {"topology/mixing/round": np.concatenate([np.full(c.nnz, t, dtype=np.int32) for t, c in enumerate(parts)]),
            "topology/mixing/row": np.concatenate([c.row for c in parts]).astype(np.int64),
            "topology/mixing/col": np.concatenate([c.col for c in parts]).astype(np.int64),
            "topology/mixing/weight": np.concatenate([c.data for c in parts]).astype(np.float64)}


def _comparable(cfg: Config) -> dict[str, Any]:
    d = config_mod.to_dict(cfg)
    for key in ("rounds", "out", "checkpoint_every", "transport", "keep_private"):
        d["run"].pop(key)
    return d


def _check_resumable(cfg: Config, stored_toml: str) -> None:
    # The stored config may name only plug-ins the user's own config imports (it is data).
    stored = config_mod.loads_stored(stored_toml, where="the stored run", plugins=cfg.run.plugins)
    old, new = _comparable(stored), _comparable(cfg)
    diffs = [f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in new for k in new[s] if old[s][k] != new[s][k]]
    if diffs:
        raise ResumeError("cannot resume: the config differs from the stored run in " + "; ".join(diffs)
                          + " (only run.rounds, run.out, run.checkpoint_every, run.transport and run.keep_private may change)")


class RunWriter:
    """Writes ``history.h5`` (with a resumable checkpoint) and ``report.json`` for one engine,
    keeping the run's forget :class:`Records`."""

    def __init__(self, engine: Engine, out: Path, *, fingerprint: dict[str, int] | None = None) -> None:
        self.engine = engine
        self.out = out
        self.started = time.perf_counter()
        self.seconds_before = 0.0
        self.records = Records()
        self.checkpoint_round: int | None = None
        self.written = time.perf_counter()  # when this writer last wrote the run files
        # Of the run as trained: taken before any forget request changes the graph.
        self.fingerprint = fingerprint if fingerprint is not None else run_fingerprint(engine)
        self._static: dict[str, np.ndarray] | None = None

    def snapshot(self, *, rounds_total: int, complete: bool,
                 adjust: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None) -> dict[str, Any] | None:
        """Gather the engine's state (every process takes part) and, at the root, write both run
        files, the state passed through ``adjust`` first if given; returns the report at the root."""
        e = self.engine
        state = e.state()
        retrieval = metrics.retrieval(e) if complete else None  # CLIP: R@1/5/10 both ways on the test pairs
        if adjust is not None and state is not None:
            state = adjust(state)
        if self._static is None:  # written unchanged at every checkpoint: gather and build once
            init = e.network.gather(e.init_params.contiguous())
            inputs = e.batches.inputs() if e.config.data.save else None  # every process takes part
            self._static = _static_arrays(e, rounds_total, inputs) | {"params/init": init} if e.transport.is_root else {}
        self.checkpoint_round = int(e.round)
        self.written = time.perf_counter()
        if not e.transport.is_root:
            return None
        seconds = self.seconds_before + time.perf_counter() - self.started
        arrays = dict(self._static)
        arrays["params/trained"] = state["params"]
        if "ledger" in state:
            arrays["ledger/influence"] = state["ledger"]
        for part in ("index", "value", "dropped"):
            if f"ledger_{part}" in state:
                arrays[f"ledger/{part}"] = state[f"ledger_{part}"]
        for k, v in state.items():
            if k.startswith("metrics/"):
                arrays[k] = v
            else:
                arrays[f"checkpoint/{k}"] = v
        arrays |= self.records.arrays
        attrs = {
            "config_toml": config_mod.dumps(e.config),
            "version": history.FORMAT_VERSION,
            "n_clients": e.n_clients,
            "world_size": e.transport.size,
            "rounds_done": e.round,
            "complete": complete,
            "seconds": seconds,
        } | self.fingerprint | self.records.attrs
        report = build_report(e, seconds=seconds, complete=complete) | self.records.report()
        if retrieval is not None:
            report["retrieval"] = retrieval
            attrs["retrieval_json"] = history.json_text(retrieval)
        history.write_h5(self.out / "history.h5", attrs=attrs, arrays=arrays, group_attrs=self.records.group_attrs)
        history.write_json(self.out / "report.json", report)
        if e.config.log.csv:
            write_csv_logs(self.out, state)
        if e.config.log.tensorboard:
            write_tensorboard(self.out / "tensorboard", state)
        return report


def write_tensorboard(folder: Path, state: dict[str, np.ndarray]) -> None:
    """TensorBoard event files of the whole metric history (written anew into a fresh folder that
    replaces ``folder``, so a resumed run does not log a round twice): the evaluated means as
    ``train/<name>``, cumulative bytes as ``train/bytes_sent_total`` and every node's numbers as
    ``node_<i>/<name>``, all at their round."""
    import shutil

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError("log.tensorboard = true needs the tensorboard package: pip install \"p2pforget[log]\" "
                           "(or set log.tensorboard = false)") from e
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(tmp))
    rounds = state["metrics/round"]
    sent = np.cumsum(state["metrics/bytes_sent"])
    for i, r in enumerate(rounds):
        for name in EVAL_METRICS:
            writer.add_scalar(f"train/{name}", float(state[f"metrics/{name}"][i]), int(r))
        writer.add_scalar("train/bytes_sent_total", float(sent[r - 1]) if r else 0.0, int(r))
        for key in sorted(k for k in state if k.startswith("metrics/per_node/")):
            name = key.removeprefix("metrics/per_node/")
            for node, value in enumerate(state[key][i]):
                if np.isfinite(value):
                    writer.add_scalar(f"node_{node}/{name}", float(value), int(r))
    writer.close()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def write_csv_logs(out: Path, state: dict[str, np.ndarray]) -> None:
    """``metrics.csv`` (round, the evaluated means, bytes sent up to that round) and
    ``metrics_per_node.csv`` (round, node and its numbers; empty where a node had left) from an
    engine state."""
    rounds = state["metrics/round"]
    sent = np.cumsum(state["metrics/bytes_sent"])
    names = [k.removeprefix("metrics/") for k in state if k.startswith("metrics/") and k.count("/") == 1
             and k not in ("metrics/round", "metrics/bytes_sent")]
    rows = [[int(r)] + [float(state[f"metrics/{n}"][i]) for n in names] + [float(sent[r - 1]) if r else 0.0]
            for i, r in enumerate(rounds)]
    history.write_csv(out / "metrics.csv", ["round", *names, "bytes_sent_total"], rows)
    per_node = sorted(k.removeprefix("metrics/per_node/") for k in state if k.startswith("metrics/per_node/"))
    rows = [[int(r), node] + [float(state[f"metrics/per_node/{n}"][i, node]) for n in per_node]
            for i, r in enumerate(rounds) for node in range(state["metrics/per_node/" + per_node[0]].shape[1])]
    history.write_csv(out / "metrics_per_node.csv", ["round", "node", *per_node], rows)


def build_report(engine: Engine, *, seconds: float, complete: bool) -> dict[str, Any]:
    s = engine.network.stats()  # of the nodes still in the graph (forget requests may remove some)
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


def _at_root(transport: Transport, fn: Callable[[], Any]) -> Any:
    """``fn()`` at the root; every process gets its result, or raises the root's error (so no
    rank is left waiting in a collective call)."""
    payload: Any = None
    if transport.is_root:
        try:
            payload = fn()
        except ValueError as e:
            payload = e
    payload = transport.bcast_object(payload)
    if isinstance(payload, ValueError):
        if not transport.is_root:
            payload.reported_by_root = True  # the command line prints it once, at the root
        raise payload
    return payload


@contextmanager
def writing(transport: Transport, out: Path, *, resume: bool = False, overwrite: bool = False,
            command: str = "") -> Iterator[None]:
    """Hold ``out``'s lock (at the root) for as long as the block writes the run directory.

    A new run refuses a directory that already holds a run unless ``overwrite``; ``resume`` and
    forget requests need one.
    """
    stack = ExitStack()

    def acquire() -> None:
        stack.enter_context(history.run_lock(out, command=command))
        exists = (out / "history.h5").exists()
        if not resume and exists and not overwrite:
            raise ResumeError(f"{out} already holds a run; continue it with --resume {out}, give another --out, "
                              "or pass --overwrite to replace it")
        if resume and not exists:
            history.read_h5(out / "history.h5")  # raises the error that says what the directory holds
    try:
        _at_root(transport, acquire)
        yield
    finally:
        stack.close()


def _read_checkpoint(engine: Engine, cfg: Config, out: Path, writer: RunWriter) -> tuple[dict[str, np.ndarray], Records]:
    """The root reads and checks the checkpoint; every process gets it (or the root's error)."""
    def read():
        stored = history.read_run(out / "history.h5")
        _check_resumable(cfg, stored.attrs["config_toml"])
        payload = {k.removeprefix("checkpoint/"): v for k, v in stored.arrays.items() if k.startswith("checkpoint/")}
        payload |= {k: v for k, v in stored.arrays.items() if k.startswith("metrics/")}
        prints = {k: stored.attrs[k] for k in ("data_crc32", "graph_crc32") if k in stored.attrs}
        return payload, Records.of(stored), float(stored.attrs.get("seconds", 0.0)), prints
    state, records, writer.seconds_before, prints = _at_root(engine.transport, read)
    _check_same_run(writer.fingerprint, prints, where=str(out / "history.h5"), overrides=[])
    return state, records


def _apply_exclusions(engine: Engine, records: Records) -> None:
    """Take the data and nodes that earlier forget requests removed out of ``engine``."""
    arrays = records.arrays
    if "unlearn/retained" in arrays:
        engine.exclude(samples={j: np.flatnonzero(~arrays["unlearn/retained"][j]) for j in range(engine.n_clients)},
                       removed=np.flatnonzero(~arrays["unlearn/members"]).tolist())


class Preempted(RuntimeError):
    """A run stopped by a batch system's signal, after writing a checkpoint."""


PREEMPTED_EXIT = 75
"""The CLI's exit status for :class:`Preempted` (``EX_TEMPFAIL``: run the same command again)."""


@contextmanager
def _noticing(notice: list | None):
    """While training, SIGTERM and SIGUSR1 append their number to ``notice`` instead of killing
    the process (``notice is None``: signals keep their handlers)."""
    if notice is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGTERM, signal.SIGUSR1)
    previous = {sig: signal.signal(sig, lambda number, frame: notice.append(number)) for sig in caught}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_state(run_dir: str | Path) -> str:
    """``complete`` (training finished), ``partial`` (a run file from an interrupted run) or
    ``missing`` (nothing to resume)."""
    try:
        return "complete" if history.read_h5(Path(run_dir) / "history.h5").attrs.get("complete") else "partial"
    except (OSError, ValueError, history.RunFileError):
        return "missing"


def run(cfg: Config, *, out: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        transport: Transport | None = None, progress: bool = False,
        callback: Callable[[Engine], None] | None = None, stop_on_signal: bool = False) -> RunResult:
    """Train ``cfg.run.rounds`` rounds, checkpointing every ``run.checkpoint_every`` rounds, then
    carry out the config's forget request (if any).

    With ``resume=True`` the run continues from the checkpoint in ``out/history.h5`` and ends
    with the same numbers as an uninterrupted run. A run whose clients or samples were forgotten
    continues from the released unlearned models, without the forgotten data, and keeps every
    forget record. A directory that already holds a run is refused unless ``overwrite``.
    Training that diverges stops with :class:`~p2pforget.engine.DivergenceError`; the run files
    keep the last good checkpoint. With ``stop_on_signal``, SIGTERM or SIGUSR1 (a batch system's
    notice before preemption or the time limit) checkpoints after the current round and raises
    :class:`Preempted`.
    """
    cfg = config_mod.resolve_paths(cfg)
    out = Path(out if out is not None else cfg.run.out)
    engine = Engine(config=cfg, transport=transport)
    clients, samples = forget_request(cfg)
    if clients or samples:
        check_request(engine, clients=clients, samples=samples)  # before any training
    writer = RunWriter(engine, out)
    with writing(engine.transport, out, resume=resume, overwrite=overwrite, command=f"p2pforget run --out {out}"):
        if resume:
            state, writer.records = _read_checkpoint(engine, cfg, out, writer)
            engine.load_state(state)
            _apply_exclusions(engine, writer.records)
            if engine.round > cfg.run.rounds:
                raise ResumeError(f"the stored run already has {engine.round} rounds (training and unlearning), more than "
                                  f"run.rounds = {cfg.run.rounds}; raise run.rounds to train more")
        every = checkpoint_interval(cfg)

        def after_round(e: Engine) -> None:
            # Every `every` rounds, and at least every CHECKPOINT_SECONDS of training whatever
            # run.rounds says (the decision is the root's, so all processes take part together).
            due = e.round % 16 == 0 and e.transport.bcast_object(time.perf_counter() - writer.written > CHECKPOINT_SECONDS)
            # A batch system's notice (SIGTERM / SIGUSR1): checkpoint now and stop, for a requeue.
            stop = e.transport.bcast_object(bool(notice)) if notice is not None else False
            if (e.round % every == 0 or due or stop) and e.round < cfg.run.rounds:
                writer.snapshot(rounds_total=cfg.run.rounds, complete=False)
            if stop:
                raise Preempted(f"stopped by signal {notice[0]} after round {e.round} with a checkpoint in {out}; "
                                f"the same command with --resume-or-start continues it")
            if callback is not None:
                callback(e)

        notice = [] if stop_on_signal else None
        try:
            with _noticing(notice):
                engine.train(cfg.run.rounds - engine.round, progress=progress, callback=after_round)
        except DivergenceError as e:
            kept = (f"{out}/history.h5 keeps the last good checkpoint (round {writer.checkpoint_round})"
                    if writer.checkpoint_round is not None else "no checkpoint was written before it")
            raise DivergenceError(f"{e}; {kept}") from None
        report = writer.snapshot(rounds_total=cfg.run.rounds, complete=True)
        if (clients or samples) and not writer.records.requests:
            result = forget(engine, clients=clients, samples=samples, progress=progress)
            report = record_forget(engine, writer, result)
        if not cfg.run.keep_private and engine.transport.is_root:
            release.drop_private(out)
    return RunResult(engine=engine, out=out, report=report or {})


MAX_CHECKPOINT_GAP = 1000
"""With ``run.checkpoint_every = 0``, checkpoints are at most this many rounds apart."""

CHECKPOINT_SECONDS = 600.0
"""A run also checkpoints once this many seconds have passed since its last write."""


def checkpoint_interval(cfg: Config) -> int:
    """Rounds between checkpoints: ``run.checkpoint_every``, or with 0 (the default) about 20
    checkpoints per run, at most :data:`MAX_CHECKPOINT_GAP` rounds apart; every checkpoint rewrites
    the run file atomically.

    >>> from p2pforget import config
    >>> [checkpoint_interval(config.from_dict({"run": {"rounds": r}})) for r in (10, 400, 10**12)]
    [1, 20, 1000]
    """
    return cfg.run.checkpoint_every or min(max(1, cfg.run.rounds // 20), MAX_CHECKPOINT_GAP)


def forget_request(cfg: Config) -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """The clients and samples ``[unlearn]`` asks to forget."""
    return cfg.unlearn.clients, {int(k): v for k, v in cfg.unlearn.samples.items()}


def record_forget(engine: Engine, writer: RunWriter, result: ForgetResult) -> dict[str, Any] | None:
    """Write a forget request into the run files in one atomic step: its models, certificate,
    metrics and cost, and a new checkpoint from which training continues (the released unlearned
    models, without the forgotten data). Returns the updated report at the root."""
    records = writer.records

    def released(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kept = {k: v for k, v in state.items() if k in ("round", "buffers") or k.startswith(("ledger", "metrics/", "hooks/"))}
        # The optimizer state restarts from the released models; a node that left released none
        # and keeps its own (it takes no further part).
        rel, own = result.params["unlearned"], result.params["unlearned_noiseless"]
        return kept | {"params": np.where(np.isnan(rel), own, rel)}

    if engine.transport.is_root:
        arrays = dict(records.arrays)
        arrays.update({f"params/{k}": v for k, v in result.params.items() if k != "trained"})
        arrays["params/before_request"] = result.params["trained"]  # the checkpoint's params/trained moves on
        arrays["unlearn/retained"] = engine.retained
        arrays["unlearn/members"] = engine.members
        # What this request publishes, kept with the private record so that release/ is always
        # rebuilt from it (release.publish) and can never disagree with it.
        k = len(records.requests)
        arrays[f"unlearn/released/{k}/nodes"] = np.flatnonzero(engine.members)
        arrays[f"unlearn/released/{k}/models"] = result.params["unlearned"][engine.members]
        arrays = {k: v for k, v in arrays.items() if not k.startswith("unlearn/fa_trace/")}
        for name, trace in result.traces.items():
            arrays[f"unlearn/fa_trace/{name}"] = np.asarray(trace, dtype=np.float64)
        cert = dict(result.certificate or {})
        if "epsilon" in cert:
            # Basic composition (Dwork & Roth 2014, Thm. 3.16) over this run's releases. One release
            # that is not certified (no noise, a bound over the budget, another method) has no
            # finite epsilon: from then on neither has the sum (None), whatever follows.
            releases = [r["unlearn"] for r in records.requests] + [cert]
            finite = all(r.get("certified", False) for r in releases)
            cert["cumulative_epsilon"] = sum(r["epsilon"] for r in releases) if finite else None
            cert["cumulative_delta"] = sum(r["delta"] for r in releases) if finite else None
        cost = {name: vars(c) for name, c in result.cost.items()}
        attrs = {k: v for k, v in cert.items() if isinstance(v, (int, float, str, bool))}
        attrs |= {"forgotten": json.dumps(result.forgotten), "mode": result.mode, "method": result.method,
                  "has_certificate": bool(cert), "status": result.status["status"]}
        attrs |= {k: float(v) for k, v in cost["unlearn"].items()}
        if "retrain" in cost:
            cost["ratio_to_retrain"] = {k: (cost["unlearn"][k] / cost["retrain"][k] if cost["retrain"][k] else None)
                                        for k in cost["unlearn"]}
        entry = {"unlearn": cert | {"method": result.method, "forgotten": result.forgotten, "mode": result.mode,
                                    "round": int(engine.round)},
                 "metrics": result.metrics, "cost": cost, "traces": result.traces, "status": result.status}
        if result.audit is not None:
            entry["audit"] = result.audit
            attrs["audit_json"] = history.json_text(result.audit)
        writer.records = Records(arrays=arrays, group_attrs={"unlearn": attrs},
                                 attrs={"unlearned": True, "unlearn_round": int(engine.round),
                                        "requests_json": history.json_text(records.requests + [entry])})
    report = writer.snapshot(rounds_total=engine.round, complete=True, adjust=released)
    if engine.transport.is_root:
        release.publish(writer.out, writer.records.requests, writer.records.arrays, n_clients=engine.n_clients)
    return report


def load_run(run_dir: str | Path, *, overrides: list[str] = (), transport: Transport | None = None,
             plugins: tuple[str, ...] = ()) -> tuple[Engine, RunWriter]:
    """Rebuild the engine of a finished run (its last checkpoint, and any forgetting already done),
    and a writer that adds to the run's files.

    Only ``unlearn.*`` keys, and the paths ``data.path``, ``topology.path`` and
    ``topology.mixing_path`` (for a run moved to another directory), may be overridden: the rest
    describes how the models were trained.
    """
    run_dir = Path(run_dir)
    paths = ("data.path=", "topology.path=", "topology.mixing_path=")
    bad = [o for o in overrides if not o.strip().startswith(("unlearn.",) + paths)]
    if bad:
        raise ValueError(f"only [unlearn] keys and the paths data.path, topology.path, topology.mixing_path can change "
                         f"on a finished run; got {bad[0]!r}")

    where = f"{run_dir / 'history.h5'}"

    def read():
        stored = history.read_run(run_dir / "history.h5")
        if not stored.attrs.get("complete"):
            raise ResumeError(f"{run_dir} is not finished (it stopped at round {stored.attrs.get('rounds_done')}); "
                              f"continue it first with `p2pforget run CONFIG --resume {run_dir}`: forgetting from an "
                              "unfinished run would take a partly trained model for the result")
        keep = ("checkpoint/", "metrics/")
        state = {k: v for k, v in stored.arrays.items() if k.startswith(keep)}
        prints = {k: stored.attrs[k] for k in ("data_crc32", "graph_crc32") if k in stored.attrs}
        return stored.attrs["config_toml"], state, Records.of(stored), float(stored.attrs.get("seconds", 0.0)), prints
    toml, arrays, records, seconds, prints = read() if transport is None else _at_root(transport, read)
    stored = config_mod.loads_stored(toml, where=where, plugins=plugins)
    _check_paths_are_read(stored, overrides, where=where)
    cfg = config_mod.with_overrides(stored, list(overrides))
    engine = Engine(config=cfg, transport=transport)
    built = run_fingerprint(engine)  # before the exclusions below change the graph
    _check_same_run(built, prints, where=where, overrides=overrides)
    state = {k.removeprefix("checkpoint/"): v for k, v in arrays.items() if k.startswith("checkpoint/")}
    engine.load_state(state | {k: v for k, v in arrays.items() if k.startswith("metrics/")})
    _apply_exclusions(engine, records)
    if records.attrs.get("unlearn_round") == engine.round and "params/unlearned_noiseless" in records.arrays:
        # No training since the last request: the nodes continue from their private noiseless
        # models, so that the next request starts from the exact correction (sequential deletion).
        engine.set_params(torch.as_tensor(records.arrays["params/unlearned_noiseless"][engine.lo:engine.hi], dtype=engine.dtype))
    writer = RunWriter(engine, run_dir, fingerprint=built)
    writer.records, writer.seconds_before = records, seconds
    if engine.transport.is_root and f"unlearn/released/{len(records.requests) - 1}/models" in records.arrays:
        # A run killed between writing its record and its release publishes what it recorded.
        release.publish(run_dir, records.requests, records.arrays, n_clients=engine.n_clients)
    return engine, writer


def _check_paths_are_read(cfg: Config, overrides: list[str], *, where: str) -> None:
    """Refuse a path override the stored run never reads (it would be recorded as if it had been
    used): ``topology.path`` needs ``topology.kind = "file"``, ``topology.mixing_path`` needs
    ``topology.mixing = "file"``, ``data.path`` a dataset read from files."""
    used = {"topology.path": cfg.topology.kind == "file", "topology.mixing_path": cfg.topology.mixing == "file",
            "data.path": bool(cfg.data.path)}
    for o in overrides:
        key = o.strip().split("=", 1)[0].strip()
        if key in used and not used[key]:
            raise ResumeError(f"{where}: the run does not read {key} (topology.kind = {cfg.topology.kind!r}, "
                              f"topology.mixing = {cfg.topology.mixing!r}, data.kind = {cfg.data.kind!r}); drop "
                              f"--set {key}=...: it would be recorded as if the run had used it")


def run_fingerprint(engine: Engine) -> dict[str, int]:
    """CRC-32s of what a run trains on, as ``engine`` built it (before any forget request):
    ``data_crc32`` of every client's inputs and labels and the test split, ``graph_crc32`` of the
    graph's edges and its mixing matrix. Stored in the run file and checked when a run is rebuilt."""
    d = engine.data
    graph = [engine.network.edges()]
    if engine.network.base_mixing is not None:
        W = sp.coo_array(engine.network.base_mixing)
        order = np.lexsort((W.col, W.row))
        graph += [W.row[order].astype(np.int64), W.col[order].astype(np.int64), W.data[order].astype(np.float64)]
    # Each process holds its own clients' inputs: it continues the CRC over its block in turn, which
    # gives the CRC of the whole array's bytes.
    crc = 0
    for r in range(engine.transport.size):
        mine = history.checksum(d.x, start=crc) if engine.transport.rank == r else None
        crc = engine.transport.allgather_object(mine)[r]
    return {"data_crc32": history.checksum(d.y, d.x_test, d.y_test, start=crc), "graph_crc32": history.checksum(*graph)}


def _check_same_run(now: dict[str, int], stored: dict[str, Any], *, where: str, overrides: list[str]) -> None:
    """Refuse a rebuilt run (its :func:`run_fingerprint` ``now``) whose data, graph or mixing differ from
    what the stored run was trained on (a moved data folder pointed at other files, another graph or
    matrix file)."""
    changed = f" (overridden here: {', '.join(overrides)})" if overrides else ""
    if stored.get("data_crc32") is not None and now["data_crc32"] != int(stored["data_crc32"]):
        raise ResumeError(f"{where}: the data built now differ from the data the run was trained on{changed}; "
                          "point data.path at the files the run used")
    if stored.get("graph_crc32") is not None and now["graph_crc32"] != int(stored["graph_crc32"]):
        raise ResumeError(f"{where}: the graph or mixing matrix built now differs from the run's{changed}; point "
                          "topology.path and topology.mixing_path at the files the run used")


def forget_run(run_dir: str | Path, *, clients=(), samples: dict | None = None, overrides: list[str] = (),
               reference: bool = True, progress: bool = False, transport: Transport | None = None,
               plugins: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Forget ``clients``/``samples`` in the finished run at ``run_dir`` (holding its lock) and add
    the request to its files, all or nothing; returns the updated report at the root."""
    run_dir = Path(run_dir)
    if transport is None:
        toml = transport_mod.at_launch_root(lambda: history.read_run(run_dir / "history.h5").attrs["config_toml"])
        stored = config_mod.loads_stored(toml, where=f"{run_dir / 'history.h5'}", plugins=plugins)
        transport = transport_mod.make(stored.run.transport, n_clients=stored.topology.n_clients)
    # The lock is taken before the run is read, so that two requests cannot both start from the same state.
    with writing(transport, run_dir, resume=True, command=f"p2pforget forget {run_dir}"):
        engine, writer = load_run(run_dir, overrides=overrides, transport=transport, plugins=plugins)
        result = forget(engine, clients=clients, samples=samples or {}, reference=reference, progress=progress)
        return record_forget(engine, writer, result)


def audit_run(run_dir: str | Path, *, overrides: list[str] = (), plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Audit the latest forget request of the run at ``run_dir`` (see :mod:`p2pforget.audit`) with
    its ``[audit]`` options (``overrides`` may change them), and add the result to the run files
    (``audit_json`` in the run file's ``unlearn`` group and the request's entry in
    ``requests_json``; ``audit`` in report.json), atomically, holding the run's lock."""
    from .audit import audit

    run_dir = Path(run_dir)
    bad = [o for o in overrides if not o.strip().startswith("audit.")]
    if bad:
        raise config_mod.ConfigError(f"p2pforget audit takes only [audit] keys with --set; got {', '.join(bad)}")
    with history.run_lock(run_dir, command=f"p2pforget audit {run_dir}"):
        stored = history.read_run(run_dir / "history.h5")
        records = Records.of(stored)
        if not records.requests:
            raise ValueError(f"{run_dir} holds no forget request to audit: run `p2pforget forget {run_dir} --clients ID` first")
        where = f"{run_dir / 'history.h5'}"
        cfg = config_mod.with_overrides(config_mod.loads_stored(stored.attrs["config_toml"], where=where, plugins=plugins),
                                        list(overrides))
        engine, _ = load_run(run_dir, plugins=plugins)
        last = records.requests[-1]
        forgotten = {int(j): np.asarray(v, dtype=np.int64) for j, v in last["unlearn"]["forgotten"].items()}
        models = {name: stored.arrays[f"params/{key}"] for name, key in
                  (("trained", "before_request"), ("unlearned", "unlearned"), ("retrained", "retrained"))
                  if f"params/{key}" in stored.arrays}
        report_path = run_dir / "report.json"
        report = history.read_json(report_path) if report_path.exists() else {}  # refuse a damaged one before any work
        result = audit(engine, forgotten=forgotten, models=models, nodes=np.flatnonzero(engine.members),
                       options=cfg.audit, seed=engine.seed)
        requests = records.requests
        requests[-1]["audit"] = result
        group_attrs = dict(stored.group_attrs)
        group_attrs["unlearn"] = dict(group_attrs.get("unlearn", {})) | {"audit_json": history.json_text(result)}
        history.write_h5(run_dir / "history.h5", attrs=dict(stored.attrs) | {"requests_json": history.json_text(requests)},
                         arrays=stored.arrays, group_attrs=group_attrs)
        history.write_json(report_path, report | {"audit": result, "requests": requests})
    return result
