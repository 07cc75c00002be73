"""How parameters move between the clients of different processes.

A transport knows which block of client ids ``lo..hi-1`` this process hosts. The engine asks it
for the rows of neighbouring clients hosted elsewhere (``halo``), for all rows at the root
(``gather``) and to broadcast from the root. :mod:`.local` keeps every client in one process;
:mod:`.mpi` spreads them over MPI ranks.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch


def block(n_clients: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous client ids ``[lo, hi)`` of ``rank``; the first ``n_clients % size`` ranks get one more.

    >>> [block(7, 3, r) for r in range(3)]
    [(0, 3), (3, 5), (5, 7)]
    """
    if size > n_clients:
        error = ValueError(f"{size} ranks but only {n_clients} clients; launch at most {n_clients} ranks or add clients")
        # Every rank finds the same: the command line prints it once, at the root.
        error.reported_by_root = rank != 0
        raise error
    base, extra = divmod(n_clients, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class Halo(ABC):
    """Moves this process's rows to the processes hosting their neighbours, for one graph.

    ``ids`` are the client ids of the rows :meth:`exchange` returns, in that order.
    """

    ids: list[int]

    @abstractmethod
    def exchange(self, rows: torch.Tensor) -> torch.Tensor:
        """Send this block's rows where neighbours need them; return the rows of ``ids``."""


class Transport(ABC):
    """One process's view of the clients: its block, and collective moves of stacked rows."""

    n_clients: int
    rank: int
    size: int
    comm_seconds: float = 0.0  # time spent moving rows between processes
    comm_bytes: int = 0        # bytes this process sent to others

    @property
    def block(self) -> tuple[int, int]:
        return block(self.n_clients, self.size, self.rank)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def neighbourhood(self, neighbours: dict[int, list[int]]) -> "Halo":
        """The exchange pattern of a graph, given every client's neighbours (symmetric)."""

    @abstractmethod
    def gather(self, rows: torch.Tensor) -> torch.Tensor | None:
        """All clients' rows (in client-id order) at the root, ``None`` elsewhere."""

    @abstractmethod
    def broadcast(self, value: torch.Tensor | None, *, like: torch.Tensor) -> torch.Tensor:
        """The root's ``value`` on every process (``like`` gives the shape and dtype elsewhere)."""

    def allreduce(self, value: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``value`` combined over every process (``op`` = ``"sum"`` or ``"max"``); the result is
        on every process. Used only for order-independent reductions (integer sums, maxima), so
        results never depend on how clients are placed."""
        return value

    def bcast_object(self, obj):
        """The root's Python object on every process (setup only, never in the round loop)."""
        return obj

    def allgather_object(self, obj) -> list:
        """Every process's Python object, in rank order, on every process (never in the round
        loop: e.g. the samples of a forget request that other processes hold)."""
        return [obj]


_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_LAUNCHER_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")
_LAUNCHER_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _launcher_int(names: tuple[str, ...], default: int) -> int:
    """The first of the launcher's environment variables ``names`` that holds an integer."""
    for var in names:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return default


def launched_size() -> int:
    """How many ranks the MPI launcher (mpirun/mpiexec/srun) started, read from its environment; 1 if none."""
    return _launcher_int(_LAUNCHER_SIZE_VARS, 1)


def launched_rank() -> int:
    """This process's rank in the launched job, read from the launcher's environment (known before
    MPI starts); 0 if not launched by MPI."""
    return _launcher_int(_LAUNCHER_RANK_VARS, 0)


def launched_local_rank() -> int:
    """This process's rank among the launcher's processes on its node; 0 if not launched by MPI."""
    return _launcher_int(_LAUNCHER_LOCAL_RANK_VARS, 0)


def at_launch_root(fn):
    """``fn()`` at rank 0 of the launched job, before any :class:`Transport` exists; every rank
    gets its result, or raises its ``ValueError`` (marked ``reported_by_root`` off the root)."""
    if launched_size() == 1:
        return fn()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    payload = None
    if comm.Get_rank() == 0:
        try:
            payload = fn()
        except ValueError as e:
            payload = e
    payload = comm.bcast(payload, root=0)
    if isinstance(payload, ValueError):
        if comm.Get_rank() != 0:
            payload.reported_by_root = True
        raise payload
    return payload


def make(kind: str, *, n_clients: int) -> Transport:
    """The transport for ``run.transport``: ``"local"``, ``"mpi"``, or ``"auto"`` (MPI when
    launched with more than one rank, in-process otherwise)."""
    if kind == "auto":
        kind = "mpi" if launched_size() > 1 else "local"
    if kind == "local":
        from .local import LocalTransport
        return LocalTransport(n_clients=n_clients)
    if kind == "mpi":
        try:
            from .mpi import MPITransport
        except ImportError as e:
            raise ValueError(f"run.transport = 'mpi' but {e}") from None
        transport = MPITransport(n_clients=n_clients)
        if launched_size() > transport.size:
            raise ValueError(f"the launcher started {launched_size()} processes but MPI sees {transport.size}: mpi4py's MPI "
                             "library does not match the launcher; use the mpirun of the same installation (.venv/bin/mpirun)")
        return transport
    raise ValueError(f"unknown run.transport {kind!r}; choose one of: auto, local, mpi")
