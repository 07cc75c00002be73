"""Communication: the round's mixing matrix, gossip mixing through the transport, exact network sums,
the byte count of every exchange, and the influence ledger that follows the mixing.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .. import aggregate, ledger as ledger_mod, topology
from ..progress import bar as progress_bar
from ..registry import ROUNDS


class Gossip:
    """Mixing, network sums, bytes and the influence ledger (a part of :class:`~p2pforget.engine.Engine`)."""

    def _static_mixing(self) -> sp.csr_array | None:
        """The gossip graph's sparse mixing matrix (``None`` on a star: its round is FedAvg, whose
        rank-one matrix ``1 w^T`` is kept as :attr:`fedavg_weights`)."""
        if self.is_star:
            return None
        t = self.config.topology
        if t.mixing == "file" and self.members.all():
            W = topology.load_mixing(t.mixing_path, self.graph)
        else:
            # After a node leaves, a user matrix no longer fits the graph: Metropolis weights are recomputed.
            W = topology.mixing_matrix(self.graph, t.mixing)
            topology.validate_mixing(W, self.graph)
        return topology.lazy(W) if t.lazy else W

    def mixing_at(self, round: int) -> sp.csr_array | None:
        """The sparse (n, n) mixing matrix used in ``round`` (edge dropout makes it time-varying;
        ``None`` on a star)."""
        t = self.config.topology
        if t.dropout == 0 or self.is_star:
            return self.base_mixing
        if self._edges is None:
            self._edges = topology.edge_array(self.graph)
        kept = topology.kept_edges(self._edges, t.dropout, seed=self.seed, round=round)
        W = topology.mixing_from_edges(self.n_clients, kept, t.mixing)
        return topology.lazy(W) if t.lazy else W

    def mix(self, rows: torch.Tensor, W: np.ndarray | None = None) -> torch.Tensor:
        """One gossip step ``x_i <- sum_j W_ij x_j`` of stacked local ``rows`` (default ``W``: the
        current static mixing matrix); neighbours' rows come through the transport."""
        W = self.base_mixing if W is None else W
        ext = torch.cat([rows, self.halo.exchange(rows)]) if len(self.halo.ids) else rows
        idx, weight = self._mixing_rows(W)
        return aggregate.gossip_mix(ext, idx, weight)

    def round_mixing(self, W: sp.csr_array | None) -> sp.csr_array | None:
        """The matrix the round rule actually mixes with, given the graph's ``W`` for the round:
        ``W`` itself, or what the rule's registry entry derives from it (``mixing`` meta, e.g.
        push-sum's column-stochastic matrix); cached while ``W`` stays the same. The influence
        ledger follows this matrix."""
        derive = ROUNDS.entry(self.round_name).meta.get("mixing")
        if derive is None or W is None:
            return W
        if self._round_mixing_of[0] is not W:
            self._round_mixing_of = (W, derive(W, self.n_clients))
        return self._round_mixing_of[1]

    def _mixing_rows(self, W: sp.csr_array) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of ``W`` as padded neighbour lists: positions in ``[local rows,
        halo rows]`` and weights (cached: a static graph mixes with the same matrix every round)."""
        if self._rows_of[0] is not W:
            mr = aggregate.MixingRows.from_matrix(W, lo=self.lo, hi=self.hi)
            self._rows_of = (W, torch.as_tensor(self._ext_pos[mr.idx], device=self.device),
                             torch.as_tensor(mr.weight, device=self.device))
        return self._rows_of[1], self._rows_of[2]

    def neighbour_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """This process's ``rows`` followed by the rows of its clients' graph neighbours hosted
        elsewhere (through the transport), and ``pos``: client id -> row in that tensor (-1 if absent)."""
        return torch.cat([rows, self.halo.exchange(rows)]), self._ext_pos

    def neighbours(self, client: int) -> list[int]:
        """The graph neighbours of ``client`` that are still members, in increasing id."""
        return sorted(j for j in self.graph.neighbors(client) if j < self.n_clients and self.members[j])

    def network_sum(self, rows: torch.Tensor, *, tol: float = 1e-10, averaging: str = "tree",
                    progress: bool = True) -> tuple[torch.Tensor, float, int]:
        """Every node's estimate of ``sum_k rows_k`` over the nodes in the graph; returns
        ``(estimates, bytes sent, mixing rounds)``.

        ``gossip``: mix with the remaining graph's matrix until the estimates agree to a relative
        ``tol``, then scale the average by the node count. ``tree``: the exact sum up a spanning tree
        of the graph and back down (``2 (M - 1)`` messages; on a star the hub sums, ``2 M`` messages).
        """
        nodes = np.flatnonzero(self.members)
        flat = rows.reshape(rows.shape[0], -1)
        itemsize = flat.element_size()
        if self.is_star or averaging == "tree":
            full = self.transport.gather(flat)
            total = aggregate.row_sum(full[torch.as_tensor(nodes, device=full.device)]) if self.transport.is_root else None
            total = self.transport.broadcast(total, like=flat[0])
            messages = 2 * len(nodes) if self.is_star else 2 * (len(nodes) - 1)
            return total.expand_as(flat).reshape(rows.shape).clone(), float(messages * flat.shape[1] * itemsize), 1
        W = self.base_mixing
        R = topology.gossip_rounds(W, nodes, tol)
        x = flat
        for _ in progress_bar(range(R), desc="gossip sum", leave=False, show=progress and self.transport.is_root and R >= 200):
            x = self.mix(x, W)
        messages = topology.message_count(W)
        return (len(nodes) * x).reshape(rows.shape), float(R * messages * flat.shape[1] * itemsize), R

    def message_bytes(self, W: sp.csr_array | None, vectors: int, *, entries: int | None = None,
                      senders: int | None = None) -> float:
        """Bytes one exchange of ``vectors`` vectors of ``entries`` numbers (default: the model size)
        moves over ``W``'s edges (on a star: up to the hub from the clients that hold data, and back
        down to every member; ``senders``: that many clients upload instead, e.g. forgotten clients
        that still step on their data during unlearning)."""
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.is_star:
            # down to every client still in the federation, up from those that hold data: a client
            # that left sends and receives nothing
            messages = int(self.members.sum()) + (int(self.has_data.sum()) if senders is None else senders)
        else:
            messages = topology.message_count(W)
        return float(messages * vectors * (self.dim if entries is None else entries) * itemsize)

    def _communicate_buffers(self, W: sp.csr_array | None) -> float:
        """Running statistics travel with the models under the ``average`` rule: mixed with the
        round's graph matrix, or on a star the hub's FedAvg average; bytes sent."""
        if not self.model.buffer_dim or self.model.buffer_rule == "local":
            return 0.0
        if self.is_star:
            w = torch.as_tensor(self.fedavg_weights[self.lo:self.hi], dtype=torch.float64, device=self.device)
            mean = self.member_mean(self.buffers, weights=w)
            self.buffers = mean.to(self.dtype).expand_as(self.buffers).clone()
        else:
            self.buffers = self.mix(self.buffers, self.base_mixing if W is None else W)
        return self.message_bytes(W, 1, entries=self.model.buffer_dim)

    def _empty_ledger(self):
        """A zero ledger of ``[ledger] kind``: dense ``[n_local, n]`` (full), :class:`~p2pforget.ledger.SparseRows`
        (sparse) or ``None`` (off)."""
        kind, rows = self.config.ledger.kind_for(self.n_clients), self.hi - self.lo
        if kind == "off":
            return None
        if kind == "sparse":
            return ledger_mod.SparseRows.empty(rows, self.config.ledger.keep, device=self.device)
        return torch.zeros(rows, self.n_clients, dtype=torch.float64, device=self.device)

    def ledger_shares(self, clients: list[int]) -> torch.Tensor:
        """``[n_local, len(clients)]``: the share of each client's updates in each local node's
        model, from the influence ledger (see :mod:`p2pforget.ledger`)."""
        if self.ledger is None:
            raise ValueError("the influence ledger is off ([ledger] kind = \"off\"); set it to \"full\" or \"sparse\"")
        if isinstance(self.ledger, ledger_mod.SparseRows):
            return self.ledger.shares(clients)
        return torch.as_tensor(ledger_mod.shares(self.ledger.cpu().numpy())[:, clients], device=self.device)

    def _update_ledger(self, W: sp.csr_array | None) -> None:
        """``C <- W (C + I)`` with the matrix this round mixed with (on a star, FedAvg's; for push-sum
        the column-stochastic push matrix: the de-biased model divides a row by its weight, which
        leaves the row's shares as they are)."""
        if self.is_star:
            self.ledger = ledger_mod.fedavg_step(self.ledger, torch.as_tensor(self.fedavg_weights, device=self.device),
                                                 keep=self.config.ledger.keep)
            return
        if isinstance(self.ledger, ledger_mod.SparseRows):
            packed = self.ledger.pack(torch.arange(self.lo, self.hi, device=self.device))
            pos, weight = self._mixing_rows(W)
            self.ledger = ledger_mod.sparse_mix(torch.cat([packed, self.halo.exchange(packed)]), pos, weight,
                                                keep=self.config.ledger.keep, n=self.n_clients)
            return
        # C + I in place (the engine's own tensor: forks and checkpoints copy it), then the mix
        local = torch.arange(self.hi - self.lo, device=self.ledger.device)
        self.ledger[local, local + self.lo] += 1.0
        self.ledger = self.mix(self.ledger, W)

    def member_graph(self):
        """The graph of the nodes still in it (and a star's hub)."""
        return self.graph.subgraph([v for v in self.graph.nodes if v >= self.n_clients or self.members[v]])

    def topology_stats(self) -> topology.Stats:
        """Degrees, diameter and spectral gap of the graph of the nodes still in it, computed once
        per graph (a star's FedAvg round averages exactly: gap 1)."""
        if self._stats is None:
            g = self.member_graph()
            if self.is_star:
                self._stats = topology.stats(g, gap=1.0)
            else:
                ids = np.flatnonzero(self.members)
                self._stats = topology.stats(g, self.base_mixing[ids][:, ids])
        return self._stats

    def edges(self) -> np.ndarray:
        """The graph's edges as an (E, 2) array with ``u < v``."""
        return topology.edge_array(self.graph)
