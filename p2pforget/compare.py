"""Topology comparison: the same experiment (and forget request, if any) on several graphs.

Example
-------
>>> import tempfile
>>> from p2pforget import config
>>> cfg = config.from_dict({"run": {"rounds": 2}, "topology": {"n_clients": 9}, "data": {"n_samples_per_client": 8}})
>>> headers, rows = compare(cfg, ["ring", "torus"], out=tempfile.mkdtemp(), progress=False)
>>> [r[0] for r in rows]
['ring', 'torus']
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import config as config_mod, experiment, history, report, stats, topology
from .config import Config
from .unlearn.stopping import STATUSES

EQUIVALENCE_MARGIN = 5.0
"""Points of FA_heldout within which a method counts as equivalent to Retrain (docs/methods/stopping.md)."""

TRAIN_HEADERS = ["topology", "spectral gap", "loss", "test acc (mean)", "test acc (min)", "consensus", "comm MB"]
UNLEARN_HEADERS = ["status", "FA", "FA held-out", "RA", "TA", "MIA", "dist. to Retrain (rel.)", "sigma", "time / Retrain",
                   "bytes / Retrain"]


def compare(cfg: Config, topologies: Sequence[str], *, out: str | Path, progress: bool = True,
            overwrite: bool = False) -> tuple[list[str], list[list]]:
    """Run ``cfg`` once per topology kind (same seed) into ``out/<kind>``; at the root, write
    ``out/summary.json`` and ``out/comparison.png`` and return the table's headers and rows.

    Every topology's config and graph are checked before the first run starts."""
    out = Path(out)
    rows, curves = [], {}
    unlearning = bool(cfg.unlearn.clients or cfg.unlearn.samples)
    if not topologies:
        raise config_mod.ConfigError("no topologies to compare; give a comma-separated list, e.g. --topologies ring,torus")
    configs = {kind: config_mod.replace(cfg, topology={"kind": kind}) for kind in topologies}
    for c in configs.values():
        t = c.topology
        topology.build_graph(t.kind, t.n_clients, seed=c.run.seed, **topology.graph_options(t))
    for kind, kind_cfg in configs.items():
        result = experiment.run(kind_cfg, out=out / kind, progress=progress, overwrite=overwrite)
        if not result.report:
            continue
        r, f = result.report, result.report["final"]
        row = [kind, r["topology"]["spectral_gap"], f["loss_mean"], f["test_acc_mean"], f["test_acc_min"],
               f["consensus_distance"], r["bytes_total"] / 1e6]
        if unlearning:
            u, ratio = r["metrics"]["unlearned"], r["cost"]["ratio_to_retrain"]
            flagged = r.get("status", {}).get("flagged")
            row += [("FLAGGED " if flagged else "") + r.get("status", {}).get("status", "ok"),
                    u["FA"]["mean"] if u["FA"] else float("nan"),
                    u["FA_heldout"]["mean"] if u.get("FA_heldout") else float("nan"), u["RA"]["mean"], u["TA"]["mean"],
                    u.get("MIA", float("nan")),
                    u["relative_distance_to_retrain"], r["unlearn"].get("sigma", float("nan")), ratio["seconds"],
                    ratio["comm_bytes"]]
        rows.append(row)
        curves[kind] = result.engine.metrics
    headers = TRAIN_HEADERS + (UNLEARN_HEADERS if unlearning else [])
    if rows:
        history.write_json(out / "summary.json", [dict(zip(headers, row)) for row in rows])
        report.plot_comparison(curves, out / "comparison.png")
    return headers, rows


# ---------------------------------------------------------------------------------------- the grid
GRID_FIELDS = ["topology", "method", "seed", "status", "flagged", "spectral_gap", "rounds_trained", "FA", "FA_heldout",
               "RA", "TA", "MIA", "FA_trained", "FA_heldout_trained", "RA_trained", "TA_trained", "MIA_trained",
               "heldout_n", "comm_bytes", "method_rounds", "FA_gap_to_retrain", "FA_heldout_gap_to_retrain",
               "RA_gap_to_retrain", "MIA_gap_to_retrain", "bytes_ratio_to_retrain", "ASR", "ASR_trained",
               "ASR_gap_to_retrain"]
"""Columns of ``compare.csv``: deterministic numbers only (the same at any rank count). Seconds and
FLOPs, which vary between runs and with the rank count, go to ``timing.csv``. The ASR columns
(attack success rate, :mod:`p2pforget.poison`) are empty without a poisoned client."""


@dataclass(frozen=True)
class Grid:
    """Every topology x method x seed of one experiment and forget request. The unit of work (an
    array task) is a group: one topology and seed, trained once, then every method from that state."""

    topologies: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def groups(self) -> list[tuple[str, int]]:
        return [(t, s) for t in self.topologies for s in self.seeds]

    def cells(self) -> list[tuple[str, str, int]]:
        return [(t, m, s) for t in self.topologies for m in self.methods for s in self.seeds]


def _cell_file(out: Path, topology: str, method: str, seed: int) -> Path:
    return out / "cells" / f"{topology}__{method}__s{seed}.json"


def run_group(cfg: Config, grid: Grid, topology: str, seed: int, *, out: Path, transport, progress: bool = False) -> None:
    """Train ``topology`` x ``seed`` (resuming its run directory if it is unfinished), then run every
    method of the grid whose cell file is missing, each from the trained state; the root writes each
    cell's numbers (``cells/<topology>__<method>__s<seed>.json``) as soon as it is done."""
    from .unlearn import forget

    clients, samples = experiment.forget_request(cfg)
    if not (clients or samples):
        raise config_mod.ConfigError("the grid compares forget requests: set unlearn.clients or unlearn.samples")
    kind_cfg = config_mod.replace(cfg, topology={"kind": topology}, run={"seed": seed},
                                  unlearn={"clients": (), "samples": {}})
    run_dir = out / "runs" / f"{topology}-s{seed}"
    done = transport.bcast_object(_complete(run_dir) if transport.is_root else None)
    if done != "complete":
        experiment.run(kind_cfg, out=run_dir, resume=done == "partial", progress=progress, transport=transport)
    trained = None
    for method in grid.methods:
        path = _cell_file(out, topology, method, seed)
        if transport.bcast_object(path.exists() if transport.is_root else None):
            continue
        if trained is None:
            trained, _ = experiment.load_run(run_dir, transport=transport)
        engine = trained.fork()  # every method from the same trained state, read from disk once
        trained_ta = engine.metrics["test_acc_mean"][-1] if transport.is_root else None
        result = forget(engine, clients=clients, samples=samples, method=method, reference=False, progress=False)
        if transport.is_root:
            m = result.metrics
            u, t = m["unlearned"], m["trained"]
            cost = result.cost["unlearn"]
            mean = (lambda d, k: d[k]["mean"] if d.get(k) else None)  # noqa: E731
            forgotten = sorted(int(j) for j in result.forgotten)
            history.write_json(path, {
                "topology": topology, "method": method, "seed": seed, "status": result.status["status"],
                "flagged": bool(result.status["flagged"]),
                "spectral_gap": engine.topology_stats().spectral_gap, "rounds_trained": int(kind_cfg.run.rounds),
                "FA": mean(u, "FA"), "FA_heldout": mean(u, "FA_heldout"), "RA": u["RA"]["mean"], "TA": u["TA"]["mean"],
                "MIA": u.get("MIA"), "ASR": mean(u, "ASR"), "ASR_trained": mean(t, "ASR"), "FA_trained": mean(t, "FA"), "FA_heldout_trained": mean(t, "FA_heldout"),
                "RA_trained": t["RA"]["mean"], "TA_trained": t["TA"]["mean"], "MIA_trained": t.get("MIA"),
                "heldout_n": (int(engine.data.holdout_counts[forgotten].sum())
                              if engine.data.holdout_counts is not None else 0),
                "comm_bytes": cost.comm_bytes, "method_rounds": len(result.traces.get("unlearned", [])),
                "seconds": cost.seconds, "flops": cost.flops, "trained_test_acc": trained_ta,
                "forgotten_clients": forgotten})


def _complete(run_dir: Path) -> str:
    """``complete``, ``partial`` (a run file from an interrupted run) or ``missing``."""
    try:
        return "complete" if history.read_h5(run_dir / "history.h5").attrs.get("complete") else "partial"
    except (OSError, ValueError, history.RunFileError):
        return "missing"


def merge(grid: Grid, *, out: Path, margin: float = EQUIVALENCE_MARGIN) -> list[dict]:
    """Read every cell of the grid and write ``compare.csv``, ``timing.csv``, ``compare.md`` (mean ±
    std over seeds, statuses, FA_heldout verdicts), ``verdicts.json`` and the figures; returns the
    rows. Cells not yet computed are listed in an error."""
    missing = [c for c in grid.cells() if not _cell_file(out, *c).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} cell(s) of the grid are not done yet, e.g. {missing[0]}; run the "
                                "remaining groups (p2pforget compare ... --task I) before --merge")
    rows = [json.loads(_cell_file(out, *c).read_text()) for c in grid.cells()]
    by_key = {(r["topology"], r["method"], r["seed"]): r for r in rows}
    for r in rows:
        ref = by_key.get((r["topology"], "retrain", r["seed"]))
        gap = (lambda k, of=r: None if ref is None or of.get(k) is None or ref.get(k) is None else of[k] - ref[k])  # noqa: E731
        for k in ("FA", "FA_heldout", "RA", "MIA", "ASR"):
            r[f"{k}_gap_to_retrain"] = gap(k)
        # the do-nothing model of the same seed, against the same Retrain
        r["FA_heldout_trained_gap_to_retrain"] = (None if ref is None or r.get("FA_heldout_trained") is None
                                                  or ref.get("FA_heldout") is None
                                                  else r["FA_heldout_trained"] - ref["FA_heldout"])
        r["bytes_ratio_to_retrain"] = r["comm_bytes"] / ref["comm_bytes"] if ref and ref["comm_bytes"] else None
    history.write_csv(out / "compare.csv", GRID_FIELDS, [[_csv(r.get(k)) for k in GRID_FIELDS] for r in rows])
    history.write_json(out / "verdicts.json", verdicts(rows, grid, margin=margin))
    history.write_csv(out / "timing.csv", ["topology", "method", "seed", "seconds", "flops"],
                      [[r["topology"], r["method"], r["seed"], r["seconds"], r["flops"]] for r in rows])
    (out / "compare.md").write_text(grid_table(rows, grid, margin=margin) + "\n")
    report.plot_grid(rows, grid.topologies, grid.methods, grid.seeds, out=out)
    return rows


def _csv(v):
    return "" if v is None else v


def verdicts(rows: list[dict], grid: Grid, *, margin: float = EQUIVALENCE_MARGIN) -> dict[str, dict]:
    """``"<topology>/<method>"`` -> the FA_heldout equivalence verdict against Retrain over the
    grid's seeds (:func:`p2pforget.stats.equivalence`), with the flagged seeds counted."""
    out = {}
    for t in grid.topologies:
        for m in grid.methods:
            if m == "retrain":
                continue
            mine = sorted((r for r in rows if r["topology"] == t and r["method"] == m), key=lambda r: r["seed"])
            v = stats.equivalence([r.get("FA_heldout_gap_to_retrain") for r in mine],
                                  [r.get("FA_heldout_trained_gap_to_retrain") for r in mine], margin=margin)
            v["flagged"] = sum(bool(r.get("flagged")) for r in mine)
            v["statuses"] = {k: sum(r.get("status", "ok") == k for r in mine) for k in STATUSES}
            v["reason"] = stats.reason(v)
            out[f"{t}/{m}"] = v
    return out


def grid_table(rows: list[dict], grid: Grid, *, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Markdown: one line per topology x method, mean ± std over seeds, how many seeds were
    flagged (rolled back or collapsed: such a line is marked, never a normal row) and the
    FA_heldout verdict against Retrain."""
    judged = verdicts(rows, grid, margin=margin)

    fmt = report.mean_std

    cols = [("FA", "FA"), ("FA_heldout", "FA held-out"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"),
            ("FA_gap_to_retrain", "FA − Retrain"), ("RA_gap_to_retrain", "RA − Retrain"),
            ("MIA_gap_to_retrain", "MIA − Retrain")]
    if any(r.get("ASR") is not None for r in rows):
        cols += [("ASR", "ASR"), ("ASR_gap_to_retrain", "ASR − Retrain")]
    lines = ["| topology | spectral gap | method | " + " | ".join(c[1] for c in cols)
             + f" | Comm MB | seconds | flagged | FA held-out − Retrain, 90% CI: verdict (±{margin:g}) |",
             "|---|---|---|" + "---|" * len(cols) + "---|---|---|---|"]
    for t in grid.topologies:
        for m in grid.methods:
            mine = [r for r in rows if r["topology"] == t and r["method"] == m]
            gap = mine[0]["spectral_gap"]
            flagged = [r for r in mine if r.get("flagged")]
            name = f"**{m} (flagged)**" if flagged else m
            v = judged.get(f"{t}/{m}")
            verdict = "reference" if v is None else f"{v['verdict']}: {v['reason']}"
            what = (f"{len(flagged)}/{len(mine)}: " + ", ".join(sorted({r['status'] for r in flagged}))) if flagged else "0"
            lines.append(f"| {t} | {gap:.3g} | {name} | " + " | ".join(fmt([r.get(k) for r in mine]) for k, _ in cols)
                         + f" | {fmt([r['comm_bytes'] / 1e6 for r in mine])} | {fmt([r['seconds'] for r in mine])}"
                         f" | {what} | {verdict} |")
    return "\n".join(lines)


def grid(cfg: Config, grid_spec: Grid, *, out: str | Path, task: int | None = None, merge_only: bool = False,
         progress: bool = False, margin: float = EQUIVALENCE_MARGIN) -> list[dict] | None:
    """Run the grid (every group, or only group ``task``: an array task), then merge at the root
    (not after a single task: merge once every task is done, with ``merge_only``). Finished cells
    are never run again, so a killed grid resumes where it stopped."""
    from . import transport as transport_mod

    out = Path(out)
    groups = grid_spec.groups
    if task is not None and not 0 <= task < len(groups):
        raise ValueError(f"--task {task}: the grid has {len(groups)} groups (topology x seed), numbered 0..{len(groups) - 1}")
    for c in grid_spec.topologies:
        t = config_mod.replace(cfg, topology={"kind": c}).topology
        topology.build_graph(t.kind, t.n_clients, seed=cfg.run.seed, **topology.graph_options(t))
    transport = transport_mod.make(cfg.run.transport, n_clients=cfg.topology.n_clients)
    if not merge_only:
        for i, (kind, seed) in enumerate(groups):
            if task is None or task == i:
                run_group(cfg, grid_spec, kind, seed, out=out, transport=transport, progress=progress)
    if task is not None and not merge_only:
        return None
    return merge(grid_spec, out=out, margin=margin) if transport.is_root else None
