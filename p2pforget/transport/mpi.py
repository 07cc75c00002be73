"""Clients spread over MPI ranks (the only module that imports mpi4py).

Rank r hosts the contiguous block of client ids :func:`~p2pforget.transport.block` gives it.
Edges between clients of the same rank need no communication; for edges across ranks a
distributed-graph communicator (``Create_dist_graph_adjacent``) connects exactly the ranks that
host neighbouring clients, and one ``Neighbor_alltoallv`` on contiguous buffers moves the rows.
The root (rank 0) gathers rows for metrics and files and, on a star, hosts the hub.

Run with ``mpirun -n 4 python -m p2pforget run exp.toml``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import Halo, Transport, block

try:
    from mpi4py import MPI
except ImportError as e:  # pragma: no cover - exercised only without the mpi extra
    raise ImportError("the MPI transport needs mpi4py and an MPI library: pip install -e '.[mpi]'") from e


class MPITransport(Transport):
    """Transport over an MPI communicator (default ``COMM_WORLD``).

    Raises ``ValueError`` if there are more ranks than clients.
    """

    def __init__(self, *, n_clients: int, comm: "MPI.Comm | None" = None) -> None:
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.n_clients = n_clients
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        block(n_clients, self.size, self.rank)  # raises when size > n_clients (printed by the root only)
        blocks = [block(n_clients, self.size, r) for r in range(self.size)]
        self._sizes = np.array([hi - lo for lo, hi in blocks])
        self._owner = np.repeat(np.arange(self.size), self._sizes)
        self.comm_seconds = 0.0  # wall time inside MPI calls
        self.comm_bytes = 0      # bytes this rank sent to other ranks

    def neighbourhood(self, neighbours: dict[int, list[int]]) -> Halo:
        lo, hi = self.block
        need: dict[int, set[int]] = {}
        send: dict[int, set[int]] = {}
        for i in range(lo, hi):
            for j in neighbours[i]:
                r = int(self._owner[j])
                if r != self.rank:
                    need.setdefault(r, set()).add(j)
                    send.setdefault(r, set()).add(i)
        peers = sorted(need)
        if sorted(send) != peers:
            raise ValueError("the gossip graph must be undirected (every neighbour relation symmetric)")
        graph_comm = self.comm.Create_dist_graph_adjacent(peers, peers, reorder=False)
        return _MPIHalo(self, graph_comm, send_rows=[np.array(sorted(send[r])) - lo for r in peers],
                        recv_ids=[sorted(need[r]) for r in peers])

    def gather(self, rows: torch.Tensor) -> torch.Tensor | None:
        local = np.ascontiguousarray(rows.detach().cpu().numpy())  # device tensors go through host buffers
        tail = local.shape[1:]
        per_row = int(np.prod(tail, dtype=np.int64))
        counts = [int(s) * per_row for s in self._sizes]
        full = np.empty((self.n_clients, *tail), dtype=local.dtype) if self.rank == 0 else None
        start = time.perf_counter()
        self.comm.Gatherv(local, [full, (counts, _displs(counts))] if self.rank == 0 else None, root=0)
        self.comm_seconds += time.perf_counter() - start
        self.comm_bytes += local.nbytes if self.rank else 0
        return None if full is None else torch.from_numpy(full).to(rows.device)

    def broadcast(self, value: torch.Tensor | None, *, like: torch.Tensor) -> torch.Tensor:
        buf = np.ascontiguousarray(value.detach().cpu().numpy()) if self.rank == 0 else \
            np.empty(like.shape, torch.empty(0, dtype=like.dtype).numpy().dtype)
        start = time.perf_counter()
        self.comm.Bcast(buf, root=0)
        self.comm_seconds += time.perf_counter() - start
        self.comm_bytes += buf.nbytes * (self.size - 1) if self.rank == 0 else 0
        return torch.from_numpy(buf).to(like.device)

    def bcast_object(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather_object(self, obj) -> list:
        return self.comm.allgather(obj)

    def allreduce(self, value: torch.Tensor, op: str = "sum") -> torch.Tensor:
        local = np.ascontiguousarray(value.detach().cpu().numpy())
        out = np.empty_like(local)
        start = time.perf_counter()
        self.comm.Allreduce(local, out, op={"sum": MPI.SUM, "max": MPI.MAX}[op])
        self.comm_seconds += time.perf_counter() - start
        return torch.from_numpy(out).to(value.device)



def _displs(counts: list[int]) -> list[int]:
    return [0, *np.cumsum(counts)[:-1].tolist()] if counts else []



class _MPIHalo(Halo):
    """One ``Neighbor_alltoallv`` on a distributed-graph communicator linking the ranks that host
    neighbouring clients. Rows arrive grouped by peer rank, each group in increasing client id."""

    def __init__(self, transport: MPITransport, graph_comm, *, send_rows: list[np.ndarray], recv_ids: list[list[int]]) -> None:
        self.transport = transport
        self.graph_comm = graph_comm
        self.send_rows = send_rows
        self.recv_counts = [len(ids) for ids in recv_ids]
        self.ids = [j for ids in recv_ids for j in ids]

    def exchange(self, rows: torch.Tensor) -> torch.Tensor:
        d = rows.shape[1]
        local = rows.detach().cpu().numpy()
        send = np.ascontiguousarray(np.concatenate([local[idx] for idx in self.send_rows])) if self.send_rows \
            else np.empty((0, d), dtype=local.dtype)
        recv = np.empty((sum(self.recv_counts), d), dtype=local.dtype)
        scounts = [len(idx) * d for idx in self.send_rows]
        rcounts = [c * d for c in self.recv_counts]
        start = time.perf_counter()
        self.graph_comm.Neighbor_alltoallv([send, (scounts, _displs(scounts))], [recv, (rcounts, _displs(rcounts))])
        self.transport.comm_seconds += time.perf_counter() - start
        self.transport.comm_bytes += send.nbytes
        return torch.from_numpy(recv).to(rows.device)
