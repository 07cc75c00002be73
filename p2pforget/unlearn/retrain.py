"""Retrain: train from the same initialization and seeds, on the graph that remains, without the
forgotten data. The gold reference every unlearning method is compared with (exact unlearning).
"""
from __future__ import annotations

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
    _, seconds, flops = measured(lambda: fresh.train(rounds, progress=progress, desc="retrain"))
    return fresh, Cost(seconds=seconds, flops=flops, comm_bytes=float(sum(fresh.metrics["bytes_sent"])))


class Retrain:
    """Exact unlearning by retraining from scratch (the reference, usable as a method)."""

    name = "retrain"

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: UnlearnConfig) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        fresh, cost = retrain(engine, rounds=engine.round, progress=False)
        return Outcome(noiseless=fresh.params, released=fresh.params,
                       certificate={"method": self.name, "epsilon": float("inf"), "delta": 0.0, "sigma": 0.0,
                                    "residual_bound": 0.0, "residual_norm": 0.0, "certified": True},
                       comm_bytes=cost.comm_bytes)
