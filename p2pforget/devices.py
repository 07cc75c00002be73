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

import torch

from .transport import launched_local_rank


def select(kind: str) -> torch.device:
    """The device for ``run.device``; ``cuda`` without a GPU is a clear error."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if kind not in ("cuda", "auto"):
        raise ValueError(f"run.device = {kind!r} is not valid; choose one of: cpu, cuda, auto")
    if not torch.cuda.is_available():
        raise ValueError("run.device = 'cuda' but torch sees no GPU (torch.cuda.is_available() is False); "
                         "use run.device = \"cpu\" or \"auto\"")
    return torch.device("cuda", launched_local_rank() % torch.cuda.device_count())
