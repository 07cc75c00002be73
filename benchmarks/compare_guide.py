"""Run the method x topology grid of docs/guide/compare.md and write that page.

    .venv/bin/python benchmarks/compare_guide.py [--out runs/compare_digits]

It runs exactly the command the page shows (resumable: an interrupted grid continues), then
writes docs/guide/compare.md with the grid's table (deterministic numbers only, so the command
reproduces them) and copies the figures next to it.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from p2pforget.report import mean_std

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = "ring,torus,erdos_renyi,small_world,star"
METHODS = "retrain,certified,finetune,random_label,salun,sfron"
SEEDS = "0,1,2"


def _fmt(values: list[str]) -> str:
    """A CSV column's cells (``""`` = missing) as :func:`p2pforget.report.mean_std`."""
    return mean_std([float(v) if v != "" else None for v in values])


def table(rows: list[dict]) -> str:
    cols = [("FA", "FA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"), ("FA_gap_to_retrain", "FA − Retrain"),
            ("MIA_gap_to_retrain", "MIA − Retrain")]
    lines = ["| topology | spectral gap | method | " + " | ".join(c for _, c in cols) + " | Comm MB |",
             "|---|---|---|" + "---|" * len(cols) + "---|"]
    for t in TOPOLOGIES.split(","):
        for m in METHODS.split(","):
            mine = [r for r in rows if r["topology"] == t and r["method"] == m]
            lines.append(f"| {t} | {float(mine[0]['spectral_gap']):.3g} | {m} | "
                         + " | ".join(_fmt([r[k] for r in mine]) for k, _ in cols)
                         + f" | {_fmt([str(float(r['comm_bytes']) / 1e6) for r in mine])} |")
    return "\n".join(lines)


def sfron_checks(rows: list[dict], timing: list[dict]) -> list[str]:
    """SFR-on on the ring and the star: FA, RA, TA within 3 points of Retrain's, the MIA gap within
    5, at most 20% of Retrain's seconds (evaluation excluded from both), on the seed means."""
    out = []
    for t in ("ring", "star"):
        def mean(method, key, table=rows):
            return float(np.mean([float(r[key]) for r in table if r["topology"] == t and r["method"] == method]))

        gaps = {k: mean("sfron", k) - mean("retrain", k) for k in ("FA", "RA", "TA", "MIA")}
        ratio = float(np.mean([float(a["seconds"]) / float(b["seconds"]) for a in timing for b in timing
                               if a["topology"] == b["topology"] == t and a["seed"] == b["seed"]
                               and a["method"] == "sfron" and b["method"] == "retrain"]))
        for k, limit in (("FA", 3), ("RA", 3), ("TA", 3), ("MIA", 5)):
            ok = abs(gaps[k]) <= limit
            out.append(f"- {t}: {'holds' if ok else 'FAILS'}: |{k} - Retrain's| = {abs(gaps[k]):.1f} <= {limit}")
        out.append(f"- {t}: {'holds' if ratio <= 0.2 else 'FAILS'}: seconds / Retrain's = {ratio:.3f} <= 0.2 "
                   "(this machine; timing.csv)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/compare_digits")
    args = p.parse_args()
    command = ["p2pforget", "compare", "examples/compare_digits.toml", "--topologies", TOPOLOGIES, "--methods", METHODS,
               "--seeds", SEEDS, "--out", args.out]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "p2pforget", *command[1:]], cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    out = ROOT / args.out
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "timing.csv", newline="") as f:
        timing = list(csv.DictReader(f))
    figures = ROOT / "docs" / "guide" / "compare"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("comparison.png", "accuracy_vs_round.png", "influence_share_vs_round.png",
                 "quality_and_cost_vs_spectral_gap.png"):
        shutil.copyfile(out / name, figures / name)
    seconds = {m: [float(r["seconds"]) for r in timing if r["method"] == m] for m in METHODS.split(",")}
    text = [
        "# The method × topology study",
        "",
        "The study most users of p2pforget run: the same experiment and the same forget request on several",
        "gossip graphs, with several unlearning methods and seeds, and error bars. One command:",
        "",
        "```bash",
        " ".join(command),
        "```",
        "",
        "`examples/compare_digits.toml`: 32 clients hold scikit-learn's real 8×8 digits (Dirichlet 0.5 split,",
        "36 training samples each), train an MLP (32 hidden units) with DSGD for 60 rounds (the star: FedAvg),",
        "then client 5 asks to be forgotten. Each topology × seed is trained once; every method starts",
        "from that state (`retrain` trains from scratch without client 5). `certified` is this project's",
        "Newton step used as a baseline on a non-convex model (noise off, no certificate); `finetune` trains",
        "10 more rounds without client 5; `random_label` and `salun` train 5 rounds in which client 5 also",
        "fits random labels on its data (SalUn: only the half of the weights its forget gradient moves most);",
        "`sfron` is SFR-on (3 steps, forget weight 0.6, chosen on seeds 100-102 by",
        "`benchmarks/sfron_alpha.py`; on gossip graphs at every node that stays, the forget gradients",
        "coming from client 5 before it leaves and the nodes gossiping their changes; at the hub on the",
        "star; see docs/methods/sfron.md).",
        "",
        "The grid is resumable (a finished cell is never run again), runs under `mpirun` (the same",
        "`compare.csv` at any rank count) and as a SLURM job array, one task per topology × seed",
        "(`launch/slurm_compare.sbatch`, then `--merge`).",
        "",
        "## Results (mean ± std over seeds 0, 1, 2)",
        "",
        "FA / RA / TA: accuracy (%) on client 5's data, the remaining training data and the test set, mean",
        "over the nodes that remain; MIA: membership AUC × 100 of client 5's samples against its held-out",
        "samples (50 = not detectable); gaps are to Retrain on the same topology and seed; Comm MB: bytes",
        "the method sent. These numbers are `compare.md` without its seconds column, and the command",
        "reproduces them exactly.",
        "",
        table(rows),
        "",
        f"Wall time of this grid: {wall / 60:.1f} min on 2 CPU cores (one process). Seconds per method (mean over",
        "cells, evaluation excluded; machine-dependent, so in `timing.csv`, not in the table): "
        + ", ".join(f"{m} {np.mean(v):.2f} s" for m, v in seconds.items()) + ".",
        "",
        "## SFR-on against its targets (seed means)",
        "",
        *sfron_checks(rows, timing),
        "",
        "![training on each topology, and each method after unlearning](compare/comparison.png)",
        "",
        "![test accuracy vs round](compare/accuracy_vs_round.png)",
        "",
        "![the forgotten client's share of the other nodes' models](compare/influence_share_vs_round.png)",
        "",
        "![unlearning quality and cost vs spectral gap](compare/quality_and_cost_vs_spectral_gap.png)",
        "",
    ]
    (ROOT / "docs" / "guide" / "compare.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
