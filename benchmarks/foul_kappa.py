"""How FOUL's kappa sets where FA settles on the PACS-like star: the calibration behind foul_pacs.toml.

    .venv/bin/python benchmarks/foul_kappa.py [--seeds 100,101,102] [--grid 0.75:15,1:10] [--jobs 2]

FOUL's step is ``g_FL + kappa ||g_FL|| (conflict direction)``: the push away from the forgotten
clients is proportional to the retain update, so once the retain clients agree the model stops
moving and FA settles. This script trains the experiment of ``p2pforget/configs/foul_pacs.toml`` on
the star for each *calibration* seed, runs FOUL (the config's settings, ``kappa`` varied) from the
same trained state for each ``kappa:rounds`` pair of ``--grid``, and Retrain beside it, and prints
FA, FA_heldout, RA and TA against Retrain's, and FA per round. The seeds
used here are kept apart from those of the reported table (benchmarks/foul_table.py), so the
choice of kappa is not fitted to the numbers it is judged on.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import calibration  # noqa: E402

KEYS = ("FA", "FA_heldout", "RA", "TA")


def one_seed(args: tuple[int, tuple[tuple[float, int], ...]]) -> dict:
    seed, grid = args
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from p2pforget import Engine, config

    cfg = config.loads(resources.files("p2pforget").joinpath("configs/foul_pacs.toml").read_text())
    cfg = config.replace(cfg, run={"seed": seed, "eval_every": 0})
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    trace = lambda result, side: {"trace": result.traces["unlearned"]} if side == "unlearn" else {}  # noqa: E731
    out = calibration.sweep(engine, {f"{kappa:g}:{rounds}": {"kappa": kappa, "rounds": rounds} for kappa, rounds in grid},
                            method="foul", request={"clients": list(cfg.unlearn.clients)}, keys=KEYS, extra=trace)
    out |= {"seed": seed}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="100,101,102")
    p.add_argument("--grid", default="0.5:15,0.75:15,1:15", help="kappa:rounds pairs")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args()
    grid = tuple((float(k), int(r)) for k, r in (pair.split(":") for pair in args.grid.split(",")))
    names = [f"{k:g}:{r}" for k, r in grid]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        cells = pool.map(one_seed, [(int(s), grid) for s in args.seeds.split(",")], chunksize=1)
    wall = time.perf_counter() - start
    if args.json:
        Path(args.json).write_text(json.dumps({"cells": cells, "wall_seconds": wall}, indent=1))
    print(f"{len(cells)} seeds in {wall / 60:.1f} min")
    print(calibration.differences(cells, field="variant", names=names, keys=KEYS))
    for c in cells:
        print(f"seed {c['seed']}: trained FA {c['trained']['FA']:.1f} (held-out {c['trained']['FA_heldout']:.1f}), "
              f"Retrain FA {c['retrain']['FA']:.1f} (held-out {c['retrain']['FA_heldout']:.1f})")
        for k in names:
            print(f"  {k}: " + " ".join(f"{x:.0f}" for x in c["variant"][k]["trace"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
