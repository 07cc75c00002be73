"""Pure math on stacked parameters: gossip mixing, weighted averaging, the star's server rule.

Gossip sums ``x_i <- sum_j W_ij x_j`` run over each row's neighbours in increasing client id,
one vectorized multiply-add per neighbour slot. The per-element operation order is therefore
fixed by the graph alone, which is what makes results bit-identical however clients are
spread over processes.

Example
-------
>>> import numpy as np, torch
>>> W = np.array([[.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
>>> rows = MixingRows.from_matrix(W, lo=0, hi=3)
>>> gossip_mix(torch.eye(3, dtype=torch.float64), rows.idx, rows.weight)[0].tolist()
[0.5, 0.5, 0.0]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.flop_counter import register_flop_formula

from . import api
from .registry import AGGREGATORS


@dataclass(frozen=True)
class MixingRows:
    """Rows ``lo..hi-1`` of a mixing matrix as padded neighbour lists (sorted by column id).

    ``idx[r, s]`` is a global client id and ``weight[r, s]`` its weight; padding slots point at
    the row's own client with weight 0.
    """

    idx: np.ndarray     # (n_rows, slots) int64, global ids
    weight: np.ndarray  # (n_rows, slots) float64

    @classmethod
    def from_matrix(cls, W, *, lo: int, hi: int) -> "MixingRows":
        """Rows ``lo..hi-1`` of ``W`` (dense, or a sparse matrix / array), vectorized over the rows."""
        import scipy.sparse as sp

        block = sp.csr_array(W[lo:hi] if sp.issparse(W) else np.asarray(W)[lo:hi], dtype=np.float64)
        block.eliminate_zeros()
        block.sort_indices()
        counts = np.diff(block.indptr)
        slots = max(int(counts.max(initial=0)), 1)
        row = np.repeat(np.arange(hi - lo), counts)
        slot = np.arange(block.nnz) - np.repeat(block.indptr[:-1], counts)
        idx = np.repeat(np.arange(lo, hi, dtype=np.int64)[:, None], slots, axis=1)
        weight = np.zeros((hi - lo, slots), dtype=np.float64)
        idx[row, slot] = block.indices
        weight[row, slot] = block.data
        return cls(idx=idx, weight=weight)


def gossip_mix(X: torch.Tensor, idx: torch.Tensor | np.ndarray, weight: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``out[r] = sum_s weight[r, s] * X[idx[r, s]]``, summed slot by slot in slot order.

    ``idx`` indexes rows of ``X`` (which holds every row the output needs). One operation for the
    FLOP counter (:mod:`p2pforget.flops`): a multiply and an add per neighbour entry.
    """
    return torch.ops.p2pforget.gossip_mix(X, torch.as_tensor(idx, device=X.device),
                                          torch.as_tensor(weight, dtype=X.dtype, device=X.device))


ROW_BLOCK = 4096
"""Rows of stacked models worked on at a time where a whole copy would be large (at 100,000
clients one copy of the models is 1.1 GB, in float64 2.2 GB): the neighbour rows gossip gathers,
the float64 and fixed-point rows of the members' mean."""


def row_blocks(n: int) -> list[slice]:
    """Consecutive slices of at most :data:`ROW_BLOCK` rows covering ``range(n)`` (one empty slice
    for ``n = 0``).

    >>> row_blocks(5000)
    [slice(0, 4096, None), slice(4096, 5000, None)]
    """
    return [slice(a, min(a + ROW_BLOCK, n)) for a in range(0, n, ROW_BLOCK)] or [slice(0, 0)]


@torch.library.custom_op("p2pforget::gossip_mix", mutates_args=())
def _gossip_mix(X: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n = len(idx)
    out = torch.empty((n,) + tuple(X.shape[1:]), dtype=X.dtype, device=X.device)
    spare = torch.empty((min(n, ROW_BLOCK),) + tuple(X.shape[1:]), dtype=X.dtype, device=X.device) if idx.shape[1] > 1 else None
    for block_rows in row_blocks(n):
        a, b = block_rows.start, block_rows.stop
        rows = torch.arange(a, b, device=X.device)

        def term(s: int, into: torch.Tensor) -> torch.Tensor:
            w = weight[a:b, s:s + 1]
            if b <= len(X) and bool((idx[a:b, s] == rows).all()):  # a slot of the rows themselves: no gather
                return torch.mul(X[a:b], w, out=into)
            return torch.index_select(X, 0, idx[a:b, s], out=into).mul_(w)

        block = term(0, out[a:b])
        for s in range(1, idx.shape[1]):
            block.add_(term(s, spare[:b - a]))  # multiply, then add (no fused multiply-add): the same bits on every process
    return out


@register_flop_formula(torch.ops.p2pforget.gossip_mix, get_raw=True)
def _gossip_mix_flops(X, idx, weight, *args, out_val=None, **kwargs) -> int:
    # the neighbour entries that carry weight: padding slots and nodes that left are not work
    # a real node would do
    entries = int(torch.count_nonzero(weight))
    return X.shape[1] * max(2 * entries - len(idx), 0)


def row_sum(X: torch.Tensor) -> torch.Tensor:
    """``sum_i x_i`` over the rows of ``X`` (for the FLOP counter: one add per number received)."""
    return torch.ops.p2pforget.row_sum(X)


@torch.library.custom_op("p2pforget::row_sum", mutates_args=())
def _row_sum(X: torch.Tensor) -> torch.Tensor:
    return X.sum(dim=0)


@register_flop_formula(torch.ops.p2pforget.row_sum)
def _row_sum_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    return max(x_shape[0] - 1, 0) * x_shape[1]


def weighted_average(X: torch.Tensor, weights: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``sum_i w_i x_i / sum_i w_i`` over the rows of ``X`` (for the FLOP counter: a multiply and
    an add per number)."""
    return torch.ops.p2pforget.weighted_average(X, torch.as_tensor(weights, dtype=X.dtype, device=X.device))


@torch.library.custom_op("p2pforget::weighted_average", mutates_args=())
def _weighted_average(X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((w / w.sum())[:, None] * X).sum(dim=0)


@register_flop_formula(torch.ops.p2pforget.weighted_average, get_raw=True)
def _weighted_average_flops(X, w, *args, out_val=None, **kwargs) -> int:
    return 2 * int(torch.count_nonzero(w)) * X.shape[1]  # rows of weight 0 (clients that left) are skipped work


@dataclass
class Uploads:
    """What a hub (or a gossip node, for its neighbourhood) receives in one round.

    ``client_params[k]`` is the model uploaded by client ``clients[k]`` after its local steps;
    ``weights[k]`` its sample count; ``forget[k]`` whether it is being forgotten (unlearning rounds).
    """

    global_params: torch.Tensor
    client_params: torch.Tensor
    weights: np.ndarray
    round: int = 0
    clients: np.ndarray | None = None
    forget: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.client_params.shape[0]
        if self.clients is None:
            self.clients = np.arange(n)
        if self.forget is None:
            self.forget = np.zeros(n, dtype=bool)

    @property
    def updates(self) -> torch.Tensor:
        """``client_params - global_params``: each client's update (``[k, d]``)."""
        return self.client_params - self.global_params


Aggregator = api.Aggregator
"""The hub's rule: turn one round's :class:`Uploads` into the next global model (:class:`p2pforget.api.Aggregator`)."""


@AGGREGATORS.register("fedavg", help="federated averaging weighted by sample counts")
class FedAvg:
    """Federated averaging weighted by sample counts (McMahan et al., AISTATS 2017)."""

    def aggregate(self, uploads: Uploads) -> torch.Tensor:
        return weighted_average(uploads.client_params, uploads.weights)


def fedavg_weights(weights: np.ndarray) -> np.ndarray:
    """``w / sum(w)``: every row of the (rank-one, dense) matrix one FedAvg round applies to the
    clients' models, ``1 (w / sum w)^T``."""
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def fedavg_matrix(weights: np.ndarray) -> np.ndarray:
    """The (n, n) matrix one FedAvg round applies to the clients' models: every row is ``w / sum(w)``
    (for small ``n``: checks and plots)."""
    w = fedavg_weights(weights)
    return np.tile(w, (len(w), 1))
