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

from pathlib import Path

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


def available_memory() -> int | None:
    """Bytes this process may still allocate: the smaller of the kernel's ``MemAvailable`` and the
    room left under a cgroup (v2) memory limit, as a batch scheduler sets one; ``None`` if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse work that needs more memory than is available, before allocating it (``what``
    describes it, ``fix`` says what to change)."""
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(f"{what} needs about {need / 2**30:.3g} GiB, more than the {have / 2**30:.3g} GiB available; "
                         f"{fix}")
