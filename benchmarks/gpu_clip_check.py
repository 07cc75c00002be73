"""CLIP training and EASE on a GPU against the same run on the CPU, and one ViT-B-32 round.

    .venv/bin/python benchmarks/gpu_clip_check.py [--rounds 10] [--vit-clients 4]

Part 1: the EASE table's experiment (``benchmarks/ease_table.py``: tiny CLIP with LoRA,
``captions_synth``, 10 clients; here without the pretrained backbone) on the star and the ring with
``run.device = "cpu"`` and ``"cuda"`` from the same seed. One round must agree to float32 rounding
(TF32 off, so both devices compute in full float32; GPU kernels still round differently); after
``--rounds`` the two runs have drifted apart and the gap is printed. Then EASE forgets every purple
pair on both devices from the CPU's trained state: the unlearned parameters must agree to 1e-3
(relative) and FA to 2 points.

Part 2: one federated round (star, LoRA) of open_clip's ViT-B-32 (no weights: open_clip's config,
random initialization) on 224-pixel synthetic captions, on the GPU only: seconds per round and
peak GPU memory, to show that the CLIP path runs at the size of a real CLIP model.

Without a GPU it says so and exits with status 0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ease_table  # noqa: E402  (the table's request and EASE options)

from p2pforget import Engine, config, forget  # noqa: E402


def experiment(kind: str, device: str, rounds: int):
    return config.from_dict({
        "run": {"seed": 0, "rounds": rounds, "eval_every": 0, "device": device},
        "topology": {"kind": kind, "n_clients": 10},
        "data": {"kind": "captions_synth", "n_samples_per_client": 60, "n_test": 100, "partition": "iid",
                 "captions_synth": {"concept": "colour"}},
        "model": {"kind": "clip"},
        "train": {"lr": 0.5, "local_steps": 2, "batch_size": 32, "weight_decay": 0.0},
        "audit": {"after_forget": False},
    })


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max(max |a|, 1)``."""
    return float((a.cpu() - b.cpu()).abs().max()) / max(float(a.abs().max()), 1.0)


def ease(engine: Engine) -> dict:
    result = forget(engine, samples=ease_table.forget_request(engine), method="ease", reference=False,
                    progress=False, **ease_table.METHODS["ease"][1])
    m = result.metrics["unlearned"]
    return {"params": engine.params.cpu().clone(), "FA": m["FA"]["mean"], "RA": m["RA"]["mean"], "TA": m["TA"]["mean"]}


def agreement(rounds: int) -> None:
    """One round from the same start must agree to float32 rounding; after ``rounds`` the devices'
    runs have drifted apart (SGD amplifies rounding) and are only reported. EASE then starts on
    both devices from the CPU's trained state, and its results must agree again."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for kind in ("star", "ring"):
        engines = {d: Engine(config=experiment(kind, d, rounds)) for d in ("cpu", "cuda")}
        seconds = {}
        for d, e in engines.items():
            start = time.perf_counter()
            e.train(1, progress=False)
            if d == "cuda":
                torch.cuda.synchronize()
            seconds[d] = time.perf_counter() - start
        one = relative_gap(engines["cpu"].params, engines["cuda"].params)
        print(f"{kind}: after 1 round max |cpu - cuda| / max |cpu| = {one:.2g}; seconds (first round, "
              f"with start-up) cpu {seconds['cpu']:.2f}, cuda {seconds['cuda']:.2f}; vmapped on cuda: "
              f"{engines['cuda'].compute.vectorized}")
        assert one <= 1e-5, f"{kind}: one round on the GPU and the CPU disagree beyond float32 rounding"
        for e in engines.values():
            e.train(rounds - 1, progress=False)
        print(f"{kind}: after {rounds} rounds (each device on its own) {relative_gap(engines['cpu'].params, engines['cuda'].params):.2g}")
        state = engines["cpu"].state()
        engines["cuda"].load_state(state)
        cpu, gpu = ease(engines["cpu"]), ease(engines["cuda"])
        gap = relative_gap(cpu["params"], gpu["params"])
        print(f"{kind}: EASE from the same trained state: unlearned parameters {gap:.2g} apart; R@1 (cpu | cuda): "
              f"FA {cpu['FA']:.1f} | {gpu['FA']:.1f}, RA {cpu['RA']:.1f} | {gpu['RA']:.1f}, TA {cpu['TA']:.1f} | {gpu['TA']:.1f}")
        assert gap <= 1e-3, f"{kind}: EASE on the GPU and the CPU disagree"
        assert abs(cpu["FA"] - gpu["FA"]) <= 2.0, f"{kind}: EASE's FA differs by more than 2 points between devices"


def vit_round(clients: int) -> None:
    cfg = config.from_dict({
        "run": {"seed": 0, "rounds": 2, "eval_every": 0, "device": "cuda"},
        "topology": {"kind": "star", "n_clients": clients},
        "data": {"kind": "captions_synth", "n_samples_per_client": 32, "n_test": 8, "captions_synth": {"image_size": 224}},
        "model": {"kind": "clip", "clip": {"clip_config": "ViT-B-32"}},
        "train": {"lr": 0.1, "local_steps": 1, "batch_size": 32},
        "audit": {"after_forget": False},
    })
    engine = Engine(config=cfg)
    engine.train(1, progress=False)  # warm-up: kernels and caches
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine.train(1, progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    frozen = sum(p.numel() for p in engine.model.module.parameters())
    print(f"ViT-B-32, {clients} clients x 32 pairs at 224 px, LoRA: {engine.dim} trainable of {frozen} parameters; "
          f"{seconds:.2f} s per round; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    assert torch.isfinite(engine.params).all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--vit-clients", type=int, default=4)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_clip_check: torch sees no GPU on this machine; nothing to compare")
        return 0
    agreement(args.rounds)
    vit_round(args.vit_clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
