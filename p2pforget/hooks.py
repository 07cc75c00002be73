"""Engine hooks: what an unlearning method leaves installed on an engine, acting in every later
round (e.g. EASE's Forget Lock, :class:`p2pforget.subspace.ForgetLock`).

A hook is registered in :data:`~p2pforget.registry.HOOKS` under its ``name`` (so a checkpoint can
restore it) and installed with ``engine.hooks[name] = hook``. The engine calls it at three points
and knows nothing else of it:

- ``gradient(params, rows)``: a term added to the gradient of the local steps of the local
  clients ``rows`` at ``params`` (``None``: nothing);
- ``after_round(before, after)``: the models a round ends with, given those it started from and
  those the round rule produced;
- ``state()`` / ``from_state(rows, shared, ...)``: its checkpoint, arrays with a row per local
  client (gathered over processes) and arrays shared by all; ``fork()``: an independent copy.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class Hook(Protocol):
    name: str

    def gradient(self, params: torch.Tensor, rows: slice) -> torch.Tensor | None:
        ...

    def after_round(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        ...

    def fork(self) -> "Hook":
        ...

    @classmethod
    def from_state(cls, rows: dict[str, np.ndarray], shared: dict[str, np.ndarray], *, dtype: torch.dtype,
                   device: Any) -> "Hook":
        ...
