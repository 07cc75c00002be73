"""Metrics: every node's objective, test score and distance to the members' mean model at evaluation
rounds, exact member means, and gathering rows at the root.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..aggregate import row_blocks
from ..tasks import as_inputs


class DivergenceError(ValueError):
    """Training produced non-finite parameters or losses."""


class Evaluation:
    """Per-round metrics (a part of :class:`~p2pforget.engine.Engine`)."""

    def evaluate(self, params: torch.Tensor | None = None) -> dict[str, np.ndarray] | None:
        """Per-client train objective, test accuracy and distance to the members' mean model of
        stacked ``params`` (default: current), as full (n_clients,) arrays at the root (``None``
        elsewhere). Only per-client numbers travel: the mean model comes from an allreduce."""
        params = self.params if params is None else params
        with torch.no_grad():
            # every input, cast to the training dtype a vmap chunk at a time (Engine.x is not made)
            raw = self._every_sample(self._inputs)
            loss = self.per_client(lambda flat, b, a: self.task.objective(flat, b | {"x": as_inputs(b["x"], self.dtype)}, a),
                                   params.detach(), raw, self._local_active)
            scored = self.with_buffers(params.detach())
            acc = self.per_client(self.task.score, scored, self.test_batch(params.shape[0]))
            mean = self.member_mean(params)
            mean_statistics = self.member_mean(self.buffers) if self.model.buffer_dim else None
            dist = torch.cat([torch.linalg.vector_norm(params[r].detach().double() - mean, dim=1)
                              for r in row_blocks(params.shape[0])])
            finite = torch.isfinite(params).all(dim=1)
            probed = [self.per_client(self.task.score, scored, self._probe_batch(name, params.shape[0])).double()
                      for name in self.probes]
        full = self.transport.gather(torch.stack([loss.double(), acc.double(), dist, finite.double(), *probed], dim=1))
        if full is None:
            return None
        with torch.no_grad():  # the mean model itself, at the root (every process holds the same mean)
            averaged = mean if mean_statistics is None else torch.cat([mean, mean_statistics])
            of_mean = float(self.task.score(averaged.to(self.dtype), {k: v[0] for k, v in self.test_batch(1).items()}))
        full = full.cpu().numpy()
        return {"loss": full[:, 0], "test_acc": full[:, 1], "distance_to_mean": full[:, 2], "finite": full[:, 3] > 0,
                "test_acc_of_mean": of_mean} | {name: full[:, 4 + k] for k, name in enumerate(self.probes)}

    def member_mean(self, params: torch.Tensor, *, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the member nodes' rows of ``params`` (float64, on every process), summed
        exactly in 64-bit fixed point: the result does not depend on how clients are spread over
        processes, at a resolution of about ``2^-60 * max|x| * n``. ``weights`` (this process's
        rows, summing to one over the members): the weighted sum instead."""
        keep = torch.as_tensor(self.members[self.lo:self.hi], device=params.device)

        def finite_rows(r: slice) -> torch.Tensor:
            rows = params[r].detach().double()
            if weights is not None:
                rows = rows * weights[r].to(rows)[:, None]
            rows = rows[keep[r]]
            return torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))

        # Row blocks bound the float64 and fixed-point copies (a whole one is 2.2 GB at 100,000
        # clients); integer sums are exact, so blocking changes no bit. The scale needs every
        # block's maximum first, so several blocks are converted twice; a single one is kept.
        blocks = row_blocks(params.shape[0])
        kept = [finite_rows(blocks[0])] if len(blocks) == 1 else None
        top = torch.zeros((), dtype=torch.float64, device=params.device)
        for k, r in enumerate(blocks):
            block = kept[k] if kept else finite_rows(r)
            if block.numel():
                top = torch.maximum(top, block.abs().max())
        top = float(self.transport.allreduce(top.reshape(1), "max")[0])
        n = int(self.members.sum())
        shift = 61 - math.ceil(math.log2(max(top, 1e-300) * n + 1e-300))
        q = torch.zeros(params.shape[1:], dtype=torch.int64, device=params.device)
        for k, r in enumerate(blocks):
            block = kept[k] if kept else finite_rows(r)
            q += torch.round(torch.ldexp(block, torch.tensor(shift, device=params.device))).to(torch.int64).sum(dim=0)
        total = self.transport.allreduce(q, "sum")
        return torch.ldexp(total.double(), torch.tensor(-shift, device=params.device)) / (1 if weights is not None else n)

    def gather_params(self, params: torch.Tensor | None = None) -> np.ndarray | None:
        """All clients' parameters (n_clients, d) at the root, ``None`` elsewhere."""
        full = self.transport.gather(self.params if params is None else params)
        return None if full is None else full.detach().cpu().numpy().copy()

    def _record(self) -> None:
        start = time.perf_counter()
        per_client = self.evaluate()
        self.eval_seconds += time.perf_counter() - start
        problem = None
        if per_client is not None:
            m = self.members
            self.metrics["round"].append(self.round)
            self.metrics["loss_mean"].append(float(per_client["loss"][self.has_data].mean()))
            self.metrics["test_acc_mean"].append(float(per_client["test_acc"][m].mean()))
            self.metrics["test_acc_min"].append(float(per_client["test_acc"][m].min()))
            self.metrics["test_acc_of_mean"].append(per_client["test_acc_of_mean"])
            self.metrics["consensus_distance"].append(float(per_client["distance_to_mean"][m].mean()))
            for name in self.probes:
                self.metrics[f"{name}_mean"].append(float(per_client[name][m].mean()))
            for name in self.per_node_names:
                self.per_node[name].append(np.where(m, per_client[name], np.nan))  # NaN: not in the graph
            problem = _divergence(per_client["finite"][m], per_client["loss"][self.has_data], np.flatnonzero(m))
        problem = self.transport.bcast_object(problem)  # every process stops in the same round
        if problem:
            lr = self.config.train.lr
            raise DivergenceError(f"training diverged by round {self.round}: {problem}; lower train.lr "
                                  f"(now {lr:g}, e.g. to {lr / 10:g}) and start the run again")

    def objective_weights(self) -> np.ndarray:
        """Weight ``a_k`` of each client's objective in what training minimizes: 1 on a gossip graph
        (``sum_k f_k``); on a star, FedAvg's sample-count weights scaled so equal clients weigh 1."""
        if self.is_star:
            return self.sample_counts / self.data.counts.mean()
        return self.has_data.astype(np.float64)


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
