"""Retrain: train from the same initialization and seeds, on the graph that remains, without the
forgotten data. The gold reference every unlearning method is compared with (exact unlearning).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..config import UnlearnConfig
from . import Cost, ForgetRequest, Outcome, measured

if TYPE_CHECKING:
    from ..engine import Engine


def retrain(engine: "Engine", *, rounds: int, progress: bool = True) -> tuple["Engine", Cost]:
    """A fresh engine with ``engine``'s config, transport and exclusions, trained ``rounds`` rounds."""
    from ..engine import Engine

    fresh = Engine(config=engine.config, transport=engine.transport, aggregator=engine.aggregator)
    fresh.exclude(samples={j: np.flatnonzero(~engine.retained[j]) for j in range(engine.n_clients)},
                  removed=np.flatnonzero(~engine.members).tolist())
    # Every round does the same work, so FLOPs are counted in the first round only: the counter
    # slows small operations down several times and would distort the measured seconds.
    start = time.perf_counter()
    _, _, per_round = measured(lambda: fresh.train(min(rounds, 1), progress=False))
    fresh.train(rounds - min(rounds, 1), progress=progress, desc="retrain")
    seconds = time.perf_counter() - start
    return fresh, Cost(seconds=seconds, flops=per_round * rounds, comm_bytes=float(sum(fresh.metrics["bytes_sent"])))


class Retrain:
    """Exact unlearning by retraining from scratch (the reference, usable as a method)."""

    name = "retrain"

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: UnlearnConfig) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        fresh, cost = retrain(engine, rounds=engine.round, progress=False)
        certificate = {"method": self.name, "epsilon": 0.0, "delta": 0.0, "sigma": 0.0,
                       "residual_bound": 0.0, "residual_norm": 0.0, "certified": True}
        return Outcome(noiseless=fresh.params, release=lambda: (fresh.params, certificate), comm_bytes=cost.comm_bytes)
