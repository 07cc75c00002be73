"""Cost of certified unlearning vs Retrain on ring / torus / Erdos-Renyi graphs of 16-64 clients.

    .venv/bin/python benchmarks/unlearn_cost.py [--sizes 16,36,64] [--rounds 300]

Each case trains an L2-regularized logistic model (d = 84) with gradient tracking, forgets client 0
(keep_relay) with the default certified method (exact Newton steps with backtracking until the
bound meets the 1e-6 budget), and trains Retrain next to it. It prints the ratio unlearning /
Retrain of wall seconds, FLOPs and bytes sent (evaluation left out of both; every sum the method
makes, including the bound's, charged to it), for both ways of summing over the graph (gossip to a
tolerance, or up and down a spanning tree), the distances to the remaining optimum, and the rounds
Retrain needs to get as close as the unlearned models; writes the table to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpi_scaling import ROOT, _write_section  # noqa: E402

from p2pforget import Engine, config, forget  # noqa: E402


def experiment(kind: str, n: int, rounds: int) -> config.Config:
    return config.from_dict({
        "run": {"seed": 0, "rounds": rounds, "eval_every": 0},  # metric evaluation is left out of every cost anyway
        "topology": {"kind": kind, "n_clients": n, "erdos_renyi": {"p": min(1.0, 2.5 * math.log(n) / n)}},
        "data": {"n_samples_per_client": 25,
                 "partition": "dirichlet", "alpha": 0.5, "gaussian_logistic": {"n_features": 20, "n_classes": 4, "separation": 2.0}},
        "train": {"algorithm": "gradient_tracking", "lr": 0.07 if kind == "torus" else 0.15, "dtype": "float64",
                  "weight_decay": 0.05},
        "unlearn": {"clients": [0], "mode": "keep_relay", "certified": {"noise": True}},
        "audit": {"after_forget": False},
    })


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16,36,64")
    p.add_argument("--rounds", type=int, default=600)
    args = p.parse_args()
    rows = []
    for n in map(int, args.sizes.split(",")):
        for kind in ("ring", "torus", "erdos_renyi"):
            cfg = experiment(kind, n, args.rounds)
            trained = Engine(config=cfg)
            trained.train(args.rounds, progress=False)
            state = trained.state()
            for averaging in ("gossip", "tree"):
                engine = Engine(config=cfg)
                engine.load_state(state)
                start = time.perf_counter()
                r = forget(engine, clients=[0], progress=False, averaging=averaging)
                u, t = r.cost["unlearn"], r.cost["retrain"]
                m = r.metrics
                rows.append([kind, n, averaging, u.seconds / t.seconds, u.flops / t.flops, u.comm_bytes / t.comm_bytes,
                             r.certificate["newton_steps_taken"],
                             m["unlearned"]["distance_to_remaining_optimum_noiseless"],
                             m["retrained"]["distance_to_remaining_optimum"],
                             m["retrained"]["equal_quality_rounds"], r.certificate["sigma"]])
                print(rows[-1], f"({time.perf_counter() - start:.1f} s)", flush=True)
    lines = [
        f"### Unlearning vs Retrain cost (logistic d=84, gradient tracking {args.rounds} rounds, forget 1 client, "
        f"certified defaults; {os.cpu_count()} cores; measured {time.strftime('%Y-%m-%d')})",
        "",
        "Ratios are unlearning / Retrain (lower is cheaper), evaluation left out of both. *steps* = Newton steps taken "
        "to meet the 1e-6 budget; *dist. unlearned / Retrain* = max over nodes of the distance to the remaining "
        "optimum θ*_r (noiseless unlearned models; Retrain after as many rounds as training); *equal quality* = "
        "rounds Retrain needs to get as close to θ*_r as the unlearned models ('-' = not within the rounds); sigma = "
        "the release's noise (epsilon = 1, delta = 1e-5).",
        "",
        "| graph | clients | sum | seconds | FLOPs | bytes sent | steps | dist. unlearned | dist. Retrain | equal quality | sigma |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {n} | {a} | {s:.3f} | {f:.3f} | {b:.2f} | {st} | {du:.1e} | {dr:.1e} | {eq if eq is not None else '-'} | {sg:.2g} |"
              for k, n, a, s, f, b, st, du, dr, eq, sg in rows]
    table = "\n".join(lines)
    print(table)
    _write_section(ROOT / "docs" / "benchmarks.md", "Unlearning vs Retrain cost", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
