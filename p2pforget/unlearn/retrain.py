"""Retrain: train from the same initialization and seeds, on the graph that remains, without the
forgotten data. The gold reference every unlearning method is compared with (exact unlearning).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..engine import Engine
from ..registry import METHODS
from ..flops import measured
from . import Cost, ForgetRequest, Outcome, evaluation_work


def retrain(engine: Engine, *, rounds: int, progress: bool = False,
            observe: Callable[[torch.Tensor], None] | None = None,
            excluded: dict[str, float] | None = None) -> tuple[Engine, Cost]:
    """A fresh fork of ``engine`` (its data, transport and exclusions; round 0, the initial models)
    trained ``rounds`` rounds, its seconds and FLOPs measured in that run; ``observe(params)`` is
    called after every round (its work is in the returned cost: the caller, who knows it, takes it
    out). The engine's per-round metric evaluation is left out of the cost, as for every
    unlearning method, and added to ``excluded`` (when given) for a caller who measures around."""
    fresh = engine.fork(fresh=True)
    callback = None if observe is None else (lambda e: observe(e.params))
    _, seconds, flops = measured(lambda: fresh.train(rounds, progress=progress, desc="retrain", callback=callback))
    eval_flops, one, measuring = evaluation_work(fresh, 0, rounds)
    if excluded is not None:
        excluded["seconds"] += fresh.eval_seconds + measuring
        excluded["flops"] += eval_flops + one
    return fresh, Cost(seconds=seconds - fresh.eval_seconds, flops=flops - eval_flops,
                       comm_bytes=float(sum(fresh.metrics["bytes_sent"])))


@dataclass(frozen=True)
class RetrainOptions:
    """Retrain has no options of its own (it repeats training as configured)."""


@METHODS.register("retrain", options=RetrainOptions, help="exact unlearning: train from scratch without the forgotten data")
class Retrain:
    """Exact unlearning by retraining from scratch (the reference, usable as a method)."""

    def unlearn(self, engine: Engine, request: ForgetRequest, options: RetrainOptions) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        fresh, cost = retrain(engine, rounds=engine.round, progress=False, excluded=request.excluded)
        return Outcome.plain(fresh.params, comm_bytes=cost.comm_bytes, rounds=engine.round)
