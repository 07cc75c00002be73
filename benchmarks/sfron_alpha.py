"""How SFR-on's forget weight sets FA on digits: the calibration behind examples/compare_digits.toml.

    .venv/bin/python benchmarks/sfron_alpha.py [--seeds 100,101,102] [--topologies ring,star] [--alphas 0.3,0.5,0.75,1] [--jobs 2]

For each topology and *calibration* seed (kept apart from the study's seeds 0, 1, 2, so that the
choice is not fitted to the numbers it is judged on) it trains the study's experiment once, runs
SFR-on with the study's ``[unlearn.sfron]`` options and each ``alpha`` from the same trained state,
and Retrain beside it, and prints FA / RA / TA / MIA minus Retrain's, per seed and on average, and
SFR-on's seconds over Retrain's (evaluation excluded from both).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import calibration  # noqa: E402

KEYS = ("FA", "RA", "TA", "MIA")


def one_cell(args: tuple[str, int, tuple[float, ...]]) -> dict:
    kind, seed, alphas = args
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from p2pforget import Engine, config

    cfg = config.loads((ROOT / "examples" / "compare_digits.toml").read_text())
    cfg = config.replace(cfg, run={"seed": seed, "eval_every": 0}, topology={"kind": kind})
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    seconds = lambda result, side: {"seconds": result.cost[side].seconds}  # noqa: E731
    out = calibration.sweep(engine, {str(a): {"alpha": a} for a in alphas}, method="sfron",
                            request={"clients": list(cfg.unlearn.clients)}, keys=KEYS, extra=seconds)
    out |= {"topology": kind, "seed": seed}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="100,101,102")
    p.add_argument("--topologies", default="ring,star")
    p.add_argument("--alphas", default="0.3,0.5,0.75,1")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    alphas = tuple(float(a) for a in args.alphas.split(","))
    jobs = [(k, int(s), alphas) for k in args.topologies.split(",") for s in args.seeds.split(",")]

    cells = calibration.run_cells(one_cell, jobs, processes=args.jobs)
    print(calibration.per_topology(cells, args.topologies.split(","), names=[str(a) for a in alphas], keys=KEYS, ratio="seconds"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
