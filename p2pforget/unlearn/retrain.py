"""Retrain: train from the same initialization and seeds, on the graph that remains, without the
forgotten data. The gold reference every unlearning method is compared with (exact unlearning).
"""
from __future__ import annotations

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
    fresh = Engine(config=engine.config, transport=engine.transport, aggregator=engine.aggregator)
    fresh.exclude(samples={j: np.flatnonzero(~engine.retained[j]) for j in range(engine.n_clients)},
                  removed=np.flatnonzero(~engine.members).tolist())
    # Every round does the same work, so FLOPs are counted in the first round only: the counter
    # slows small operations down several times and would distort the measured seconds.
    start = time.perf_counter()
    _, _, per_round = measured(lambda: fresh.train(min(rounds, 1), progress=False))
    callback = None if observe is None else (lambda e: observe(e.params))
    if callback is not None and rounds:
        callback(fresh)
    fresh.train(rounds - min(rounds, 1), progress=progress, desc="retrain", callback=callback)
    seconds = time.perf_counter() - start - fresh.eval_seconds
    per_round -= evaluation_flops(fresh) if rounds and fresh.evaluates(1) else 0.0
    return fresh, Cost(seconds=seconds, flops=per_round * rounds, comm_bytes=float(sum(fresh.metrics["bytes_sent"])))


@dataclass(frozen=True)
class RetrainOptions:
    """Retrain has no options of its own (it repeats training as configured)."""


@METHODS.register("retrain", options=RetrainOptions, help="exact unlearning: train from scratch without the forgotten data")
class Retrain:
    """Exact unlearning by retraining from scratch (the reference, usable as a method)."""

    def unlearn(self, engine: Engine, request: ForgetRequest, options: RetrainOptions) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        fresh, cost = retrain(engine, rounds=engine.round, progress=False)
        return Outcome.plain(fresh.params, comm_bytes=cost.comm_bytes, rounds=engine.round)
