"""The engine on a GPU against the same run on the CPU.

    .venv/bin/python benchmarks/gpu_check.py [--clients 1024] [--rounds 5]

Trains the clients-per-core workload (see ``benchmarks/clients_per_core.py``) on a ring with
``run.device = "cpu"`` and ``"cuda"`` from the same seed, asserts that the parameters agree to
float32 tolerance (GPU kernels round differently, so bits may differ) and prints seconds per round
on each device. Without a GPU it says so and exits with status 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients_per_core import engine_config  # noqa: E402

from p2pforget import Engine, config  # noqa: E402


def timed(engine: Engine, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        engine.step()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no GPU on this machine; nothing to compare")
        return 0
    results = {}
    for device in ("cpu", "cuda"):
        cfg = config.replace(engine_config(args.clients, "ring"), run={"device": device, "rounds": args.rounds})
        engine = Engine(config=cfg)
        times = timed(engine, args.rounds)
        results[device] = (engine.params.cpu(), statistics.median(times[1:]))
        print(f"{device}: {results[device][1]:.4f} s/round ({4 * args.clients / results[device][1]:.0f} client-steps/s)")
    diff = float((results["cpu"][0] - results["cuda"][0]).abs().max())
    scale = float(results["cpu"][0].abs().max())
    print(f"max |cpu - cuda| = {diff:.3g} (parameters up to {scale:.3g}); GPU speed-up {results['cpu'][1] / results['cuda'][1]:.1f}x")
    assert diff <= 1e-4 * max(scale, 1.0), "GPU and CPU runs disagree beyond float32 tolerance"
    return 0


if __name__ == "__main__":
    sys.exit(main())
