"""The influence ledger: how much of each client's updates sits in each node's model.

With adapt-then-combine gossip ``x^{t+1} = W_t (x^t - eta g^t)`` the model of node i after T
rounds is ``x_i^T = sum_j Phi(T,0)_ij x_j^0 - eta sum_{k<T} sum_j Phi(T,k)_ij g_j^k`` with
``Phi(T,k) = W_{T-1} ... W_k``. The ledger row of node i is ``C_i^T = sum_{k<T} Phi(T,k)_{i,:}``,
kept by the same gossip as the parameters: ``C^{t+1} = W_t (C^t + I)``. Each node carries its own
row, so the ledger is distributed exactly like the models (:meth:`p2pforget.Engine.step`).

What it means per algorithm:

- **DSGD** (adapt-then-combine): ``C_ij`` is exactly the total weight with which client j's local
  gradient steps enter node i's model (every local step of a round shares the round's weight).
  Rows sum to the number of rounds; for a doubly-stochastic ``W`` so do columns, so
  ``share_ij = C_ij / T`` averages to ``1/n`` over nodes, and it tends to ``1/n`` at every node at
  a rate set by the spectral gap.
- **Gradient tracking**: the same recursion is recorded, but there it measures how far mixing has
  spread client j's information to node i, not a coefficient of the model: the tracker carries
  differences of past gradients, and at convergence every node holds the minimizer of
  ``sum_j f_j``, in which every client has the same weight. The certified correction therefore
  uses the uniform weight ``1/n`` for gradient tracking.
- **Star (FedAvg)**: ``W = 1 w^T`` with ``w`` the sample-count weights, so every row is
  ``sum_t w_t``: the global model weighs client j by its share of the samples.

``[ledger] kind = "sparse"`` keeps each node's ``keep`` largest entries (:class:`SparseRows`,
:func:`sparse_mix`) and adds the mass of every entry it cuts to the row's ``dropped``. Mixing
conserves mass, so each kept entry is a lower bound of the full ledger's and the errors of a row
sum to its ``dropped``: any share read from a row is low by at most ``dropped / total`` (an
entry that is not kept reads as 0). With ``keep >= n`` the sparse ledger equals the full one.

Example
-------
>>> import numpy as np
>>> W = np.array([[.5, .5], [.5, .5]])
>>> influence([W, W, W])
array([[1.5, 1.5],
       [1.5, 1.5]])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


def influence(mixings: Sequence[np.ndarray]) -> np.ndarray:
    """``C^T = sum_{k<T} W_{T-1} ... W_k`` for the mixing matrices of rounds ``0..T-1``
    (computed by the recursion ``C <- W_t (C + I)``)."""
    n = mixings[0].shape[0]
    C = np.zeros((n, n))
    for W in mixings:
        C = W @ (C + np.eye(n))
    return C


def shares(C: np.ndarray) -> np.ndarray:
    """Row-normalized ledger: ``share_ij`` is the fraction of node i's accumulated updates that came
    from client j (rows sum to 1)."""
    total = C.sum(axis=1, keepdims=True)
    return np.divide(C, total, out=np.zeros_like(C), where=total > 0)


def share_history(mixings: Sequence[np.ndarray], client: int) -> np.ndarray:
    """``(T, n)``: the share of ``client``'s influence at every node after each round."""
    n = mixings[0].shape[0]
    C = np.zeros((n, n))
    out = []
    for W in mixings:
        C = W @ (C + np.eye(n))
        out.append(shares(C)[:, client])
    return np.array(out)


@dataclass
class SparseRows:
    """Ledger rows that keep only their ``keep`` largest entries: ``index`` (-1 on empty slots),
    ``value`` (0 there) and ``dropped``, the mass of every entry cut so far (each row's
    ``value.sum() + dropped`` equals its full total)."""

    index: torch.Tensor    # [rows, keep] int64
    value: torch.Tensor    # [rows, keep] float64
    dropped: torch.Tensor  # [rows] float64

    @classmethod
    def empty(cls, rows: int, keep: int, device=None) -> "SparseRows":
        return cls(index=torch.full((rows, keep), -1, dtype=torch.int64, device=device),
                   value=torch.zeros(rows, keep, dtype=torch.float64, device=device),
                   dropped=torch.zeros(rows, dtype=torch.float64, device=device))

    def pack(self, own: torch.Tensor) -> torch.Tensor:
        """``C + I`` as one float64 tensor ``[rows, 2 (keep + 1) + 1]`` (index, value, dropped) to
        send to neighbours; ``own`` holds each row's client id (indices are exact in float64)."""
        index = torch.cat([self.index, own[:, None]], dim=1).double()
        value = torch.cat([self.value, torch.ones_like(self.value[:, :1])], dim=1)
        return torch.cat([index, value, self.dropped[:, None]], dim=1)

    def shares(self, clients: list[int]) -> torch.Tensor:
        """``[rows, len(clients)]``: each client's share of the row's total (0 where it was cut,
        so a share is low by at most ``dropped / total``)."""
        total = self.value.sum(dim=1) + self.dropped
        cols = torch.stack([(self.value * (self.index == j)).sum(dim=1) for j in clients], dim=1)
        return torch.where(total[:, None] > 0, cols / total.clamp_min(1e-300)[:, None], torch.zeros_like(cols))

    def dense(self, n: int) -> torch.Tensor:
        """The kept entries as a dense ``[rows, n]`` tensor (for checks on small graphs)."""
        out = torch.zeros(self.index.shape[0], n + 1, dtype=torch.float64, device=self.index.device)
        out.scatter_add_(1, torch.where(self.index < 0, n, self.index), self.value)
        return out[:, :n]


def sparse_mix(packed: torch.Tensor, slot_rows: torch.Tensor, slot_weight: torch.Tensor, *, keep: int, n: int) -> SparseRows:
    """One ledger step ``C_i <- sum_s w_is (C_{j_s} + e_{j_s})`` for sparse rows, keeping the
    ``keep`` largest entries of each new row and adding everything cut to ``dropped``.

    ``packed`` holds the :meth:`SparseRows.pack` rows of every node the output needs;
    ``slot_rows[r, s]`` is the packed row of row r's s-th neighbour and ``slot_weight[r, s]`` its
    weight (0 on padding slots). Each output row depends only on its own neighbours, in slot order.
    """
    k1 = (packed.shape[1] - 1) // 2
    g = packed[slot_rows]                                     # [rows, slots, 2 k1 + 1]
    w = slot_weight.to(torch.float64)
    index = g[..., :k1].long().reshape(len(slot_rows), -1)
    value = (g[..., k1:2 * k1] * w[..., None]).reshape(len(slot_rows), -1)
    return merge(index, value, (g[..., -1] * w).sum(dim=1), keep=keep, n=n)


def merge(index: torch.Tensor, value: torch.Tensor, dropped: torch.Tensor, *, keep: int, n: int) -> SparseRows:
    """Sum the entries of each row that share a client id (``index`` in ``0..n-1``; -1 or a 0
    value = empty), keep the ``keep`` largest and add the rest to ``dropped``."""
    index = torch.where((index < 0) | (value == 0), n, index)  # empty slots sort last, as one group
    order = torch.argsort(index, dim=1, stable=True)
    index, value = index.gather(1, order), value.gather(1, order)
    start = torch.ones_like(index, dtype=torch.bool)
    start[:, 1:] = index[:, 1:] != index[:, :-1]
    group = start.long().cumsum(dim=1) - 1
    summed = torch.zeros_like(value).scatter_add_(1, group, value)
    ids = torch.full_like(index, n).scatter_(1, group, index)
    summed = torch.where(ids >= n, torch.zeros_like(summed), summed)
    k = min(keep, summed.shape[1])
    top = summed.topk(k, dim=1)
    chosen = torch.zeros_like(summed, dtype=torch.bool).scatter_(1, top.indices, True)
    cut = summed.masked_fill(chosen, 0.0).sum(dim=1)
    out = SparseRows.empty(index.shape[0], keep, device=index.device)
    out.index[:, :k] = torch.where(top.values > 0, ids.gather(1, top.indices), torch.full_like(top.indices, -1))
    out.value[:, :k] = top.values
    out.dropped = dropped + cut
    return out


def fedavg_step(C: "torch.Tensor | SparseRows", w: torch.Tensor, *, keep: int = 0) -> "torch.Tensor | SparseRows":
    """One FedAvg round of the ledger rows ``C`` (every row the same, as on a star): its matrix is
    ``1 w^T``, so ``W (C + I) = C + 1 w^T`` with ``w`` the normalized FedAvg weights; for
    :class:`SparseRows`, ``w`` is merged into one row (keeping ``keep`` entries), then copied.

    >>> fedavg_step(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)).tolist()
    [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]
    """
    if not isinstance(C, SparseRows):
        return C + w
    n, rows = len(w), C.index.shape[0]
    ids = torch.arange(n, device=C.index.device)
    row = merge(torch.cat([C.index[0], ids])[None], torch.cat([C.value[0], w])[None], C.dropped[:1], keep=keep, n=n)
    return SparseRows(index=row.index.expand(rows, -1).clone(), value=row.value.expand(rows, -1).clone(),
                      dropped=row.dropped.expand(rows).clone())


class Ledger:
    """This process's ledger rows ``C`` (``engine.ledger``): a dense ``[n_local, n]`` float64
    tensor (``kind = "full"``) or :class:`SparseRows` (``"sparse"``), one row per local node,
    kept by the engine after every round with the matrix the round mixed with.

    >>> ledger = Ledger.empty("full", lo=0, hi=2, n=2, keep=0)
    >>> ledger.shares([0]).tolist()
    [[0.0], [0.0]]
    """

    def __init__(self, C: "torch.Tensor | SparseRows", *, lo: int, n: int, keep: int) -> None:
        self.C, self.lo, self.n, self.keep = C, lo, n, keep

    @classmethod
    def empty(cls, kind: str, *, lo: int, hi: int, n: int, keep: int, device=None) -> "Ledger | None":
        """A zero ledger of ``kind`` for the nodes ``lo..hi-1`` of ``n`` (``None`` for ``"off"``)."""
        if kind == "off":
            return None
        C = (SparseRows.empty(hi - lo, keep, device=device) if kind == "sparse"
             else torch.zeros(hi - lo, n, dtype=torch.float64, device=device))
        return cls(C, lo=lo, n=n, keep=keep)

    def shares(self, clients: list[int]) -> torch.Tensor:
        """``[n_local, len(clients)]``: the share of each client's updates in each local node's model."""
        if isinstance(self.C, SparseRows):
            return self.C.shares(clients)
        return torch.as_tensor(shares(self.C.cpu().numpy())[:, clients], device=self.C.device)

    def step(self, W, network) -> None:
        """``C <- W (C + I)`` with the matrix a round mixed with: ``W`` through ``network``'s
        exchange (:class:`~p2pforget.engine.network.Network`), or on a star (``W`` is ``None``)
        FedAvg's ``1 w^T`` in closed form (:func:`fedavg_step`). For push-sum ``W`` is the
        column-stochastic push matrix: the de-biased model divides a row by its weight, which
        leaves the row's shares as they are."""
        if W is None:
            device = self.C.index.device if isinstance(self.C, SparseRows) else self.C.device
            self.C = fedavg_step(self.C, torch.as_tensor(network.fedavg_weights, device=device), keep=self.keep)
        elif isinstance(self.C, SparseRows):
            rows = self.C.index.shape[0]
            packed = self.C.pack(torch.arange(self.lo, self.lo + rows, device=self.C.index.device))
            pos, weight = network.mixing_rows(W)
            self.C = sparse_mix(torch.cat([packed, network.halo.exchange(packed)]), pos, weight, keep=self.keep, n=self.n)
        else:
            # C + I in place (the ledger's own tensor: copies and checkpoints take their own), then the mix
            local = torch.arange(self.C.shape[0], device=self.C.device)
            self.C[local, local + self.lo] += 1.0
            self.C = network.mix(self.C, W)

    def copy(self) -> "Ledger":
        C = self.C
        C = (SparseRows(index=C.index.clone(), value=C.value.clone(), dropped=C.dropped.clone())
             if isinstance(C, SparseRows) else C.clone())
        return Ledger(C, lo=self.lo, n=self.n, keep=self.keep)

    def arrays(self) -> dict[str, torch.Tensor]:
        """The rows as checkpoint arrays (``ledger``, or ``ledger_index`` / ``ledger_value`` / ``ledger_dropped``)."""
        if isinstance(self.C, SparseRows):
            return {"ledger_index": self.C.index, "ledger_value": self.C.value, "ledger_dropped": self.C.dropped}
        return {"ledger": self.C}

    def load(self, state: dict[str, np.ndarray], rows: slice) -> None:
        """Take this process's ``rows`` of checkpoint arrays (:meth:`arrays`, gathered); a
        checkpoint without the ledger leaves it at zero."""
        if isinstance(self.C, SparseRows) and "ledger_index" in state:
            device = self.C.index.device
            self.C = SparseRows(index=torch.as_tensor(state["ledger_index"][rows], device=device).clone(),
                                value=torch.as_tensor(state["ledger_value"][rows], dtype=torch.float64, device=device).clone(),
                                dropped=torch.as_tensor(state["ledger_dropped"][rows], dtype=torch.float64, device=device).clone())
        elif not isinstance(self.C, SparseRows) and "ledger" in state:
            self.C = torch.as_tensor(state["ledger"][rows], dtype=torch.float64).to(self.C.device).clone()
