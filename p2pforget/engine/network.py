"""Communication: the round's mixing matrix, gossip mixing through the transport, exact network sums and
means, gathering rows at the root, and the byte count of every exchange.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from .. import aggregate, topology
from ..progress import bar as progress_bar
from ..registry import ROUNDS
from .part import Part


class Network(Part):
    """Mixing, exchanges, network sums and means, and bytes of this process's clients (``engine.network``)."""

    def refresh(self) -> None:
        """Follow the engine's graph and exclusions: mixing weights, the neighbourhood exchange, caches."""
        e = self.engine
        self.base_mixing = self._static_mixing()
        self.fedavg_weights = aggregate.fedavg_weights(e.sample_counts) if e.is_star else None
        self._stats: topology.Stats | None = None
        self._edges: np.ndarray | None = None  # sorted edge array, for edge dropout
        neighbours = {i: [] if e.is_star else sorted(e.graph.neighbors(i)) for i in range(e.n_clients)}
        self.halo = e.transport.neighbourhood(neighbours)
        ext_ids = list(range(e.lo, e.hi)) + list(self.halo.ids)
        self.positions = np.full(e.n_clients, -1, dtype=np.int64)  # client id -> row in [local rows, halo rows]
        self.positions[ext_ids] = np.arange(len(ext_ids))
        self._rows_of: tuple = (None, None, None)
        self._round_mixing_of: tuple = (None, None)

    def _static_mixing(self) -> sp.csr_array | None:
        """The gossip graph's sparse mixing matrix (``None`` on a star: its round is FedAvg, whose
        rank-one matrix ``1 w^T`` is kept as :attr:`fedavg_weights`)."""
        e = self.engine
        if e.is_star:
            return None
        t = e.config.topology
        if t.mixing == "file" and e.members.all():
            W = topology.load_mixing(t.mixing_path, e.graph)
        else:
            # After a node leaves, a user matrix no longer fits the graph: Metropolis weights are recomputed.
            W = topology.mixing_matrix(e.graph, t.mixing)
            topology.validate_mixing(W, e.graph)
        return topology.lazy(W) if t.lazy else W

    def mixing_at(self, round: int) -> sp.csr_array | None:
        """The sparse (n, n) mixing matrix used in ``round`` (edge dropout makes it time-varying;
        ``None`` on a star)."""
        e = self.engine
        t = e.config.topology
        if t.dropout == 0 or e.is_star:
            return self.base_mixing
        if self._edges is None:
            self._edges = topology.edge_array(e.graph)
        kept = topology.kept_edges(self._edges, t.dropout, seed=e.seed, round=round)
        W = topology.mixing_from_edges(e.n_clients, kept, t.mixing)
        return topology.lazy(W) if t.lazy else W

    def mix(self, rows: torch.Tensor, W: np.ndarray | None = None) -> torch.Tensor:
        """One gossip step ``x_i <- sum_j W_ij x_j`` of stacked local ``rows`` (default ``W``: the
        current static mixing matrix); neighbours' rows come through the transport."""
        W = self.base_mixing if W is None else W
        ext = torch.cat([rows, self.halo.exchange(rows)]) if len(self.halo.ids) else rows
        idx, weight = self.mixing_rows(W)
        return aggregate.gossip_mix(ext, idx, weight)

    def round_mixing(self, W: sp.csr_array | None) -> sp.csr_array | None:
        """The matrix the round rule actually mixes with, given the graph's ``W`` for the round:
        ``W`` itself, or what the rule's registry entry derives from it (``mixing`` meta, e.g.
        push-sum's column-stochastic matrix); cached while ``W`` stays the same. The influence
        ledger follows this matrix."""
        derive = ROUNDS.entry(self.engine.round_name).meta.get("mixing")
        if derive is None or W is None:
            return W
        if self._round_mixing_of[0] is not W:
            self._round_mixing_of = (W, derive(W, self.engine.n_clients))
        return self._round_mixing_of[1]

    def mixing_rows(self, W: sp.csr_array) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of ``W`` as padded neighbour lists: positions in ``[local rows,
        halo rows]`` and weights (cached: a static graph mixes with the same matrix every round)."""
        if self._rows_of[0] is not W:
            e = self.engine
            mr = aggregate.MixingRows.from_matrix(W, lo=e.lo, hi=e.hi)
            self._rows_of = (W, torch.as_tensor(self.positions[mr.idx], device=e.device),
                             torch.as_tensor(mr.weight, device=e.device))
        return self._rows_of[1], self._rows_of[2]

    def neighbour_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """This process's ``rows`` followed by the rows of its clients' graph neighbours hosted
        elsewhere (through the transport), and ``pos``: client id -> row in that tensor (-1 if absent)."""
        return torch.cat([rows, self.halo.exchange(rows)]), self.positions

    def neighbours(self, client: int) -> list[int]:
        """The graph neighbours of ``client`` that are still members, in increasing id."""
        e = self.engine
        return sorted(j for j in e.graph.neighbors(client) if j < e.n_clients and e.members[j])

    def sum(self, rows: torch.Tensor, *, tol: float = 1e-10, averaging: str = "tree",
            progress: bool = True) -> tuple[torch.Tensor, float, int]:
        """Every node's estimate of ``sum_k rows_k`` over the nodes in the graph; returns
        ``(estimates, bytes sent, mixing rounds)``.

        ``gossip``: mix with the remaining graph's matrix until the estimates agree to a relative
        ``tol``, then scale the average by the node count. ``tree``: the exact sum up a spanning tree
        of the graph and back down (``2 (M - 1)`` messages; on a star the hub sums, ``2 M`` messages).
        """
        e = self.engine
        nodes = np.flatnonzero(e.members)
        flat = rows.reshape(rows.shape[0], -1)
        itemsize = flat.element_size()
        if e.is_star or averaging == "tree":
            full = e.transport.gather(flat)
            total = aggregate.row_sum(full[torch.as_tensor(nodes, device=full.device)]) if e.transport.is_root else None
            total = e.transport.broadcast(total, like=flat[0])
            messages = 2 * len(nodes) if e.is_star else 2 * (len(nodes) - 1)
            return total.expand_as(flat).reshape(rows.shape).clone(), float(messages * flat.shape[1] * itemsize), 1
        W = self.base_mixing
        R = topology.gossip_rounds(W, nodes, tol)
        x = flat
        for _ in progress_bar(range(R), desc="gossip sum", leave=False, show=progress and e.transport.is_root and R >= 200):
            x = self.mix(x, W)
        messages = topology.message_count(W)
        return (len(nodes) * x).reshape(rows.shape), float(R * messages * flat.shape[1] * itemsize), R

    def mean(self, params: torch.Tensor, *, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the member nodes' rows of ``params`` (float64, on every process), summed
        exactly in 64-bit fixed point: the result does not depend on how clients are spread over
        processes, at a resolution of about ``2^-60 * max|x| * n``. ``weights`` (this process's
        rows, summing to one over the members): the weighted sum instead."""
        e = self.engine
        keep = torch.as_tensor(e.members[e.lo:e.hi], device=params.device)

        def finite_rows(r: slice) -> torch.Tensor:
            rows = params[r].detach().double()
            if weights is not None:
                rows = rows * weights[r].to(rows)[:, None]
            rows = rows[keep[r]]
            return torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))

        # Row blocks bound the float64 and fixed-point copies (a whole one is 2.2 GB at 100,000
        # clients); integer sums are exact, so blocking changes no bit. The scale needs every
        # block's maximum first, so several blocks are converted twice; a single one is kept.
        blocks = aggregate.row_blocks(params.shape[0])
        kept = [finite_rows(blocks[0])] if len(blocks) == 1 else None
        top = torch.zeros((), dtype=torch.float64, device=params.device)
        for k, r in enumerate(blocks):
            block = kept[k] if kept else finite_rows(r)
            if block.numel():
                top = torch.maximum(top, block.abs().max())
        top = float(e.transport.allreduce(top.reshape(1), "max")[0])
        n = int(e.members.sum())
        shift = 61 - math.ceil(math.log2(max(top, 1e-300) * n + 1e-300))
        q = torch.zeros(params.shape[1:], dtype=torch.int64, device=params.device)
        for k, r in enumerate(blocks):
            block = kept[k] if kept else finite_rows(r)
            q += torch.round(torch.ldexp(block, torch.tensor(shift, device=params.device))).to(torch.int64).sum(dim=0)
        total = e.transport.allreduce(q, "sum")
        return torch.ldexp(total.double(), torch.tensor(-shift, device=params.device)) / (1 if weights is not None else n)

    def gather(self, params: torch.Tensor | None = None) -> np.ndarray | None:
        """All clients' rows ``(n_clients, ...)`` of stacked local ``params`` (default: the
        engine's models) at the root, ``None`` elsewhere."""
        full = self.engine.transport.gather(self.engine.params if params is None else params)
        return None if full is None else full.detach().cpu().numpy().copy()

    def message_bytes(self, W: sp.csr_array | None, vectors: int, *, entries: int | None = None,
                      senders: int | None = None) -> float:
        """Bytes one exchange of ``vectors`` vectors of ``entries`` numbers (default: the model size)
        moves over ``W``'s edges (on a star: up to the hub from the clients that hold data, and back
        down to every member; ``senders``: that many clients upload instead, e.g. forgotten clients
        that still step on their data during unlearning)."""
        e = self.engine
        itemsize = torch.finfo(e.dtype).bits // 8
        if e.is_star:
            # down to every client still in the federation, up from those that hold data: a client
            # that left sends and receives nothing
            messages = int(e.members.sum()) + (int(e.has_data.sum()) if senders is None else senders)
        else:
            messages = topology.message_count(W)
        return float(messages * vectors * (e.dim if entries is None else entries) * itemsize)

    def share_buffers(self, W: sp.csr_array | None) -> float:
        """Running statistics travel with the models under the ``average`` rule: mixed with the
        round's graph matrix, or on a star the hub's FedAvg average; bytes sent."""
        e = self.engine
        if not e.model.buffer_dim or e.model.buffer_rule == "local":
            return 0.0
        if e.is_star:
            w = torch.as_tensor(self.fedavg_weights[e.lo:e.hi], dtype=torch.float64, device=e.device)
            mean = self.mean(e.buffers, weights=w)
            e.buffers = mean.to(e.dtype).expand_as(e.buffers).clone()
        else:
            e.buffers = self.mix(e.buffers, self.base_mixing if W is None else W)
        return self.message_bytes(W, 1, entries=e.model.buffer_dim)

    def member_graph(self):
        """The graph of the nodes still in it (and a star's hub)."""
        e = self.engine
        return e.graph.subgraph([v for v in e.graph.nodes if v >= e.n_clients or e.members[v]])

    def stats(self) -> topology.Stats:
        """Degrees, diameter and spectral gap of the graph of the nodes still in it, computed once
        per graph (a star's FedAvg round averages exactly: gap 1)."""
        if self._stats is None:
            g = self.member_graph()
            if self.engine.is_star:
                self._stats = topology.stats(g, gap=1.0)
            else:
                ids = np.flatnonzero(self.engine.members)
                self._stats = topology.stats(g, self.base_mixing[ids][:, ids])
        return self._stats

    def edges(self) -> np.ndarray:
        """The graph's edges as an (E, 2) array with ``u < v``."""
        return topology.edge_array(self.engine.graph)
