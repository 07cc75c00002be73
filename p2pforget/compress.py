"""Compression operators for communication-efficient gossip (pure tensor math).

- :func:`top_k`: keep the ``k`` entries of largest magnitude of every row (Stich et al. 2018); a
  message carries ``k`` values and ``k`` 32-bit indices.
- :func:`quantize`: QSGD's random quantization to ``s`` levels (Alistarh et al., NeurIPS 2017):
  ``Q(v)_j = ||v|| sign(v_j) xi_j / s`` with ``xi_j`` = ``floor(s |v_j| / ||v||)`` plus one with
  probability the remainder, so ``E[Q(v)] = v``; a message carries the norm and ``d`` signed levels
  of ``ceil(log2(2 s + 1))`` bits. The rounding draws come from uniform numbers the caller passes
  (keyed by client and round), so results do not depend on how clients are spread over processes.

Example
-------
>>> import torch
>>> top_k(torch.tensor([[0.1, -3.0, 2.0, 0.5]]), 2).tolist()
[[0.0, -3.0, 2.0, 0.0]]
"""
from __future__ import annotations

import math

import torch


def top_k(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Every row with all but its ``k`` largest-magnitude entries set to zero (ties: lower index first)."""
    if k >= rows.shape[1]:
        return rows.clone()
    idx = torch.topk(rows.abs(), k, dim=1, sorted=False).indices
    return torch.zeros_like(rows).scatter_(1, idx, rows.gather(1, idx))


def quantize(rows: torch.Tensor, levels: int, u: torch.Tensor) -> torch.Tensor:
    """QSGD quantization of every row to ``levels`` levels with uniform numbers ``u`` (same shape)."""
    norm = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    scaled = levels * rows.abs() / torch.where(norm > 0, norm, torch.ones_like(norm))
    low = torch.floor(scaled)
    xi = low + (u < scaled - low).to(rows.dtype)
    return norm * torch.sign(rows) * xi / levels


def top_k_bytes(k: int, itemsize: int) -> int:
    """Bytes of one top-k message: ``k`` values and ``k`` int32 indices."""
    return k * (itemsize + 4)


def quantize_bytes(dim: int, levels: int, itemsize: int) -> int:
    """Bytes of one quantized message: the norm and ``dim`` signed levels packed in bits."""
    return itemsize + math.ceil(dim * math.ceil(math.log2(2 * levels + 1)) / 8)
