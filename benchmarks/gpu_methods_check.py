"""Every unlearning method end to end on a GPU: training, the forget request, the metrics and the audit.

    .venv/bin/python benchmarks/gpu_methods_check.py [--device cuda]

Runs :func:`p2pforget.experiment.run` with ``run.device = --device`` on small configs, one per
method (the demo's certified unlearning, also after DSGD with the influence ledger; certified with
K-FAC curvature; FOUL on the star and on a ring; EASE with the audit; Retrain, fine-tuning, gradient
ascent, NoT, SFR-on, random labels and SalUn on an MLP), and prints OK or the error of each. It
checks that each path runs on the device, not what it computes (``gpu_check.py`` and
``gpu_clip_check.py`` compare numbers with the CPU). Exits with status 1 if any run failed;
without a GPU and with ``--device cuda`` it says so and exits with status 0.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from importlib import resources

import torch

from p2pforget import config, experiment

AUDIT = {"bootstrap": 20, "relearn_steps": 5}


def cases(device: str) -> list[tuple[str, config.Config]]:
    shipped = lambda name: config.load(str(resources.files("p2pforget").joinpath(f"configs/{name}.toml")))  # noqa: E731
    demo, foul = shipped("demo"), shipped("foul_pacs")
    small = {"run": {"seed": 0, "rounds": 4, "eval_every": 0, "device": device},
             "topology": {"kind": "ring", "n_clients": 6},
             "data": {"kind": "digits", "n_samples_per_client": 30, "n_test": 60},
             "model": {"kind": "mlp"}, "train": {"lr": 0.1, "local_steps": 2, "batch_size": 10}, "audit": AUDIT}
    out = [
        ("certified (demo)", config.replace(demo, run={"rounds": 60, "device": device}, audit=AUDIT)),
        ("certified after DSGD, ledger", config.replace(demo, run={"rounds": 40, "device": device},
                                                        train={"algorithm": "dsgd"}, audit=AUDIT)),
        ("certified, K-FAC, MLP", config.from_dict(small | {
            "train": small["train"] | {"weight_decay": 0.01},
            "unlearn": {"method": "certified", "clients": [2], "certified": {"curvature": "kfac"}}})),
        ("FOUL, star", config.replace(foul, run={"rounds": 3, "device": device}, unlearn={"foul": {"rounds": 2}},
                                      audit=AUDIT)),
        ("FOUL, ring", config.replace(foul, run={"rounds": 3, "device": device}, topology={"kind": "ring"},
                                      unlearn={"foul": {"rounds": 2}}, audit=AUDIT)),
        ("EASE, audit", config.from_dict(small | {
            "data": {"kind": "captions_synth", "n_samples_per_client": 8, "n_test": 10}, "model": {"kind": "clip"},
            "train": {"lr": 0.1, "local_steps": 1, "batch_size": 4},
            "unlearn": {"method": "ease", "clients": [2], "ease": {"rounds": 1, "rank": 2}}})),
        ("retrain, star", config.from_dict(small | {"topology": {"kind": "star", "n_clients": 6},
                                                    "unlearn": {"method": "retrain", "clients": [1]}})),
    ]
    for method in ("retrain", "finetune", "gradient_ascent", "not", "sfron", "random_label", "salun"):
        out.append((method, config.from_dict(small | {"unlearn": {"method": method, "clients": [2]}})))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_methods_check: torch sees no GPU on this machine; nothing to run")
        return 0
    failed = 0
    for name, cfg in cases(args.device):
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as d:
                experiment.run(cfg, out=f"{d}/run", progress=False)
            print(f"OK   {name} ({time.perf_counter() - start:.1f} s)", flush=True)
        except Exception as e:  # report every method, then fail at the end
            failed += 1
            where = [line.strip() for line in traceback.format_exc().splitlines() if line.strip().startswith("File")]
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:200]}\n     at {where[-1] if where else '?'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
