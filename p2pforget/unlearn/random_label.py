"""Random-label fine-tuning: the forgotten samples are relabelled at random and trained on.

Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks" (CVPR 2020) introduced the idea; it is the "RL" baseline of Fan et al., "SalUn" (ICLR
2024) and of the unlearning benchmarks since. Fitting wrong labels pushes the model away from what
the forgotten samples taught it, while the rest of the data keep their labels.

Federated form: ``rounds`` rounds in which every node trains its local steps on the data it still
has (the retained data, true labels), and each node holding forgotten samples also takes
``forget_steps`` gradient steps on them with random labels; the models are then averaged at the
hub (star) or gossiped (any other graph), as in training. Each forgotten sample gets one wrong
label, drawn once from ``(run.seed, client)`` (the same at any number of MPI ranks). Forgotten
nodes leave afterwards (``remove``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch.func import grad

from ..config import bounded
from ..registry import METHODS
from . import ForgetRequest, Outcome, forget_batch, require_classifier, rounds_with_local_change

if TYPE_CHECKING:
    from ..engine import Engine

RELABEL_STREAM = 7_100  # seeds the random labels apart from every other random stream


@dataclass(frozen=True)
class RandomLabelOptions:
    """Keys of ``[unlearn.random_label]``; ``lr = 0`` uses ``train.lr``."""

    rounds: int = bounded(5, 1)
    forget_steps: int = bounded(1, 1)
    lr: float = bounded(0.0, 0.0)


def wrong_labels(y: np.ndarray, n_classes: int, *, seed: int | Sequence[int]) -> np.ndarray:
    """One label per sample drawn uniformly from the classes other than its own ``y``.

    >>> labels = wrong_labels(np.array([0, 1, 2, 2]), 3, seed=0)
    >>> bool((labels != np.array([0, 1, 2, 2])).all()), bool(((0 <= labels) & (labels < 3)).all())
    (True, True)
    """
    shift = np.random.default_rng(seed).integers(1, n_classes, size=len(y))
    return (np.asarray(y) + shift) % n_classes


def relabelled(engine: "Engine", request: ForgetRequest, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The request's :func:`~p2pforget.unlearn.forget_batch` with every real sample's label
    replaced by :func:`wrong_labels` (seeded by ``(run.seed, client)``)."""
    y = batch["y"].clone()
    for j, picked in request.samples.items():
        if engine.lo <= j < engine.hi and len(picked):
            row = y[j - engine.lo, :len(picked)].cpu().numpy()
            new = wrong_labels(row, engine.data.n_classes, seed=[engine.config.run.seed, RELABEL_STREAM, j])
            y[j - engine.lo, :len(picked)] = torch.as_tensor(new, dtype=y.dtype, device=y.device)
    return batch | {"y": y}


def relabel_steps(engine: "Engine", params: torch.Tensor, batch: dict[str, torch.Tensor], *, lr: float,
                  steps: int) -> torch.Tensor:
    """``steps`` plain gradient steps of every local row on the cross-entropy of ``batch``
    (rows without forgotten samples have an all-zero mask, hence a zero gradient)."""
    descend = grad(engine.task.data_loss)
    for _ in range(steps):
        params = params - lr * engine.compute.per_client(descend, params, batch)
    return params


def relabel_rounds(engine: "Engine", request: ForgetRequest, options: RandomLabelOptions, *, key: int,
                   mask: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> Outcome:
    """Random-label fine-tuning of the request (see the module docstring) in ``options.rounds``
    rounds, batches keyed by ``key``. ``mask(forget_batch)``, computed before anything changes,
    gives ``[n_local, d]`` weights in [0, 1] on each node's change in a round (SalUn's saliency
    mask: 0 freezes a weight); without it every weight moves."""
    lr = options.lr or engine.config.train.lr
    plain = forget_batch(engine, request.samples)
    batch = relabelled(engine, request, plain)
    keep = None if mask is None else mask(plain)
    weights = engine.sample_counts.copy()  # before the exclusion: the forgotten nodes' steps count
    engine.exclude(samples=request.samples)

    def relabel(params: torch.Tensor, local: torch.Tensor, r: int) -> torch.Tensor:
        moved = local + relabel_steps(engine, params, batch, lr=lr, steps=options.forget_steps) - params
        return moved if keep is None else params + keep * (moved - params)

    comm = rounds_with_local_change(engine, options.rounds, request, relabel, weights=weights, key=key)
    engine.exclude(removed=request.removed)
    return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=options.rounds)


@METHODS.register("random_label", options=RandomLabelOptions,
                  help="fine-tune with random labels on the forgotten samples and true labels on the rest")
class RandomLabel:
    """Random-label fine-tuning in rounds (see the module docstring)."""

    def check(self, engine: "Engine", request: ForgetRequest, options: RandomLabelOptions) -> None:
        require_classifier(engine, "random_label")

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: RandomLabelOptions) -> Outcome:
        return relabel_rounds(engine, request, options, key=40_000_000)
