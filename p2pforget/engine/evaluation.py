"""Metrics: every node's objective, test score and distance to the members' mean model at evaluation
rounds, recorded at the root.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..aggregate import row_blocks
from ..tasks import as_inputs

if TYPE_CHECKING:
    from .core import Engine


class DivergenceError(ValueError):
    """Training produced non-finite parameters or losses."""


def evaluate(engine: "Engine", params: torch.Tensor | None = None) -> dict[str, np.ndarray] | None:
    """See :meth:`p2pforget.engine.Engine.evaluate`."""
    e, batches, compute = engine, engine.batches, engine.compute
    params = e.params if params is None else params
    with torch.no_grad():
        # every input, cast to the training dtype a vmap chunk at a time (batches.x is not made)
        raw = batches.every_sample(batches.raw_inputs)
        loss = compute.per_client(lambda flat, b, a: e.task.objective(flat, b | {"x": as_inputs(b["x"], e.dtype)}, a),
                                  params.detach(), raw, e.active)
        scored = compute.with_buffers(params.detach())
        acc = compute.per_client(e.task.score, scored, batches.test(params.shape[0]))
        mean = e.network.mean(params)
        mean_statistics = e.network.mean(e.buffers) if e.model.buffer_dim else None
        dist = torch.cat([torch.linalg.vector_norm(params[r].detach().double() - mean, dim=1)
                          for r in row_blocks(params.shape[0])])
        finite = torch.isfinite(params).all(dim=1)
        probed = [compute.per_client(e.task.score, scored, batches.probe(name, params.shape[0])).double()
                  for name in batches.probes]
    full = e.transport.gather(torch.stack([loss.double(), acc.double(), dist, finite.double(), *probed], dim=1))
    if full is None:
        return None
    with torch.no_grad():  # the mean model itself, at the root (every process holds the same mean)
        averaged = mean if mean_statistics is None else torch.cat([mean, mean_statistics])
        of_mean = float(e.task.score(averaged.to(e.dtype), {k: v[0] for k, v in batches.test(1).items()}))
    full = full.cpu().numpy()
    return {"loss": full[:, 0], "test_acc": full[:, 1], "distance_to_mean": full[:, 2], "finite": full[:, 3] > 0,
            "test_acc_of_mean": of_mean} | {name: full[:, 4 + k] for k, name in enumerate(batches.probes)}


def record(engine: "Engine") -> None:
    """Append the current round's metrics (at the root) and stop every process if training diverged."""
    e = engine
    start = time.perf_counter()
    per_client = evaluate(e)
    e.eval_seconds += time.perf_counter() - start
    problem = None
    if per_client is not None:
        m = e.members
        e.metrics["round"].append(e.round)
        e.metrics["loss_mean"].append(float(per_client["loss"][e.has_data].mean()))
        e.metrics["test_acc_mean"].append(float(per_client["test_acc"][m].mean()))
        e.metrics["test_acc_min"].append(float(per_client["test_acc"][m].min()))
        e.metrics["test_acc_of_mean"].append(per_client["test_acc_of_mean"])
        e.metrics["consensus_distance"].append(float(per_client["distance_to_mean"][m].mean()))
        for name in e.batches.probes:
            e.metrics[f"{name}_mean"].append(float(per_client[name][m].mean()))
        for name in e.per_node:
            e.per_node[name].append(np.where(m, per_client[name], np.nan))  # NaN: not in the graph
        problem = _divergence(per_client["finite"][m], per_client["loss"][e.has_data], np.flatnonzero(m))
    problem = e.transport.bcast_object(problem)  # every process stops in the same round
    if problem:
        lr = e.config.train.lr
        raise DivergenceError(f"training diverged by round {e.round}: {problem}; lower train.lr "
                              f"(now {lr:g}, e.g. to {lr / 10:g}) and start the run again")


def consensus_distance(params: np.ndarray) -> float:
    """``mean_i ||x_i - mean_j x_j||`` over the rows of ``params``."""
    return float(np.linalg.norm(params - params.mean(axis=0), axis=1).mean())


def _divergence(finite: np.ndarray, losses: np.ndarray, ids: np.ndarray) -> str | None:
    """What is non-finite among the nodes' parameters (``finite`` flags) and their clients'
    ``losses`` (``None``: all finite)."""
    if not finite.all():
        return f"{int((~finite).sum())} node(s) have non-finite parameters (first: client {int(ids[~finite][0])})"
    if not np.isfinite(losses).all():
        return f"the training loss is {float(losses[~np.isfinite(losses)][0])}"
    return None
