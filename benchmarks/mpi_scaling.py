"""MPI scaling: time and bytes per round at 1/2/4 ranks for a fixed set of clients.

    .venv/bin/python benchmarks/mpi_scaling.py [--ranks 1,2,4] [--clients 64] [--rounds 20]

For each rank count it launches ``mpirun -n K`` on this file in worker mode. Each worker trains
the same experiment through the MPI transport, times the rounds after two warm-up rounds, and
reports (max over ranks) seconds per round, the share of that time spent inside MPI calls, and
the bytes all ranks sent per round. The table is printed and written to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2


def experiment(clients: int, rounds: int):
    from p2pforget import config

    return config.from_dict({
        "run": {"seed": 0, "rounds": rounds, "transport": "mpi"},
        "topology": {"kind": "torus", "n_clients": clients},
        "data": {"n_samples_per_client": 64, "gaussian_logistic": {"n_features": 32, "n_classes": 10}},
        "model": {"kind": "mlp", "mlp": {"hidden": 128}},
        "train": {"batch_size": 32, "local_steps": 2, "lr": 0.1},
    })


def worker(clients: int, rounds: int) -> None:
    from mpi4py import MPI

    from p2pforget import Engine

    cfg = experiment(clients, rounds)
    engine = Engine(config=cfg)
    engine.train(WARMUP, progress=False)
    t = engine.transport
    MPI.COMM_WORLD.Barrier()
    s0, b0, start = t.comm_seconds, t.comm_bytes, time.perf_counter()
    engine.train(rounds, progress=False)
    wall = time.perf_counter() - start
    comm = t.comm_seconds - s0
    sent = MPI.COMM_WORLD.allreduce(t.comm_bytes - b0)
    walls = MPI.COMM_WORLD.gather((wall, comm), root=0)
    if t.is_root:
        wall, comm = max(walls)
        print(json.dumps({"ranks": t.size, "clients": clients, "dim": engine.dim, "seconds_per_round": wall / rounds,
                          "comm_share": comm / wall, "mpi_bytes_per_round": sent / rounds,
                          "gossip_bytes_per_round": engine.metrics["bytes_sent"][-1]}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.clients, args.rounds)
        return 0
    env = os.environ | {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
    mpirun = Path(sys.executable).parent / "mpirun"
    rows = []
    for k in map(int, args.ranks.split(",")):
        cmd = [str(mpirun), "-n", str(k), "--oversubscribe", "-x", "OMP_NUM_THREADS", sys.executable, __file__,
               "--worker", "--clients", str(args.clients), "--rounds", str(args.rounds)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = rows[0]["seconds_per_round"]
    lines = [
        f"### MPI scaling ({args.clients} clients on a torus, MLP d={rows[0]['dim']}, batch 32, 2 local steps; "
        f"{os.cpu_count()} cores, 1 thread per rank; measured {time.strftime('%Y-%m-%d')})",
        "",
        "| ranks | s / round | speed-up vs 1 rank | share of time in MPI calls | MPI bytes / round | gossip bytes / round (simulated) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['ranks']} | {r['seconds_per_round']:.4f} | {base / r['seconds_per_round']:.2f}x | "
                     f"{100 * r['comm_share']:.1f}% | {r['mpi_bytes_per_round']:,.0f} | {r['gossip_bytes_per_round']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    _write_section(ROOT / "docs" / "benchmarks.md", "MPI scaling", table)
    return 0


def _write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section of docs/benchmarks.md that starts with '### <title>'."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers measured on this project's CI-class machine by the scripts in `benchmarks/`.\n"
    blocks = text.split("\n### ")
    kept = [blocks[0]] + [b for b in blocks[1:] if not b.startswith(title)]
    path.write_text("\n### ".join(kept).rstrip() + "\n\n" + body + "\n")


if __name__ == "__main__":
    sys.exit(main())
