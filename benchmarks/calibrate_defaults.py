"""Choose the defaults of NoT, SFR-on and certified unlearning on calibration seeds (100-102), never
on the robustness sweep's seeds; writes docs/results/calibration_defaults.md and .json.

Each candidate runs on the robustness sweep's datasets (benchmarks/robustness.py) and on the ring,
the star and the torus, from the same trained state as Retrain, with the stopping rule and guard
of docs/methods/stopping.md. The rule that picks a candidate was fixed before any of them ran:

1. admissible: at most 1 run in 10 flagged (rolled back or collapsed), and no unflagged run with
   RA more than 5 points below Retrain's;
2. among the admissible, the smallest mean |FA_heldout - Retrain| (what the sweep's verdict judges);
   ties go to the cheaper (FLOPs / Retrain's).

    python benchmarks/calibrate_defaults.py                  # everything (about 40 min on 2 cores)
    python benchmarks/calibrate_defaults.py --part 0 --parts 2 &  python benchmarks/calibrate_defaults.py --part 1 --parts 2
    python benchmarks/calibrate_defaults.py --merge

Runs are cached under runs/calibration/ (one JSON per run), so the script resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness  # noqa: E402

from p2pforget import config, experiment, history  # noqa: E402
from p2pforget.unlearn import forget  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "calibration"
DOCS = ROOT / "docs" / "results"
SEEDS = (100, 101, 102)
TOPOLOGIES = ("ring", "star", "torus")
MLPS = ("digits_mlp", "synthetic_mlp")
ALL = tuple(robustness.DATASETS)
# method -> (datasets, candidate options); the first candidate is the default before calibration.
CANDIDATES = {
    "not": (ALL, [{"rounds": 10}, {"rounds": 60}]),
    "sfron": (ALL, [{"alpha": 25.0, "steps": 100, "gossip": "changes"}, {"alpha": 5.0, "steps": 100},
                    {"alpha": 1.0, "steps": 100}, {"alpha": 5.0, "steps": 20}, {"alpha": 1.0, "steps": 20}]),
    "certified": (MLPS, [{"curvature": "exact"}, {"curvature": "ggn"}, {"curvature": "ggn", "damping": 0.03},
                         {"curvature": "ggn", "damping": 0.3}, {"curvature": "exact", "damping": 0.3},
                         {"curvature": "ggn", "damping": 3.0}]),
}
RA_DROP = 5.0
FLAG_RATE = 0.1


def runs(methods=tuple(CANDIDATES)) -> list[tuple[str, int, str, str, int]]:
    """(method, candidate index, dataset, topology, seed) for every run of ``methods``."""
    return [(m, k, d, t, s) for m in methods for k in range(len(CANDIDATES[m][1]))
            for d in CANDIDATES[m][0] for t in TOPOLOGIES for s in SEEDS]


def _key(options: dict) -> str:
    return ",".join(f"{k}={_key(v) if isinstance(v, dict) else v}" for k, v in sorted(options.items()))


def run_one(method: str, options: dict, dataset: str, topology: str, seed: int) -> dict:
    """One forget request of ``method`` with ``options`` (a ``stopping`` entry is the stopping
    rule's and guard's options) on the trained calibration state; cached."""
    path = OUT / "cells" / f"{method}__{_key(options)}__{dataset}__{topology}__s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    trained = OUT / "trained" / f"{dataset}-{topology}-s{seed}"
    if not (trained / "report.json").exists():
        cfg = config.replace(robustness.base_config(dataset), topology={"kind": topology}, run={"seed": seed},
                             unlearn={"clients": (), "samples": {}})
        experiment.run(cfg, out=trained, overwrite=True, progress=False)
    engine, _ = experiment.load_run(trained)
    kwargs = {k: v for k, v in options.items() if k != "stopping"}
    stopping = config.StoppingConfig(**options["stopping"]) if "stopping" in options else None
    r = forget(engine, clients=[3], method=method, progress=False, stopping=stopping, **kwargs)
    u, re = r.metrics["unlearned"], r.metrics["retrained"]
    row = {"method": method, "options": options, "dataset": dataset, "topology": topology, "seed": seed,
           "status": r.status["status"], "flagged": bool(r.status["flagged"]),
           "RA_gap": u["RA"]["mean"] - re["RA"]["mean"],
           "FA_heldout_gap": u["FA_heldout"]["mean"] - re["FA_heldout"]["mean"],
           "trained_FA_heldout_gap": r.metrics["trained"]["FA_heldout"]["mean"] - re["FA_heldout"]["mean"],
           "flops_ratio": r.cost["unlearn"].flops / r.cost["retrain"].flops}
    history.write_json(path, row)
    return row


def summarize(rows: list[dict]) -> dict:
    flagged = sum(r["flagged"] for r in rows)
    drops = [r for r in rows if not r["flagged"] and r["RA_gap"] < -RA_DROP]
    return {"runs": len(rows), "flagged": flagged, "unflagged_ra_drops": len(drops),
            "admissible": flagged <= FLAG_RATE * len(rows) and not drops,
            "mean_abs_FA_heldout_gap": statistics.fmean(abs(r["FA_heldout_gap"]) for r in rows),
            "mean_RA_gap": statistics.fmean(r["RA_gap"] for r in rows),
            "mean_flops_ratio": statistics.fmean(r["flops_ratio"] for r in rows)}


def commit() -> str:
    """The checked-out commit, named on every page."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def table_head(*extra: str) -> list[str]:
    """The head of a candidates table; ``extra`` columns go before ``admissible`` (their cells
    come as :func:`summary_cells`' ``extra``)."""
    names = ["options", "runs", "flagged", "unflagged RA drops", *extra, "admissible", "mean abs FA held-out gap",
             "mean RA gap", "FLOPs / Retrain"]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


TABLE_HEAD = table_head()


def summary_cells(s: dict, *extra: str) -> str:
    """A :func:`summarize` result as the cells of a candidate's table row after its options
    (``extra``: the cells of :func:`table_head`'s extra columns)."""
    cells = [str(s["runs"]), str(s["flagged"]), str(s["unflagged_ra_drops"]), *extra, "yes" if s["admissible"] else "no",
             f"{s['mean_abs_FA_heldout_gap']:.1f}", f"{s['mean_RA_gap']:+.1f}", f"{s['mean_flops_ratio']:.2f}"]
    return " | ".join(cells) + " |"


def run_units(units: list[tuple[str, dict, str, str, int]]) -> None:
    """Run (method, options, dataset, topology, seed) units through :func:`run_one`, one line each."""
    for i, (method, options, dataset, topology, seed) in enumerate(units):
        row = run_one(method, options, dataset, topology, seed)
        print(f"[{i + 1}/{len(units)}] {method} {_key(options)} {dataset} {topology} s{seed}: {row['status']}, "
              f"RA {row['RA_gap']:+.1f}, FA_heldout {row['FA_heldout_gap']:+.1f}", flush=True)


def run_or_merge(args: argparse.Namespace, units: list[tuple[str, dict, str, str, int]], merge) -> None:
    """What every calibration script's command line does: run this process's share of ``units``
    (``--part`` of ``--parts``), and write the page with ``merge()`` (``--merge``, or when one
    process ran everything)."""
    if not args.merge:
        run_units(units[args.part::args.parts])
    if args.merge or args.parts == 1:
        merge()


def parser(doc: str) -> argparse.ArgumentParser:
    """The calibration scripts' command line: ``--part``/``--parts`` (split the runs over processes)
    and ``--merge`` (only write the page from the cached runs)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--part", type=int, default=0, help="run every PARTS-th run starting at this one")
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="only write the page from the cached runs")
    return p


def merge() -> dict:
    commit_ = commit()
    out, lines = {"commit": commit_, "methods": {}}, [
        "# Calibration of the defaults of NoT, SFR-on and certified unlearning", "",
        f"Generated by `benchmarks/calibrate_defaults.py` at commit `{commit_}`: seeds {SEEDS[0]}-{SEEDS[-1]} "
        f"(never a robustness sweep's), graphs {', '.join(TOPOLOGIES)}, the sweep's datasets, 12 clients, "
        "client 3 forgotten, the stopping rule and guard of docs/methods/stopping.md.", "",
        f"Rule, fixed before the runs: a candidate is *admissible* with at most 1 run in {round(1 / FLAG_RATE)} "
        f"flagged and no unflagged run with RA more than {RA_DROP:g} points below Retrain's; the default is the "
        "admissible candidate with the smallest mean |FA_heldout − Retrain|, ties to the cheaper.", ""]
    for method, (datasets, cands) in CANDIDATES.items():
        lines += [f"## {method} (datasets: {', '.join(datasets)})", "", *TABLE_HEAD]
        table = []
        for k, options in enumerate(cands):
            rows = [run_one(method, options, d, t, s) for d in datasets for t in TOPOLOGIES for s in SEEDS]
            table.append((options, summarize(rows)))
        chosen = min((c for c in table if c[1]["admissible"]),
                     key=lambda c: (round(c[1]["mean_abs_FA_heldout_gap"], 1), c[1]["mean_flops_ratio"]), default=None)
        for options, s in table:
            mark = " **(chosen)**" if chosen is not None and options is chosen[0] else ""
            lines.append(f"| `{_key(options)}`{mark} | {summary_cells(s)}")
        lines += ["", f"Chosen: `{_key(chosen[0])}`." if chosen else "No candidate is admissible.", ""]
        out["methods"][method] = {"candidates": [{"options": o, **s} for o, s in table],
                                  "chosen": chosen[0] if chosen else None}
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "calibration_defaults.md").write_text("\n".join(lines))
    history.write_json(DOCS / "calibration_defaults.json", out)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--methods", default=",".join(CANDIDATES), help="comma-separated methods to run (default: all)")
    a = p.parse_args()
    units = [(m, CANDIDATES[m][1][k], d, t, s) for m, k, d, t, s in runs(tuple(a.methods.split(",")))]
    run_or_merge(a, units, merge)


if __name__ == "__main__":
    main()
