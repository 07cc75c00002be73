"""Clients per core: this engine against a per-client ``nn.Module`` loop and a hand-written
batched torch implementation, on one fixed workload, all measured in the same run.

    .venv/bin/python benchmarks/clients_per_core.py [--clients 16,256,1024,4096,10000] [--rounds 5]
        [--memory-clients 100000] [--write docs/benchmarks.md]

Workload (kept fixed so results compare with other systems): N clients x 64 samples x 32
features, 10 classes; MLP 32 -> 64 -> ReLU -> 10, the same initialization everywhere; each round
one local epoch of plain SGD (4 steps of batch 16, lr 0.05, no weight decay), then ring
Metropolis gossip (x_i <- (x_{i-1} + x_i + x_{i+1}) / 3) or star FedAvg; float32.
client-steps/s = 4 N / (median seconds per round over rounds 2..R).

The three implementations do the same arithmetic per round. Minibatches: the engine draws each
step's batch independently (keyed by client, round and step, so any rank count draws the same);
the two references draw one permutation per client per round (an epoch). Sampling is part of every
implementation's round time. The engine runs with ``run.eval_every = 0`` and ``[ledger] kind =
"off"`` (no metric evaluation, no influence bookkeeping), like the references, which have none.

Every cell runs in its own process, so the peak resident memory it reports (minus that of a
process that has only imported torch and built the data) is its own. The per-client loop is
skipped above ``--loop-max`` clients (it takes minutes per round there). ``--memory-clients``
runs one engine round of the logistic model at that many clients and reports its peak memory.
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
SAMPLES, FEATURES, CLASSES, HIDDEN, BATCH, LR = 64, 32, 10, 64, 16, 0.05
STEPS = SAMPLES // BATCH


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _data(n: int):
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, SAMPLES, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (n, SAMPLES), generator=g)
    return x, y


def _mix(t, topology: str):
    import torch
    if topology == "ring":
        return (torch.roll(t, 1, dims=0) + t + torch.roll(t, -1, dims=0)) / 3.0
    return t.mean(dim=0, keepdim=True).expand_as(t).clone()


def loop_round_fn(n: int, topology: str):
    """A plain per-client loop: one nn.Module and one torch.optim.SGD per client."""
    import torch
    from torch import nn
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    x, y = _data(n)
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
    models = []
    for _ in range(n):
        m = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
        m.load_state_dict(first.state_dict())
        models.append(m)
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in models]
    g = torch.Generator().manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()

    def one_round() -> None:
        for i in range(n):
            perm = torch.randperm(SAMPLES, generator=g)
            for s in range(STEPS):
                idx = perm[s * BATCH:(s + 1) * BATCH]
                opts[i].zero_grad()
                loss_fn(models[i](x[i, idx]), y[i, idx]).backward()
                opts[i].step()
        with torch.no_grad():
            flat = torch.stack([parameters_to_vector(m.parameters()) for m in models])
            mixed = _mix(flat, topology)
            for i, m in enumerate(models):
                vector_to_parameters(mixed[i], m.parameters())
    return one_round


def batched_round_fn(n: int, topology: str):
    """Hand-written batched torch: every client's weights stacked, batched matmuls, manual backward."""
    import torch

    x, y = _data(n)
    torch.manual_seed(0)
    w1 = (torch.rand(FEATURES, HIDDEN) * 2 - 1) / FEATURES ** 0.5
    w2 = (torch.rand(HIDDEN, CLASSES) * 2 - 1) / HIDDEN ** 0.5
    params = [w1.expand(n, -1, -1).clone(), torch.zeros(n, HIDDEN), w2.expand(n, -1, -1).clone(), torch.zeros(n, CLASSES)]
    rows = torch.arange(n)[:, None]
    g = torch.Generator().manual_seed(1)

    def one_round() -> None:
        W1, b1, W2, b2 = params
        perm = torch.rand(n, SAMPLES, generator=g).argsort(dim=1)
        for s in range(STEPS):
            idx = perm[:, s * BATCH:(s + 1) * BATCH]
            xb, yb = x[rows, idx], y[rows, idx]
            h = torch.baddbmm(b1[:, None, :], xb, W1)
            a = h.clamp_min(0)
            z = torch.baddbmm(b2[:, None, :], a, W2)
            dz = torch.softmax(z, dim=-1)
            dz.scatter_add_(2, yb[..., None], torch.full_like(yb[..., None], -1.0, dtype=dz.dtype))
            dz /= BATCH
            dW2, db2 = torch.bmm(a.transpose(1, 2), dz), dz.sum(dim=1)
            dh = torch.bmm(dz, W2.transpose(1, 2)) * (h > 0)
            dW1, db1 = torch.bmm(xb.transpose(1, 2), dh), dh.sum(dim=1)
            W1, b1, W2, b2 = W1 - LR * dW1, b1 - LR * db1, W2 - LR * dW2, b2 - LR * db2
        params[:] = [_mix(p, topology) for p in (W1, b1, W2, b2)]
    return one_round


def engine_config(n: int, topology: str, model: str = "mlp"):
    from p2pforget import config
    return config.from_dict({
        "run": {"seed": 0, "eval_every": 0},
        "topology": {"kind": topology, "n_clients": n},
        "data": {"n_samples_per_client": SAMPLES, "n_test": 10, "gaussian_logistic": {"n_features": FEATURES, "n_classes": CLASSES}},
        "model": {"kind": model} | ({model: {"hidden": HIDDEN}} if model != "logistic" else {}),
        "train": {"lr": LR, "local_steps": STEPS, "batch_size": BATCH, "weight_decay": 0.0, "dtype": "float32"},
        "ledger": {"kind": "off"},
    })


def engine_round_fn(n: int, topology: str, model: str = "mlp"):
    from p2pforget import Engine
    engine = Engine(config=engine_config(n, topology, model))
    return engine.step


IMPLEMENTATIONS = {"engine": engine_round_fn, "batched": batched_round_fn, "loop": loop_round_fn}


def cell(impl: str, n: int, topology: str, rounds: int, model: str = "mlp") -> dict:
    """One measurement (run in a fresh process)."""
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _data(min(n, 16))  # warm the allocator and kernels before the baseline memory reading
    base = _peak_mb()
    one_round = IMPLEMENTATIONS[impl](n, topology, model) if impl == "engine" else IMPLEMENTATIONS[impl](n, topology)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:]) if len(times) > 1 else times[0]
    peak = _peak_mb()
    return {"impl": impl, "n": n, "topology": topology, "model": model, "seconds_per_round": seconds,
            "client_steps_per_s": STEPS * n / seconds, "peak_mb": peak, "peak_kb_per_client": (peak - base) * 1024 / n}


def run_cell(impl: str, n: int, topology: str, rounds: int, model: str = "mlp") -> dict:
    out = subprocess.run([sys.executable, __file__, "--cell", json.dumps([impl, n, topology, rounds, model])],
                         capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if out.returncode != 0:
        raise RuntimeError(f"{impl} at n={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    from p2pforget.report import table as fmt
    rows = []
    by = {(r["impl"], r["n"], r["topology"]): r for r in results}
    for topology in ("ring", "star"):
        for n in sorted({r["n"] for r in results if r["model"] == "mlp"}):
            e, b, lp = (by.get((k, n, topology)) for k in ("engine", "batched", "loop"))
            if e is None:
                continue
            rows.append([topology, n, e["seconds_per_round"], e["client_steps_per_s"],
                         b["client_steps_per_s"] if b else "", lp["client_steps_per_s"] if lp else "skipped",
                         e["client_steps_per_s"] / b["client_steps_per_s"] if b else "",
                         e["client_steps_per_s"] / lp["client_steps_per_s"] if lp else "",
                         e["peak_kb_per_client"]])
    return fmt(["graph", "clients", "engine s/round", "engine steps/s", "batched steps/s", "loop steps/s",
                "engine / batched", "engine / loop", "engine peak KB/client"], rows)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, topology in zip(axes, ("ring", "star")):
        for impl, style in (("engine", "o-"), ("batched", "s--"), ("loop", "^:")):
            pts = sorted((r["n"], r["client_steps_per_s"]) for r in results
                         if r["impl"] == impl and r["topology"] == topology and r["model"] == "mlp")
            if pts:
                ax.plot(*zip(*pts), style, label={"engine": "p2pforget engine", "batched": "hand-written batched",
                                                   "loop": "per-client nn.Module loop"}[impl])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients (one process, one core)")
        ax.set_title(topology)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("client-steps per second")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="16,256,1024,4096,10000")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--loop-max", type=int, default=4096)
    p.add_argument("--memory-clients", type=int, default=100_000)
    p.add_argument("--write", help="markdown file whose clients-per-core section is replaced with the results")
    p.add_argument("--cell", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        print(json.dumps(cell(*json.loads(args.cell))))
        return
    results = []
    for n in [int(v) for v in args.clients.split(",")]:
        for topology in ("ring", "star"):
            for impl in ("engine", "batched", "loop"):
                if impl == "loop" and n > args.loop_max:
                    continue
                rounds = args.rounds if impl != "loop" or n <= 256 else 3
                r = run_cell(impl, n, topology, rounds)
                print(f"{impl:8s} {topology:5s} n={n:6d}: {r['seconds_per_round']:.4f} s/round, "
                      f"{r['client_steps_per_s']:.0f} client-steps/s, peak {r['peak_mb']:.0f} MB", flush=True)
                results.append(r)
    memory = None
    if args.memory_clients:
        memory = run_cell("engine", args.memory_clients, "ring", 2, "logistic")
        print(f"memory: one ring round of the logistic model at {args.memory_clients} clients: "
              f"{memory['seconds_per_round']:.2f} s, peak {memory['peak_mb']:.0f} MB "
              f"({memory['peak_kb_per_client']:.2f} KB per client)")
    text = table(results)
    print(text)
    png = ROOT / "docs" / "results" / "clients_per_core.png"
    plot(results, png)
    (ROOT / "docs" / "results" / "clients_per_core.json").write_text(json.dumps({"cells": results, "memory": memory}, indent=1))
    if args.write:
        write_section(Path(args.write), text, memory, png)


def write_section(path: Path, text: str, memory: dict | None, png: Path) -> None:
    import platform
    start, end = "<!-- clients_per_core:start -->", "<!-- clients_per_core:end -->"
    lines = [start, "", f"Measured by `benchmarks/clients_per_core.py` on {platform.machine()} with "
             f"{os.cpu_count()} cores, one process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} "
             f"({time.strftime('%Y-%m-%d')}); every cell in its own process.", "", "```", text, "```", ""]
    if memory:
        lines += [f"Memory: one ring round of the logistic model at {memory['n']:,} clients took "
                  f"{memory['seconds_per_round']:.2f} s with a peak resident size of {memory['peak_mb']:.0f} MB "
                  f"({memory['peak_kb_per_client']:.2f} KB per client over the baseline process); a dense n x n "
                  f"float64 matrix alone would need {memory['n'] ** 2 * 8 / 1e9:.0f} GB.", ""]
    lines += [f"![client-steps per second]({os.path.relpath(png, path.resolve().parent)})", "", end]
    old = path.read_text() if path.exists() else ""
    if start in old:
        new = old[:old.index(start)] + "\n".join(lines) + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n## Clients per core\n\n" + "\n".join(lines) + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
