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

Example
-------
>>> import numpy as np
>>> W = np.array([[.5, .5], [.5, .5]])
>>> influence([W, W, W])
array([[1.5, 1.5],
       [1.5, 1.5]])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
