"""How EASE's displacement step size and excision set its forget R@1: the calibration behind ``benchmarks/ease_table.py``.

    .venv/bin/python benchmarks/ease_calibrate.py [--scenario class|client] [--seeds 100,...,105] [--topologies star,ring]
        [--lrs 0.1,0.2,0.3] [--excision entangled,exclusive] [--partners retained] [--jobs 2]

For each topology and *calibration* seed (kept apart from the table's seeds 0, 1, 2, so that the
choice is not fitted to the numbers it is judged on) it trains the table's experiment once (on a
backbone pretrained by the table's recipe), runs EASE with each excision and displacement ``lr``
from the same trained state, and Retrain beside it, and prints FA / RA / TA / MIA minus
Retrain's, per seed and on average, and EASE's FLOPs over Retrain's. ``--scenario client`` runs
the client-level experiment of ``benchmarks/ease_clients.py`` instead of the class-level one
(``benchmarks/ease_table.py``), and adds FA_heldout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration  # noqa: E402
import ease_clients  # noqa: E402  (the tables' experiments, so that both use the same ones)
import ease_table  # noqa: E402

SCENARIOS = {"class": ease_table, "client": ease_clients}
KEYS = {"class": ("FA", "RA", "TA", "MIA"), "client": ("FA", "FA_heldout", "RA", "TA", "MIA")}


def one_cell(args: tuple[str, int, str, tuple[tuple[str, float], ...], str, str]) -> dict:
    kind, seed, checkpoint, variants, partners, scenario = args
    table = SCENARIOS[scenario]
    engine = calibration.trained_engine(table.experiment_config(seed, kind, checkpoint))
    settings = {f"{excision} {lr}": table.METHODS["ease"][1] | {"lr": lr, "partners": partners, "excision": excision}
                for excision, lr in variants}
    flops = lambda result, side: {"flops": result.cost[side].flops}  # noqa: E731
    out = calibration.sweep(engine, settings, method="ease", request=table.request(engine), keys=KEYS[scenario],
                            extra=flops)
    out |= {"topology": kind, "seed": seed}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="class", choices=tuple(SCENARIOS))
    p.add_argument("--seeds", default="100,101,102,103,104,105")
    p.add_argument("--topologies", default="star,ring")
    p.add_argument("--lrs", default="0.1,0.2,0.3")
    p.add_argument("--excision", default="entangled,exclusive")
    p.add_argument("--partners", default="retained", choices=("retained", "forget"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=800)
    args = p.parse_args()
    variants = tuple((e, float(lr)) for e in args.excision.split(",") for lr in args.lrs.split(","))
    checkpoint = ease_table.ROOT / "runs" / "ease_calibrate_backbone.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    ease_table.pretrain(checkpoint, steps=args.pretrain_steps)
    jobs = [(k, int(s), str(checkpoint), variants, args.partners, args.scenario) for k in args.topologies.split(",") for s in args.seeds.split(",")]
    cells = calibration.run_cells(one_cell, jobs, processes=args.jobs)
    print(calibration.per_topology(cells, args.topologies.split(","), names=[f"{e} {lr}" for e, lr in variants], keys=KEYS[args.scenario],
                                   ratio="flops"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
