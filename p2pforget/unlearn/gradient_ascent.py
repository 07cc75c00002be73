"""Gradient-ascent baseline: the forgotten client ascends its loss while the others keep training.

Halimi, Kadhe, Rawat, Baracaldo, "Federated Unlearning: How to Efficiently Erase a Client in FL?"
(2022) and Wu et al., "Federated Unlearning with Knowledge Distillation" (2022) use this family:
the target client maximizes the loss on its own data (here with a step ``lr`` and for ``rounds``
rounds, as unbounded ascent diverges), the retained clients descend on theirs, and the models are
averaged (star) or gossiped as in training. The forgotten node leaves afterwards (``remove``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import grad

from ..config import bounded
from ..registry import METHODS
from . import ForgetRequest, Outcome, rounds_with_local_change

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class AscentOptions:
    """Keys of ``[unlearn.gradient_ascent]``; ``lr = 0`` uses ``train.lr``."""

    rounds: int = bounded(3, 1)
    lr: float = bounded(0.0, 0.0)
    clip: float = bounded(5.0, 0.0)


@METHODS.register("gradient_ascent", options=AscentOptions, help="forgotten clients ascend their loss, the others descend")
class GradientAscent:
    """``rounds`` rounds of ascent on the forgotten data and descent on the rest (see the module docstring)."""

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: AscentOptions) -> Outcome:
        lr = options.lr or engine.config.train.lr
        forget_mask = np.zeros_like(engine.retained)
        for j, idx in request.samples.items():
            forget_mask[j, idx] = True
        weights = engine.sample_counts.copy()
        engine.exclude(samples=request.samples)  # nodes stay in the graph while they ascend
        batch = engine.batches.full() | {"mask": torch.as_tensor(forget_mask[engine.lo:engine.hi], dtype=engine.dtype,
                                                              device=engine.device)}
        ascent = grad(engine.task.data_loss)

        def step_up(params: torch.Tensor, local: torch.Tensor, r: int) -> torch.Tensor:
            g = engine.compute.per_client(ascent, params, batch)
            if options.clip > 0:
                g = g * torch.clamp(options.clip / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp(min=1e-12), max=1.0)
            return local + lr * g

        comm = rounds_with_local_change(engine, options.rounds, request, step_up, weights=weights, key=20_000_000)
        engine.exclude(removed=request.removed)
        return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=options.rounds)
