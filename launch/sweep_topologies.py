"""One run per topology with the same config and seed, then a comparison table and plot.

    .venv/bin/python launch/sweep_topologies.py experiment.toml --topologies ring,torus,star,erdos_renyi,small_world
    mpirun -n 4 .venv/bin/python launch/sweep_topologies.py experiment.toml   # each run spread over 4 ranks

Runs go to OUT/<topology>/ (OUT defaults to runs/sweep); the table is printed and written to
OUT/summary.json, the plot to OUT/comparison.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2pforget import config, experiment, history, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--topologies", default="ring,torus,star,erdos_renyi,small_world")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args(argv)
    base = config.with_overrides(config.load(args.config), args.set)
    out = Path(args.out)
    rows, curves = [], {}
    for kind in args.topologies.split(","):
        cfg = config.replace(base, topology={"kind": kind.strip()})
        result = experiment.run(cfg, out=out / kind, progress=False)
        if result.report:
            f = result.report["final"]
            rows.append([kind, result.report["topology"]["spectral_gap"], f["loss_mean"], f["test_acc_mean"],
                         f["test_acc_min"], f["consensus_distance"], result.report["bytes_total"] / 1e6])
            curves[kind] = result.engine.metrics
    if rows:
        headers = ["topology", "spectral gap", "loss", "test acc (mean)", "test acc (min)", "consensus", "comm MB"]
        print(report.table(headers, rows))
        history.write_json(out / "summary.json", [dict(zip(headers, r)) for r in rows])
        print(f"plot: {report.plot_comparison(curves, out / 'comparison.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
