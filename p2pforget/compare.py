"""Experiments over topologies, methods and seeds: one orchestrator, one results schema.

A grid is every topology x method x seed of one experiment and forget request. Its unit of work (a
group: one array task) is a topology and a seed, trained once; every method then runs from that
trained state, Retrain among them as the reference. :func:`compare` is the grid of the config's
own method (with Retrain) and seed on several topologies; without a forget request, a grid of
trainings only.

A group writes ``groups/<topology>-s<seed>.json`` (its training numbers), each cell
``cells/<topology>__<method>__s<seed>.json`` and ``.npz`` (the staying nodes' noiseless models,
for the distance to Retrain's); :func:`merge` joins them into ``compare.csv`` (columns
:data:`GRID_FIELDS`), ``timing.csv``, ``compare.md``, ``verdicts.json`` and the figures.

Example
-------
>>> import tempfile
>>> from p2pforget import config
>>> cfg = config.from_dict({"run": {"rounds": 2}, "topology": {"n_clients": 9}, "data": {"n_samples_per_client": 8}})
>>> rows = compare(cfg, ["ring", "torus"], out=tempfile.mkdtemp(), progress=False)
>>> [(r["topology"], r["method"]) for r in rows]
[('ring', None), ('torus', None)]
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import config as config_mod, experiment, history, report, stats, topology
from .config import Config
from .unlearn.stopping import STATUSES

EQUIVALENCE_MARGIN = 5.0
"""Points of FA_heldout within which a method counts as equivalent to Retrain (docs/methods/stopping.md)."""

TRAIN_FIELDS = ["spectral_gap", "rounds_trained", "loss", "test_acc_mean", "test_acc_min", "consensus_distance",
                "train_comm_bytes"]
"""A group's training numbers (accuracies in percent), in every row of its cells."""
GRID_FIELDS = ["topology", "method", "seed", *TRAIN_FIELDS, "status", "flagged", "FA", "FA_heldout", "RA", "TA",
               "MIA", "FA_trained", "FA_heldout_trained", "RA_trained", "TA_trained", "MIA_trained", "heldout_n",
               "comm_bytes", "method_rounds", "sigma", "relative_distance_to_retrain", "FA_gap_to_retrain",
               "FA_heldout_gap_to_retrain", "RA_gap_to_retrain", "MIA_gap_to_retrain", "bytes_ratio_to_retrain",
               "ASR", "ASR_trained", "ASR_gap_to_retrain"]
"""Columns of ``compare.csv``, one row per cell (per group in a grid without methods):
deterministic numbers only (the same at any rank count). Seconds and FLOPs, which vary between
runs and with the rank count, go to ``timing.csv``. ``relative_distance_to_retrain`` is the mean
distance of the staying nodes' noiseless models to Retrain's, over the trained models' distance
(0: Retrain's models, 1: nothing changed). The ASR columns (attack success rate,
:mod:`p2pforget.poison`) are empty without a poisoned client."""


@dataclass(frozen=True)
class Grid:
    """Every topology x method x seed of one experiment and forget request. The unit of work (an
    array task) is a group: one topology and seed, trained once, then every method from that state.
    With no methods, a grid trains each group only."""

    topologies: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def groups(self) -> list[tuple[str, int]]:
        return [(t, s) for t in self.topologies for s in self.seeds]

    def cells(self) -> list[tuple[str, str, int]]:
        return [(t, m, s) for t in self.topologies for m in self.methods for s in self.seeds]


def default_grid(cfg: Config, topologies: Sequence[str], *, methods: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None) -> Grid:
    """The grid of ``cfg`` on ``topologies``: by default its seed and, with a forget request, its
    method and Retrain (the reference every ratio and gap is taken against); no methods without one.

    >>> from p2pforget import config
    >>> default_grid(config.from_dict({"unlearn": {"clients": [1], "method": "finetune"}}), ["ring"])
    Grid(topologies=('ring',), methods=('finetune', 'retrain'), seeds=(0,))
    """
    topologies = tuple(topologies)
    if not topologies:
        raise config_mod.ConfigError("no topologies to compare; give a comma-separated list, e.g. --topologies ring,torus")
    if methods is None:
        clients, samples = experiment.forget_request(cfg)
        methods = tuple(dict.fromkeys((cfg.unlearn.method, "retrain"))) if clients or samples else ()
    return Grid(topologies=topologies, methods=tuple(methods), seeds=tuple(seeds) if seeds else (cfg.run.seed,))


def study(cfg: Config, *, topologies: Sequence[str], methods: Sequence[str] | None = None,
          seeds: Sequence[int] | None = None, out: str | Path | None = None, progress: bool = False):
    """The topology x method x seed study of ``cfg``'s forget request from Python: each topology
    and seed trained once, every method (Retrain among them: the reference) from that state, as
    ``p2pforget compare`` runs it. Returns the rows of ``compare.csv`` (columns
    :data:`GRID_FIELDS`, with seconds and FLOPs) as a pandas ``DataFrame`` when pandas is
    installed, else as a list of dicts. ``out`` (default ``run.out + "-study"``) keeps the runs,
    cells, tables and figures; calling again with more methods or seeds computes only what is new.

    >>> import tempfile
    >>> from p2pforget import config
    >>> cfg = config.from_dict({"run": {"rounds": 2}, "topology": {"n_clients": 5},
    ...                         "data": {"n_samples_per_client": 8}, "unlearn": {"clients": [1]}})
    >>> rows = study(cfg, topologies=["ring"], methods=["retrain", "finetune"], out=tempfile.mkdtemp())
    >>> [(r["method"], r["bytes_ratio_to_retrain"]) for r in rows][0]
    ('retrain', 1.0)
    >>> rows[1]["method"], rows[1]["comm_bytes"] > 0
    ('finetune', True)
    """
    spec = default_grid(cfg, topologies, methods=methods, seeds=seeds)
    rows = grid(cfg, spec, out=Path(out or f"{cfg.run.out}-study"), progress=progress)
    records = [{k: r.get(k) for k in GRID_FIELDS + ["seconds", "flops"]} for r in rows]
    try:
        import pandas
    except ImportError:
        return records
    return pandas.DataFrame.from_records(records, columns=GRID_FIELDS + ["seconds", "flops"])


def compare(cfg: Config, topologies: Sequence[str], *, out: str | Path, progress: bool = False,
            overwrite: bool = False) -> list[dict]:
    """Run ``cfg`` on each topology kind (same seed): :func:`grid` of :func:`default_grid`.
    Returns the merged rows (:data:`GRID_FIELDS`); a finished topology is not run again."""
    return grid(cfg, default_grid(cfg, topologies), out=out, progress=progress, overwrite=overwrite)


def _cell_file(out: Path, topology: str, method: str, seed: int) -> Path:
    return out / "cells" / f"{topology}__{method}__s{seed}.json"


def _group_file(out: Path, topology: str, seed: int) -> Path:
    return out / "groups" / f"{topology}-s{seed}.json"


def run_group(cfg: Config, grid: Grid, topology: str, seed: int, *, out: Path, transport, progress: bool = False) -> None:
    """Train ``topology`` x ``seed`` (resuming its run directory if it is unfinished), then run every
    method of the grid whose cell file is missing, each from the trained state; the root writes the
    group's training numbers and each cell's numbers as soon as they are done."""
    from .unlearn import forget

    clients, samples = experiment.forget_request(cfg)
    if grid.methods and not (clients or samples):
        raise config_mod.ConfigError("the grid compares forget requests: set unlearn.clients or unlearn.samples")
    kind_cfg = config_mod.replace(cfg, topology={"kind": topology}, run={"seed": seed},
                                  unlearn={"clients": (), "samples": {}})
    run_dir = out / "runs" / f"{topology}-s{seed}"
    done = transport.bcast_object(experiment.run_state(run_dir) if transport.is_root else None)
    if done != "complete":
        experiment.run(kind_cfg, out=run_dir, resume=done == "partial", progress=progress, transport=transport)
    if transport.is_root and not _group_file(out, topology, seed).exists():
        history.write_json(_group_file(out, topology, seed), _training_numbers(run_dir, topology, seed))
    trained = None
    for method in grid.methods:
        path = _cell_file(out, topology, method, seed)
        if transport.bcast_object(path.exists() if transport.is_root else None):
            continue
        if trained is None:
            trained, _ = experiment.load_run(run_dir, transport=transport)
        engine = trained.fork()  # every method from the same trained state, read from disk once
        result = forget(engine, clients=clients, samples=samples, method=method, reference=False, progress=False)
        if transport.is_root:
            m = result.metrics
            u, t = m["unlearned"], m["trained"]
            cost = result.cost["unlearn"]
            mean = (lambda d, k: d[k]["mean"] if d.get(k) else None)  # noqa: E731
            forgotten = sorted(int(j) for j in result.forgotten)
            staying = np.flatnonzero(np.isfinite(result.params["unlearned"]).all(axis=1))
            history.write_npz(path.with_suffix(".npz"), nodes=staying, trained=result.params["trained"][staying],
                              noiseless=result.params["unlearned_noiseless"][staying])
            history.write_json(path, {
                "topology": topology, "method": method, "seed": seed, "status": result.status["status"],
                "flagged": bool(result.status["flagged"]),
                "FA": mean(u, "FA"), "FA_heldout": mean(u, "FA_heldout"), "RA": u["RA"]["mean"], "TA": u["TA"]["mean"],
                "MIA": u.get("MIA"), "ASR": mean(u, "ASR"), "ASR_trained": mean(t, "ASR"), "FA_trained": mean(t, "FA"),
                "FA_heldout_trained": mean(t, "FA_heldout"), "RA_trained": t["RA"]["mean"], "TA_trained": t["TA"]["mean"],
                "MIA_trained": t.get("MIA"),
                "heldout_n": (int(engine.data.holdout_counts[forgotten].sum())
                              if engine.data.holdout_counts is not None else 0),
                "comm_bytes": cost.comm_bytes, "method_rounds": len(result.traces.get("unlearned", [])),
                "sigma": (result.certificate or {}).get("sigma"),
                "seconds": cost.seconds, "flops": cost.flops, "forgotten_clients": forgotten})


def _training_numbers(run_dir: Path, topology: str, seed: int) -> dict:
    r = history.read_json(run_dir / "report.json")
    f = r["final"]
    percent = (lambda v: None if v is None else 100.0 * v)  # noqa: E731
    return {"topology": topology, "seed": seed, "spectral_gap": r["topology"]["spectral_gap"],
            "rounds_trained": int(r["rounds_done"]), "loss": f["loss_mean"], "test_acc_mean": percent(f["test_acc_mean"]),
            "test_acc_min": percent(f["test_acc_min"]), "consensus_distance": f["consensus_distance"],
            "train_comm_bytes": r["bytes_total"]}


FIGURE_FORMATS = ("png", "pdf")
"""The grid's figures are written in these formats (PDF for papers)."""


def training_curves(run_dir: Path) -> dict[str, list]:
    """The per-round training metrics stored in a run's ``history.h5``."""
    stored = history.read_h5(Path(run_dir) / "history.h5")
    return {k[len("metrics/"):]: list(v) for k, v in stored.arrays.items() if k.startswith("metrics/")}


def merge(grid: Grid, *, out: Path, margin: float = EQUIVALENCE_MARGIN,
          formats: Sequence[str] = FIGURE_FORMATS) -> list[dict]:
    """Read every group and cell of the grid and write ``compare.csv``, ``timing.csv``,
    ``compare.md`` (training, then methods: mean ± std over seeds, statuses, FA_heldout verdicts),
    ``verdicts.json`` and the figures (in ``formats``); returns the rows. Parts not yet computed are
    named in an error."""
    missing = ([g for g in grid.groups if not _group_file(out, *g).exists()]
               + [c for c in grid.cells() if not _cell_file(out, *c).exists()])
    if missing:
        raise FileNotFoundError(f"{len(missing)} part(s) of the grid are not done yet, e.g. {missing[0]}; run the "
                                "remaining groups (p2pforget compare ... --task I) before --merge")
    groups = {g: history.read_json(_group_file(out, *g)) for g in grid.groups}
    if not grid.methods:
        rows = [{"method": None, **groups[g]} for g in grid.groups]
    else:
        rows = [{**groups[(t, s)], **history.read_json(_cell_file(out, t, m, s))} for t, m, s in grid.cells()]
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
        r["seconds_ratio_to_retrain"] = r["seconds"] / ref["seconds"] if ref and ref["seconds"] else None
        r["relative_distance_to_retrain"] = (_relative_distance(out, r, ref) if ref else None)
    history.write_csv(out / "compare.csv", GRID_FIELDS, [[_csv(r.get(k)) for k in GRID_FIELDS] for r in rows])
    if grid.methods:
        history.write_json(out / "verdicts.json", verdicts(rows, grid, margin=margin))
        history.write_csv(out / "timing.csv", ["topology", "method", "seed", "seconds", "flops"],
                          [[r["topology"], r["method"], r["seed"], r["seconds"], r["flops"]] for r in rows])
    (out / "compare.md").write_text(training_table(rows, grid) + "\n"
                                    + ("\n" + grid_table(rows, grid, margin=margin) + "\n" if grid.methods else ""))
    curves = {t: [training_curves(out / "runs" / f"{t}-s{s}") for s in grid.seeds] for t in grid.topologies}
    after = {m: {t: [r["FA_heldout_gap_to_retrain"] for r in rows if r["method"] == m and r["topology"] == t
                     and r.get("FA_heldout_gap_to_retrain") is not None] for t in grid.topologies}
             for m in grid.methods if m != "retrain"}
    report.plot_comparison(curves, out / "comparison.png", after={m: v for m, v in after.items() if any(v.values())},
                           formats=formats)
    if grid.methods:
        report.plot_grid(rows, grid.topologies, grid.methods, grid.seeds, out=out, formats=formats)
    return rows


def _relative_distance(out: Path, row: dict, ref: dict) -> float | None:
    """Mean over the staying nodes of ``||noiseless_i - retrain_i||`` over the same for the trained
    models (:func:`p2pforget.metrics.distance`): noiseless against noiseless, since a release's
    noise is not an unlearning error."""
    from .metrics import distance

    with np.load(_cell_file(out, row["topology"], row["method"], row["seed"]).with_suffix(".npz")) as mine, \
            np.load(_cell_file(out, ref["topology"], "retrain", ref["seed"]).with_suffix(".npz")) as theirs:
        if not np.array_equal(mine["nodes"], theirs["nodes"]):
            return None
        nodes = np.arange(len(mine["nodes"]))
        base = distance(mine["trained"], theirs["noiseless"], nodes)
        return distance(mine["noiseless"], theirs["noiseless"], nodes) / base if base > 0 else 0.0


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


def training_table(rows: list[dict], grid: Grid) -> str:
    """Markdown: the trained models of each topology, before any forget request (mean ± std over seeds)."""
    fmt = report.mean_std
    cols = [("loss", "loss", 3), ("test_acc_mean", "test acc % (mean)", 1), ("test_acc_min", "test acc % (min)", 1),
            ("consensus_distance", "consensus", 3)]
    lines = ["| topology | spectral gap | rounds | " + " | ".join(c[1] for c in cols) + " | Comm MB |",
             "|---|---|---|" + "---|" * len(cols) + "---|"]
    for t in grid.topologies:
        mine = {r["seed"]: r for r in rows if r["topology"] == t}.values()  # one per group
        first = next(iter(mine))
        lines.append(f"| {t} | {first['spectral_gap']:.3g} | {first['rounds_trained']} | "
                     + " | ".join(fmt([r.get(k) for r in mine], d) for k, _, d in cols)
                     + f" | {fmt([r['train_comm_bytes'] / 1e6 for r in mine], 2)} |")
    return "\n".join(lines)


def grid_table(rows: list[dict], grid: Grid, *, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Markdown: one line per topology x method, mean ± std over seeds, how many seeds were
    flagged (rolled back or collapsed: such a line is marked, never a normal row) and the
    FA_heldout verdict against Retrain."""
    judged = verdicts(rows, grid, margin=margin)

    fmt = report.mean_std

    cols = [("FA", "FA"), ("FA_heldout", "FA held-out"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"),
            ("FA_gap_to_retrain", "FA − Retrain"), ("RA_gap_to_retrain", "RA − Retrain"),
            ("MIA_gap_to_retrain", "MIA − Retrain"), ("relative_distance_to_retrain", "dist. to Retrain (rel.)"),
            ("sigma", "sigma")]
    if any(r.get("ASR") is not None for r in rows):
        cols += [("ASR", "ASR"), ("ASR_gap_to_retrain", "ASR − Retrain")]
    lines = ["| topology | spectral gap | method | " + " | ".join(c[1] for c in cols)
             + f" | Comm MB | bytes / Retrain | seconds | time / Retrain | flagged "
             f"| FA held-out − Retrain, 90% CI: verdict (±{margin:g}) |",
             "|---|---|---|" + "---|" * len(cols) + "---|---|---|---|---|---|"]
    for t in grid.topologies:
        lines.append(_trained_line(rows, t, cols))
        for m in grid.methods:
            mine = [r for r in rows if r["topology"] == t and r["method"] == m]
            gap = mine[0]["spectral_gap"]
            flagged = [r for r in mine if r.get("flagged")]
            name = f"**{m} (flagged)**" if flagged else m
            v = judged.get(f"{t}/{m}")
            verdict = "reference" if v is None else f"{v['verdict']}: {v['reason']}"
            what = (f"{len(flagged)}/{len(mine)}: " + ", ".join(sorted({r['status'] for r in flagged}))) if flagged else "0"
            lines.append(f"| {t} | {gap:.3g} | {name} | " + " | ".join(fmt([r.get(k) for r in mine]) for k, _ in cols)
                         + f" | {fmt([r['comm_bytes'] / 1e6 for r in mine])} | {fmt([r.get('bytes_ratio_to_retrain') for r in mine], 2)}"
                         f" | {fmt([r['seconds'] for r in mine])} | {fmt([r.get('seconds_ratio_to_retrain') for r in mine], 2)}"
                         f" | {what} | {verdict} |")
    return "\n".join(lines)


def _trained_line(rows: list[dict], topology: str, cols: list[tuple[str, str]]) -> str:
    """The do-nothing line: the trained models before the request, against the same Retrain."""
    first = {}
    for r in rows:
        if r["topology"] == topology:
            first.setdefault(r["seed"], r)
    refs = {r["seed"]: r for r in rows if r["topology"] == topology and r["method"] == "retrain"}
    before = []
    for seed, r in first.items():
        row = {k: r.get(f"{k}_trained") for k in ("FA", "FA_heldout", "RA", "TA", "MIA", "ASR")}
        ref = refs.get(seed)
        for k in ("FA", "RA", "MIA", "ASR"):
            row[f"{k}_gap_to_retrain"] = (None if ref is None or row[k] is None or ref.get(k) is None else row[k] - ref[k])
        row["relative_distance_to_retrain"] = 1.0 if ref is not None else None  # the unit of that column
        before.append(row)
    gap = next(iter(first.values()))["spectral_gap"]
    return (f"| {topology} | {gap:.3g} | trained (before) | " + " | ".join(report.mean_std([r.get(k) for r in before])
                                                                       for k, _ in cols) + " | - | - | - | - | - | do nothing |")


def grid(cfg: Config, grid_spec: Grid, *, out: str | Path, task: int | None = None, merge_only: bool = False,
         progress: bool = False, overwrite: bool = False, margin: float = EQUIVALENCE_MARGIN) -> list[dict] | None:
    """Run the grid (every group, or only group ``task``: an array task), then merge at the root
    (not after a single task: merge once every task is done, with ``merge_only``). Finished groups
    and cells are never run again, so a killed grid resumes where it stopped; ``out`` holds one
    experiment (``grid.json``): another config there is an error unless ``overwrite`` clears it."""
    from . import transport as transport_mod

    out = Path(out)
    groups = grid_spec.groups
    if task is not None and not 0 <= task < len(groups):
        raise ValueError(f"--task {task}: the grid has {len(groups)} groups (topology x seed), numbered 0..{len(groups) - 1}")
    for c in grid_spec.topologies:
        t = config_mod.replace(cfg, topology={"kind": c}).topology
        topology.build_graph(t.kind, t.n_clients, seed=cfg.run.seed, **topology.graph_options(t))
    transport = transport_mod.make(cfg.run.transport, n_clients=cfg.topology.n_clients)
    problem = transport.bcast_object(_claim(cfg, out, overwrite=overwrite) if transport.is_root else None)
    if problem:
        raise config_mod.ConfigError(problem)
    if not merge_only:
        for i, (kind, seed) in enumerate(groups):
            if task is None or task == i:
                run_group(cfg, grid_spec, kind, seed, out=out, transport=transport, progress=progress)
    if task is not None and not merge_only:
        return None
    return merge(grid_spec, out=out, margin=margin) if transport.is_root else None


def _experiment(cfg: Config) -> dict:
    """What every cell of a grid shares: the config less what the grid varies (topology kind,
    seed, method) and what does not change a number."""
    d = config_mod.to_dict(cfg)
    for key in ("seed", "out", "checkpoint_every", "transport", "keep_private"):
        d["run"].pop(key, None)
    d["topology"].pop("kind", None)
    d["unlearn"].pop("method", None)
    return d


def _current_form(stored: dict) -> dict:
    """A stored grid's experiment as this version writes it (keys that moved into per-kind tables
    read where they went), so a grid started by an earlier version resumes; as stored when it no
    longer reads as a config (the comparison then names the differences)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return json.loads(history.json_text(config_mod.to_dict(config_mod.from_dict(stored))))
    except (config_mod.ConfigError, TypeError, ValueError):
        return stored


def _claim(cfg: Config, out: Path, *, overwrite: bool) -> str | None:
    """Mark ``out`` as this experiment's grid; a message when it holds another's."""
    path = out / "grid.json"
    if overwrite:
        for part in ("cells", "groups", "runs"):
            shutil.rmtree(out / part, ignore_errors=True)
        path.unlink(missing_ok=True)
    mine = json.loads(history.json_text(_experiment(cfg)))
    if path.exists():
        theirs = _current_form(history.read_json(path))
        diffs = [f"{s}.{k}: {theirs.get(s, {}).get(k)!r} -> {v!r}" for s in mine for k, v in mine[s].items()
                 if theirs.get(s, {}).get(k) != v]
        if diffs:
            return (f"{out} holds a grid of another experiment (" + "; ".join(diffs[:5])
                    + (f"; {len(diffs) - 5} more" if len(diffs) > 5 else "")
                    + "): choose another --out, or --overwrite to replace it")
    else:
        history.write_json(path, mine)
    return None
