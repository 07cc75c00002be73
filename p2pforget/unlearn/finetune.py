"""Fine-tuning baseline: the forgotten data leave, and the remaining clients keep training.

The simplest federated unlearning baseline (e.g. the "FT" rows of Liu et al., "FedEraser",
IWQoS 2021, and of most federated unlearning benchmarks since): it relies on catastrophic
forgetting alone and gives no guarantee.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import bounded
from ..registry import METHODS
from . import ForgetRequest, Outcome, continue_training

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class FinetuneOptions:
    """Keys of ``[unlearn.finetune]``."""

    rounds: int = bounded(10, 1)


@METHODS.register("finetune", options=FinetuneOptions, help="continue training on the retained clients only")
class Finetune:
    """Exclude the forgotten data, then ``rounds`` more rounds of the engine's own training."""

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: FinetuneOptions) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        start = engine.round
        comm = continue_training(engine, options.rounds, request)
        return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=engine.round - start)
