"""Where the seconds of one forget request go: a certified request on a 6-client ring, audit on.

    .venv/bin/python benchmarks/forget_time.py [--repeats 3]

Trains the default experiment (6 clients on a ring, synthetic logistic data with a held-out
split, 20 rounds), then times ``forget(engine, clients=[2])`` from forks of that trained engine:
the whole request, and inside it the method's one measured run, Retrain's, and the membership
audit (1,000 bootstrap resamples). Prints the median of the repeats and how many times the
method's ``unlearn`` ran per request; writes the table to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpi_scaling import ROOT, _write_section  # noqa: E402

import p2pforget.audit as audit  # noqa: E402
from p2pforget import Engine, config, forget  # noqa: E402
from p2pforget.unlearn import certified, pipeline  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 6}, "run": {"rounds": 20}})
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    start = time.perf_counter()
    forget(engine.fork(), clients=[2], progress=False)  # the first: imports (torch._dynamo), first-use set-up
    first = time.perf_counter() - start

    spent: dict[str, list[float]] = {"request": [], "method": [], "retrain": [], "audit": []}
    calls = []
    timed = {"method": (pipeline, "run_method"), "retrain": (pipeline, "retrain_reference"), "audit": (audit, "audit")}
    originals = {name: getattr(mod, attr) for name, (mod, attr) in timed.items()}
    real_unlearn = certified.CertifiedNewton.unlearn
    for _ in range(args.repeats):
        seconds = {name: 0.0 for name in timed}

        def timing(name):
            def wrapped(*a, **k):
                start = time.perf_counter()
                out = originals[name](*a, **k)
                seconds[name] += time.perf_counter() - start
                return out
            return wrapped

        for name, (mod, attr) in timed.items():
            setattr(mod, attr, timing(name))
        count = [0]
        certified.CertifiedNewton.unlearn = lambda self, *a, **k: count.__setitem__(0, count[0] + 1) or real_unlearn(self, *a, **k)
        start = time.perf_counter()
        result = forget(engine.fork(), clients=[2], progress=False)
        spent["request"].append(time.perf_counter() - start)
        for name, (mod, attr) in timed.items():
            setattr(mod, attr, originals[name])
            spent[name].append(seconds[name])
        certified.CertifiedNewton.unlearn = real_unlearn
        calls.append(count[0])
        assert result.audit is not None
    med = {k: statistics.median(v) for k, v in spent.items()}
    table = "\n".join([
        "| part | seconds (median of %d) |" % args.repeats, "|---|---|",
        f"| the first request in a process (imports included) | {first:.2f} |",
        *(f"| {k} | {v:.2f} |" for k, v in med.items()),
        f"| calls to the method's `unlearn` per request | {max(calls)} |",
    ])
    body = ("### One forget request\n\n`benchmarks/forget_time.py`: one certified request (client 2) on the default 6-client ring after 20 "
            "rounds, membership audit on (1,000 bootstrap resamples), one thread; each from a fork of the same "
            "trained engine, after a first request (timed on its own). The method's and Retrain's runs are measured under the FLOP "
            "counter (their seconds and FLOPs come from that one run).\n\n" + table)
    print(body)
    _write_section(ROOT / "docs" / "benchmarks.md", "One forget request", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
