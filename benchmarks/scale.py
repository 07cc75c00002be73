"""Scale: seconds per round, client-steps per second and peak memory per rank from 1,000 to
100,000 clients, at 1 and 2 MPI ranks, on the throughput yardstick's workload
(../shared/bench/README.md: MLP 32-64-10, 64 samples per client, batch 16, 4 local SGD steps,
lr 0.05, float32, DSGD on a ring; per-round metrics off, ``run.eval_every = 0``).

    .venv/bin/python benchmarks/scale.py                        # CPU: 1k .. 100k clients, 1 and 2 ranks
    .venv/bin/python benchmarks/scale.py --device cuda          # the same on a GPU (one rank)
    .venv/bin/python benchmarks/scale.py --yardstick            # also the batched limit, same sizes, same run
    .venv/bin/python benchmarks/scale.py --sizes 1024,10000 --ranks 1 --yardstick
    .venv/bin/python benchmarks/scale.py --sizes 1024 --ranks 1 --mode star --yardstick --repeat 7 --rounds 12

Every cell runs in its own process (``mpirun -n K`` for K ranks), so its peak resident memory
(``ru_maxrss``, the largest over the ranks) is its own. Seconds per round are the median over
rounds 2..R of the slowest rank, as the yardstick measures them. One line per cell is printed;
``--write`` adds them to docs/results/scale.json. ``--repeat K`` runs each size's engine and limit
K times, alternating (engine, limit, engine, ...), and prints every pair's ratio and their median:
on a shared machine whose speed drifts from minute to minute, one pair can land on either side of
a target that the median over pairs made back to back does not. ``--threads`` and ``--env`` set
the environment of both sides alike (the limit is sensitive to the allocator: see docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
STEPS = 4


def experiment(clients: int, rounds: int, mode: str, device: str, transport: str):
    from p2pforget import config

    return config.from_dict({
        "run": {"seed": 0, "rounds": rounds, "eval_every": 0, "device": device, "transport": transport},
        "topology": {"kind": mode, "n_clients": clients},
        "data": {"kind": "gaussian_logistic", "n_samples_per_client": 64, "n_test": 200,
                 "gaussian_logistic": {"n_features": 32, "n_classes": 10}},
        "model": {"kind": "mlp", "mlp": {"hidden": 64}},
        "train": {"algorithm": "dsgd", "lr": 0.05, "local_steps": STEPS, "batch_size": 16, "dtype": "float32"},
        "audit": {"after_forget": False},
    })


def cell(clients: int, rounds: int, mode: str, device: str) -> None:
    """One cell in this process (one rank of it under mpirun): prints its JSON line at the root."""
    import torch

    from p2pforget import Engine

    transport = "mpi" if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 else "local"
    comm = None
    if transport == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    start = time.perf_counter()
    engine = Engine(config=experiment(clients, rounds, mode, device, transport))
    setup = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        if comm is not None:
            comm.Barrier()
        t = time.perf_counter()
        engine.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    mine = (times, peak_mb, engine.hi - engine.lo)
    rows = [mine] if comm is None else comm.gather(mine, root=0)
    if engine.transport.is_root:
        slowest = [max(t[r] for t, _, _ in rows) for r in range(rounds)]
        s = statistics.median(slowest[1:])
        out = {"system": "p2pforget", "mode": mode, "clients": clients, "ranks": len(rows), "device": device,
               "s_per_round": round(s, 4), "client_steps_per_s": round(clients * STEPS / s),
               "peak_rss_mb_per_rank": round(max(p for _, p, _ in rows)), "setup_s": round(setup, 2),
               "clients_per_rank": [n for _, _, n in rows]}
        if device == "cuda":
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
        print(json.dumps(out), flush=True)


def _run(cmd: list[str], setting: dict[str, str]) -> dict | None:
    """``cmd``'s last JSON line; ``setting`` (``--threads``, ``--env``) is the environment of
    every process the script starts, the engine's and the limit's alike."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | setting
    env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        print(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def _environment(setting: dict[str, str]) -> dict[str, str]:
    """How both sides ran: their threads, and any further variables (``--env``)."""
    extra = " ".join(f"{k}={v}" for k, v in setting.items() if k != "OMP_NUM_THREADS")
    return {"threads": setting.get("OMP_NUM_THREADS", "machine default")} | ({"env": extra} if extra else {})


def repeated_pairs(sizes: list[int], a, setting: dict[str, str]) -> list[dict]:
    """``a.repeat`` alternating runs of the engine (one rank) and the batched limit per size: each
    pair's ratio, then their median and range."""
    out = []
    for n in sizes:
        ratios = []
        for _ in range(a.repeat):
            mine = _run([sys.executable, __file__, "--cell", str(n), "--rounds", str(a.rounds), "--mode", a.mode,
                         "--device", "cpu"], setting)
            y = _run([sys.executable, str(BENCH / "batched_limit.py"), "--clients", str(n), "--rounds", str(a.rounds),
                      "--mode", a.mode, "--impl", "manual"], setting)
            if mine and y:
                ratios.append(round(y["s_per_round"] / mine["s_per_round"], 2))
                line = {"system": "pair", "mode": a.mode, "clients": n, "p2pforget_s": mine["s_per_round"],
                        "limit_s": y["s_per_round"], "p2pforget_vs_limit": ratios[-1]} | _environment(setting)
                out.append(line)
                print(json.dumps(line), flush=True)
        if ratios:
            line = {"system": "pairs_median", "mode": a.mode, "clients": n, "pairs": len(ratios),
                    "p2pforget_vs_limit": statistics.median(ratios), "lowest": min(ratios), "highest": max(ratios)} | _environment(setting)
            out.append(line)
            print(json.dumps(line), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,4096,10000,100000", help="clients, comma-separated")
    p.add_argument("--ranks", default="1,2", help="MPI rank counts (CPU), comma-separated")
    p.add_argument("--mode", choices=("ring", "star"), default="ring")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--yardstick", action="store_true", help="also run ../shared/bench/batched_limit.py (manual)")
    p.add_argument("--write", action="store_true", help="append the lines to docs/results/scale.json")
    p.add_argument("--repeat", type=int, default=1, help="pairs of engine and limit runs per size (one rank)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every process (default 1: one thread per rank; 0: the machine's "
                        "default, as the yardstick's README runs its scripts)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="a further environment variable of every process, the engine's and the limit's "
                        "(e.g. MALLOC_TRIM_THRESHOLD_=4294967296)")
    p.add_argument("--cell", type=int, help=argparse.SUPPRESS)  # one cell in this process
    a = p.parse_args()
    if a.cell is not None:
        cell(a.cell, a.rounds, a.mode, a.device)
        return 0
    setting = ({"OMP_NUM_THREADS": str(a.threads)} if a.threads > 0 else {}) | dict(kv.split("=", 1) for kv in a.env)
    ranks = [1] if a.device == "cuda" else [int(k) for k in a.ranks.split(",")]
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.repeat > 1:  # pairs at one rank instead of the grid
        results, sizes = repeated_pairs(sizes, a, setting), []
    else:
        results = []
    for n in sizes:
        for k in ranks:
            cmd = [sys.executable, __file__, "--cell", str(n), "--rounds", str(a.rounds), "--mode", a.mode,
                   "--device", a.device]
            if k > 1:
                cmd = ([str(Path(sys.executable).parent / "mpirun"), "-n", str(k), "--oversubscribe"]
                       + [arg for key in setting for arg in ("-x", key)] + cmd)
            r = _run(cmd, setting)
            if r is None:
                continue
            if k > 1:
                one = next((x for x in results if x["clients"] == n and x["ranks"] == 1 and x["system"] == "p2pforget"), None)
                if one:
                    r["speedup_vs_1_rank"] = round(one["s_per_round"] / r["s_per_round"], 2)
                    r["rss_vs_1_rank"] = round(r["peak_rss_mb_per_rank"] / one["peak_rss_mb_per_rank"], 2)
            results.append(r)
            print(json.dumps(r), flush=True)
        if a.yardstick and a.device == "cpu":
            y = _run([sys.executable, str(BENCH / "batched_limit.py"), "--clients", str(n), "--rounds", str(a.rounds),
                      "--mode", a.mode, "--impl", "manual"], setting)
            mine = next((x for x in results if x["clients"] == n and x["ranks"] == 1), None)
            if y and mine:
                line = {"system": "batched_limit", "mode": a.mode, "clients": n, "s_per_round": y["s_per_round"],
                        "p2pforget_vs_limit": round(y["s_per_round"] / mine["s_per_round"], 2)} | _environment(setting)
                results.append(line)
                print(json.dumps(line), flush=True)
    if a.write:
        path = ROOT / "docs" / "results" / "scale.json"
        stored = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(stored + results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
