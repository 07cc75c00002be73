"""Subspace geometry for unlearning by excision: update bases, principal angles between subspaces,
the forget-exclusive directions, and a direction-selective lock.

Pure tensor math (no engine, no I/O), used by EASE (:mod:`p2pforget.unlearn.ease`). Conventions:
a basis is a ``[d, r]`` matrix with orthonormal columns; principal angles are in radians, ascending.

- :func:`update_basis`: the top-``rank`` left singular vectors of a set of updates (one per column).
- :func:`principal_angles`: angles and principal vectors between two subspaces, from the SVD of
  ``U_f^T U_r`` (Bjorck & Golub 1973); ``cos theta_i`` are its singular values.
- :func:`split_directions`: from one SVD, the forget-exclusive directions (principal vectors of
  the forget subspace whose angle to the retained subspace exceeds a threshold: what the forgotten
  data moved the model in and the retained data did not) and the entangled ones (principal vectors
  of both sides at or below it: what both share); :func:`exclusive_directions` and
  :func:`entangled_directions` return one of the two.
- :func:`lock`: remove from an update its component along each locked direction only when that
  component points back towards the forgotten alignment (components that move away pass).
- :func:`lock_penalty`: ``(mu/2) ||B^T (theta - anchor)||^2`` and its gradient, the client-side term
  that keeps drift along the locked directions bounded.

Example
-------
>>> import torch
>>> U = torch.eye(3)[:, :1]; V = torch.eye(3)[:, 1:2]
>>> angles, _, _ = principal_angles(U, V)
>>> round(float(angles[0]), 4)  # orthogonal subspaces: pi/2
1.5708
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .registry import HOOKS


def orthonormal(basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning the columns of ``basis`` ``[d, r]`` (reduced QR)."""
    return torch.linalg.qr(basis, mode="reduced").Q


def update_basis(updates: torch.Tensor, rank: int, *, tol: float = 1e-10) -> torch.Tensor:
    """The top-``rank`` left singular vectors of ``updates`` ``[d, k]`` (one update per column),
    dropping directions whose singular value is below ``tol`` times the largest."""
    U, S, _ = torch.linalg.svd(updates, full_matrices=False)
    keep = int(min(rank, int((S > tol * S.max()).sum()) if S.numel() else 0))
    return U[:, :keep]


def principal_angles(U_f: torch.Tensor, U_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal angles (ascending) between the column spaces of the orthonormal bases ``U_f``
    ``[d, p]`` and ``U_r`` ``[d, q]``, and the principal vectors of each side ``[d, min(p, q)]``:
    with ``U_f^T U_r = Y diag(cos theta) Z^T``, they are ``U_f Y`` and ``U_r Z``."""
    Y, cos, Zt = torch.linalg.svd(U_f.T @ U_r, full_matrices=False)
    angles = torch.arccos(cos.clamp(-1.0, 1.0))
    return angles, U_f @ Y, U_r @ Zt.T


def split_directions(U_f: torch.Tensor, U_r: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The forget-exclusive and the entangled directions of two orthonormal bases, from one
    principal-angle SVD: ``(exclusive [d, s], entangled [d, t])``.

    ``exclusive`` spans the principal vectors of ``U_f`` whose angle to ``U_r`` is above
    ``threshold`` (radians), plus the part of ``U_f`` outside every principal pair (when ``U_f``
    has more columns than ``U_r``; those directions are at pi/2). ``entangled`` spans both principal
    vectors (``U_f``'s and ``U_r``'s) of every pair at or below the threshold. Removing
    ``entangled`` from an update keeps it off what the retained data also pull on and leaves every
    exclusive direction untouched: a principal vector of ``U_f`` is orthogonal to every principal
    vector of the other pairs on both sides.

    >>> e = torch.eye(3)
    >>> B, E = split_directions(e[:, :2], e[:, 1:], threshold=0.5)  # e0 is exclusive, e1 shared
    >>> B.abs().round().T.tolist(), E.abs().round().T.tolist()
    ([[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    """
    if U_r.shape[1] == 0 or U_f.shape[1] == 0:
        return U_f, U_f[:, :0]
    angles, P_f, P_r = principal_angles(U_f, U_r)
    chosen = P_f[:, angles > threshold]
    rest = U_f - P_f @ (P_f.T @ U_f)
    extra = update_basis(rest, U_f.shape[1] - P_f.shape[1]) if U_f.shape[1] > P_f.shape[1] else rest[:, :0]
    exclusive = orthonormal(torch.cat([chosen, extra], dim=1)) if chosen.shape[1] + extra.shape[1] else chosen
    close = angles <= threshold
    # A pair at angle 0 spans one direction, not two: keep what the SVD says is there.
    entangled = (update_basis(torch.cat([P_f[:, close], P_r[:, close]], dim=1), 2 * int(close.sum()))
                 if bool(close.any()) else U_f[:, :0])
    return exclusive, entangled


def exclusive_directions(U_f: torch.Tensor, U_r: torch.Tensor, threshold: float) -> torch.Tensor:
    """The forget-exclusive part of :func:`split_directions`: directions the forgotten data moved
    the model in that the retained data did not."""
    return split_directions(U_f, U_r, threshold)[0]


def entangled_directions(U_f: torch.Tensor, U_r: torch.Tensor, threshold: float) -> torch.Tensor:
    """The entangled part of :func:`split_directions`: directions the forgotten and the retained
    data share."""
    return split_directions(U_f, U_r, threshold)[1]


def projector(B: torch.Tensor) -> torch.Tensor:
    """``B B^T``, the orthogonal projector onto the span of the orthonormal columns of ``B``."""
    return B @ B.T


def lock(update: torch.Tensor, B: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """Direction-selective Forget Lock of ``update`` ``[d]`` (or ``[n, d]``, row-wise) along the
    orthonormal locked directions ``B`` ``[d, r]``: the component along ``b_i`` is removed when it
    points back towards the forgotten alignment, i.e. when ``<update, b_i> * back_i > 0``
    (``back_i = +1`` or ``-1`` gives which way along ``b_i`` leads back); the other components pass
    unchanged."""
    coeff = update @ B                                  # [..., r]
    returning = coeff * back > 0
    return update - (coeff * returning) @ B.T


def lock_penalty(theta: torch.Tensor, anchor: torch.Tensor, B: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu/2) ||B^T (theta - anchor)||^2`` and its gradient ``mu B B^T (theta - anchor)``. A constant
    push ``g`` along a locked direction is balanced at a drift of ``|<g, b>| / mu``."""
    c = (theta - anchor) @ B
    return 0.5 * mu * (c * c).sum(-1), mu * c @ B.T


@HOOKS.register("forget_lock", help="EASE's Forget Lock",
                legacy={"lock/anchor": "rows/anchor", "lock/basis": "shared/basis", "lock/back": "shared/back",
                        "lock/mu": "shared/mu"})
@dataclass
class ForgetLock:
    """Locked directions ``basis [d, r]`` (orthonormal), which way along each leads back to the
    forgotten alignment (``back [r]``, +1 or -1), each node's unlearned model ``anchor [n_local, d]``
    and the regularizer strength ``mu``. Installed on an engine as a hook
    (:mod:`p2pforget.hooks`), it applies :func:`lock` to each node's round update and
    :func:`lock_penalty`'s gradient in local steps."""

    basis: torch.Tensor
    back: torch.Tensor
    anchor: torch.Tensor
    mu: float
    name = "forget_lock"

    def penalty_gradient(self, rows: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return lock_penalty(rows, anchor, self.basis.to(rows.dtype), self.mu)[1]

    def apply(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``old + lock(new - old)``: the round's update without its returning components."""
        basis = self.basis.to(new.dtype)
        return old + lock(new - old, basis, self.back.to(new.dtype))

    def gradient(self, params: torch.Tensor, rows: slice) -> torch.Tensor:
        return self.penalty_gradient(params, self.anchor[rows])

    def after_round(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.apply(before, after)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        return ({"anchor": self.anchor}, {"basis": self.basis.cpu().numpy(), "back": self.back.cpu().numpy(),
                                          "mu": np.array(self.mu)})

    def fork(self) -> "ForgetLock":
        return dataclasses.replace(self, anchor=self.anchor.clone())

    @classmethod
    def from_state(cls, rows: dict[str, np.ndarray], shared: dict[str, np.ndarray], *, dtype: torch.dtype,
                   device: Any) -> "ForgetLock":
        return cls(basis=torch.as_tensor(shared["basis"], dtype=torch.float64, device=device),
                   back=torch.as_tensor(shared["back"], dtype=torch.float64, device=device),
                   anchor=torch.as_tensor(rows["anchor"], dtype=dtype, device=device).clone(), mu=float(shared["mu"]))
