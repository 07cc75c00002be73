"""Retrain: train from the same initialization and seeds, on the graph that remains, without the
forgotten data. The gold reference every unlearning method is compared with (exact unlearning).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..engine import Engine
from ..registry import METHODS
from . import Cost, ForgetRequest, Outcome, evaluation_flops, measured


def retrain(engine: Engine, *, rounds: int, progress: bool = True,
            observe: Callable[[torch.Tensor], None] | None = None) -> tuple[Engine, Cost]:
    """A fresh engine with ``engine``'s config, transport and exclusions, trained ``rounds`` rounds;
    ``observe(params)`` is called after every round (its time is in the returned seconds: the
    caller, who knows it, takes it out). The engine's per-round metric evaluation is left out of the
    cost, as for every unlearning method."""
    def remaining() -> Engine:
        e = Engine(config=engine.config, transport=engine.transport, aggregator=engine.aggregator)
        e.exclude(samples={j: np.flatnonzero(~engine.retained[j]) for j in range(engine.n_clients)},
                  removed=np.flatnonzero(~engine.members).tolist())
        return e

    # Every round after the first does the same work (the first may also initialize, e.g. gradient
    # tracking's tracker), so FLOPs are counted on the first two rounds of a twin: the counter slows
    # small operations down several times, so the timed run goes without it.
    flops = 0.0
    if rounds:
        twin = remaining()
        for r in range(min(rounds, 2)):
            _, _, counted = measured(lambda: twin.train(1, progress=False))
            counted -= evaluation_flops(twin) if twin.evaluates(r + 1) else 0.0
            flops += counted * (1 if r == 0 else rounds - 1)
    fresh = remaining()
    callback = None if observe is None else (lambda e: observe(e.params))
    start = time.perf_counter()
    fresh.train(rounds, progress=progress, desc="retrain", callback=callback)
    seconds = time.perf_counter() - start - fresh.eval_seconds
    return fresh, Cost(seconds=seconds, flops=flops, comm_bytes=float(sum(fresh.metrics["bytes_sent"])))


@dataclass(frozen=True)
class RetrainOptions:
    """Retrain has no options of its own (it repeats training as configured)."""


@METHODS.register("retrain", options=RetrainOptions, help="exact unlearning: train from scratch without the forgotten data")
class Retrain:
    """Exact unlearning by retraining from scratch (the reference, usable as a method)."""

    def unlearn(self, engine: Engine, request: ForgetRequest, options: RetrainOptions) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        fresh, cost = retrain(engine, rounds=engine.round, progress=False)
        outcome = Outcome.plain(fresh.params, comm_bytes=cost.comm_bytes, rounds=engine.round)
        return dataclasses.replace(outcome, counted_flops=cost.flops)
