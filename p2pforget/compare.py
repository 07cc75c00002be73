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

from pathlib import Path
from typing import Sequence

from . import config as config_mod, experiment, history, report, topology
from .config import Config

TRAIN_HEADERS = ["topology", "spectral gap", "loss", "test acc (mean)", "test acc (min)", "consensus", "comm MB"]
UNLEARN_HEADERS = ["FA", "RA", "TA", "MIA", "dist. to Retrain (rel.)", "sigma", "time / Retrain", "bytes / Retrain"]


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
        topology.build_graph(t.kind, t.n_clients, seed=c.run.seed, p=t.p, k=t.k, beta=t.beta, degree=t.degree, path=t.path)
    for kind, kind_cfg in configs.items():
        result = experiment.run(kind_cfg, out=out / kind, progress=progress, overwrite=overwrite)
        if not result.report:
            continue
        r, f = result.report, result.report["final"]
        row = [kind, r["topology"]["spectral_gap"], f["loss_mean"], f["test_acc_mean"], f["test_acc_min"],
               f["consensus_distance"], r["bytes_total"] / 1e6]
        if unlearning:
            u, ratio = r["metrics"]["unlearned"], r["cost"]["ratio_to_retrain"]
            row += [u["FA"]["mean"] if u["FA"] else float("nan"), u["RA"]["mean"], u["TA"]["mean"], u.get("MIA", float("nan")),
                    u["relative_distance_to_retrain"], r["unlearn"].get("sigma", float("nan")), ratio["seconds"],
                    ratio["comm_bytes"]]
        rows.append(row)
        curves[kind] = result.engine.metrics
    headers = TRAIN_HEADERS + (UNLEARN_HEADERS if unlearning else [])
    if rows:
        history.write_json(out / "summary.json", [dict(zip(headers, row)) for row in rows])
        report.plot_comparison(curves, out / "comparison.png")
    return headers, rows
