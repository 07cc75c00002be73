"""CLIP training and EASE on a GPU against the same run on the CPU, and one ViT-B-32 round.

    .venv/bin/python benchmarks/gpu_clip_check.py [--rounds 10] [--vit-clients 4]

Part 1: the EASE table's experiment (``benchmarks/ease_table.py``: tiny CLIP with LoRA,
``captions_synth``, 10 clients; here without the pretrained backbone) on the star and the ring with
``run.device = "cpu"`` and ``"cuda"`` from the same seed; then EASE forgets every purple pair on
both. It prints, per topology, how far the trained and the unlearned parameters of the two devices
are apart and the FA / RA / TA of each, and asserts that they agree to float32 tolerance (TF32 is
turned off, so both devices compute in full float32; GPU kernels still round differently, so bits
may differ) and that EASE's FA on the GPU is within 2 points of the CPU's.

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
                 "concept": "colour"},
        "model": {"kind": "clip"},
        "train": {"lr": 0.5, "local_steps": 2, "batch_size": 32, "weight_decay": 0.0},
        "audit": {"after_forget": False},
    })


def one_device(kind: str, device: str, rounds: int) -> dict:
    engine = Engine(config=experiment(kind, device, rounds))
    start = time.perf_counter()
    engine.train(rounds, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / rounds
    trained = engine.params.cpu().clone()
    result = forget(engine, samples=ease_table.forget_request(engine), method="ease", reference=False,
                    progress=False, **ease_table.METHODS["ease"][1])
    m = result.metrics["unlearned"]
    return {"trained": trained, "unlearned": engine.params.cpu().clone(), "seconds": seconds,
            "FA": m["FA"]["mean"], "RA": m["RA"]["mean"], "TA": m["TA"]["mean"]}


def agreement(rounds: int) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for kind in ("star", "ring"):
        out = {device: one_device(kind, device, rounds) for device in ("cpu", "cuda")}
        cpu, gpu = out["cpu"], out["cuda"]
        for stage in ("trained", "unlearned"):
            diff = float((cpu[stage] - gpu[stage]).abs().max())
            scale = float(cpu[stage].abs().max())
            print(f"{kind} {stage}: max |cpu - cuda| = {diff:.3g} (parameters up to {scale:.3g})")
            assert diff <= 1e-3 * max(scale, 1.0), f"{kind} {stage}: GPU and CPU disagree beyond float32 tolerance"
        print(f"{kind} R@1 (cpu | cuda): FA {cpu['FA']:.1f} | {gpu['FA']:.1f}, RA {cpu['RA']:.1f} | {gpu['RA']:.1f}, "
              f"TA {cpu['TA']:.1f} | {gpu['TA']:.1f}; s/round {cpu['seconds']:.3f} | {gpu['seconds']:.3f}")
        assert abs(cpu["FA"] - gpu["FA"]) <= 2.0, f"{kind}: EASE's FA differs by more than 2 points between devices"


def vit_round(clients: int) -> None:
    cfg = config.from_dict({
        "run": {"seed": 0, "rounds": 2, "eval_every": 0, "device": "cuda"},
        "topology": {"kind": "star", "n_clients": clients},
        "data": {"kind": "captions_synth", "n_samples_per_client": 32, "n_test": 8, "image_size": 224},
        "model": {"kind": "clip", "clip_config": "ViT-B-32"},
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
