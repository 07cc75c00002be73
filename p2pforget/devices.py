"""Which device a process computes on (``run.device``).

``cpu`` (default) or ``cuda``; ``auto`` takes a GPU when torch sees one. Under MPI each rank takes
GPU ``local_rank % n_gpus``, with the local rank read from the launcher's environment
(``OMPI_COMM_WORLD_LOCAL_RANK``, ``SLURM_LOCALID``, ``MPI_LOCALRANKID``, ``PMI_LOCAL_RANK``), so one
rank per GPU is the natural layout (``launch/slurm.sbatch`` with ``GPUS=...``).

Example
-------
>>> select("cpu")
device(type='cpu')
"""
from __future__ import annotations

import os

import torch

LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")


def local_rank() -> int:
    """This process's rank among the processes of its node (0 when not launched by MPI)."""
    for var in LOCAL_RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def select(kind: str) -> torch.device:
    """The device for ``run.device``; ``cuda`` without a GPU is a clear error."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if kind not in ("cuda", "auto"):
        raise ValueError(f"run.device = {kind!r} is not valid; choose one of: cpu, cuda, auto")
    if not torch.cuda.is_available():
        raise ValueError("run.device = 'cuda' but torch sees no GPU (torch.cuda.is_available() is False); "
                         "use run.device = \"cpu\" or \"auto\"")
    return torch.device("cuda", local_rank() % torch.cuda.device_count())
