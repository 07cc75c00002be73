"""Local optimizers and learning-rate schedules, vectorized over the stacked per-client rows.

An optimizer is a function ``(params, grad, state, *, lr, cfg) -> new params`` registered in
:data:`~p2pforget.registry.OPTIMIZERS` (``train.optimizer``). ``params`` and ``grad`` are a block of
rows ``[k, d]``; ``state`` maps the names the optimizer declares (``state=`` at registration) to
the matching rows of the engine's per-client state tensors, which it updates in place. The state
lives in ``Engine.optimizer_state`` (``opt/...``), so it is saved in run files, resumed, and split
over MPI ranks with its clients; every operation is row-wise, so results do not depend on how
clients are spread over processes. Updates follow ``torch.optim`` exactly (tested against it).

Example
-------
>>> import torch
>>> from p2pforget.config import TrainConfig
>>> cfg = TrainConfig(optimizer="sgd", momentum=0.9)
>>> state = {"opt/momentum": torch.zeros(1, 2, dtype=torch.float64)}
>>> one = torch.ones(1, 2, dtype=torch.float64)
>>> p = OPTIMIZERS.get("sgd")(one, one, state, lr=0.5, cfg=cfg)
>>> p.tolist(), state["opt/momentum"].tolist()
([[0.5, 0.5]], [[1.0, 1.0]])
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .registry import OPTIMIZERS

if TYPE_CHECKING:
    from .config import TrainConfig


@OPTIMIZERS.register("sgd", state=("opt/momentum",),
                     help="SGD; train.momentum > 0 adds heavy-ball momentum, train.nesterov Nesterov's")
def sgd(params: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], *, lr: float,
        cfg: "TrainConfig") -> torch.Tensor:
    """``torch.optim.SGD`` (dampening 0): ``b <- mu b + g`` (``b = g`` at the first step, as the
    buffer starts at 0), step along ``b`` or, with Nesterov, ``g + mu b``."""
    if cfg.momentum:
        buf = state["opt/momentum"]
        buf.mul_(cfg.momentum).add_(grad)
        grad = grad + cfg.momentum * buf if cfg.nesterov else buf
    return params - lr * grad


def _adam(params, grad, state, *, lr: float, cfg: "TrainConfig") -> torch.Tensor:
    b1, b2 = cfg.beta1, cfg.beta2
    t = state["opt/step"].add_(1.0)                               # [k, 1]: steps taken, per row
    m, v = state["opt/exp_avg"], state["opt/exp_avg_sq"]
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    step_size = lr / (1 - b1 ** t)
    denom = (v.sqrt() / torch.sqrt(1 - b2 ** t)).add_(cfg.eps)
    return params - step_size * m / denom


ADAM_STATE = ("opt/step", "opt/exp_avg", "opt/exp_avg_sq")


@OPTIMIZERS.register("adam", state=ADAM_STATE, help="Adam (Kingma & Ba 2015); weight decay as an L2 term in the gradient")
def adam(params, grad, state, *, lr: float, cfg: "TrainConfig") -> torch.Tensor:
    """``torch.optim.Adam`` (no AMSGrad): the objective's weight decay is part of ``grad``."""
    return _adam(params, grad, state, lr=lr, cfg=cfg)


@OPTIMIZERS.register("adamw", state=ADAM_STATE, decoupled_decay=True,
                     help="AdamW (Loshchilov & Hutter 2019): train.weight_decay decoupled from the gradient")
def adamw(params, grad, state, *, lr: float, cfg: "TrainConfig") -> torch.Tensor:
    """``torch.optim.AdamW``: Adam on the data gradient alone; :func:`apply` first decays
    ``theta <- theta (1 - lr wd)`` (for the clients that hold data)."""
    return _adam(params, grad, state, lr=lr, cfg=cfg)


def state_names(name: str) -> tuple[str, ...]:
    """The state entries optimizer ``name`` declares."""
    return tuple(OPTIMIZERS.entry(name).meta.get("state", ()))


def init_state(name: str, rows: int, dim: int, *, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Zero state for optimizer ``name``: ``[rows, d]`` per entry, ``[rows, 1]`` for a step count."""
    return {k: torch.zeros(rows, 1 if k == "opt/step" else dim, dtype=dtype, device=device) for k in state_names(name)}


def apply(params: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], *, lr: float, cfg: "TrainConfig",
          active: torch.Tensor) -> torch.Tensor:
    """One step of ``train.optimizer`` on rows ``params`` with ``grad`` (which holds the objective's
    weight decay unless the optimizer decouples it; then the rows with ``active = 1`` decay here)."""
    entry = OPTIMIZERS.entry(cfg.optimizer)
    if entry.meta.get("decoupled_decay") and cfg.weight_decay:
        params = params * (1 - lr * cfg.weight_decay * active.to(params.dtype)[:, None])
    return entry.obj(params, grad, state, lr=lr, cfg=cfg)


def decouples_decay(cfg: "TrainConfig") -> bool:
    return bool(OPTIMIZERS.entry(cfg.optimizer).meta.get("decoupled_decay"))


def is_plain_sgd(cfg: "TrainConfig") -> bool:
    """Plain SGD (no momentum): the engine's own in-place update, no state."""
    return cfg.optimizer == "sgd" and not cfg.momentum


def learning_rate(cfg: "TrainConfig", round: int, total_rounds: int) -> float:
    """``train.lr`` at ``round`` (0-based): linear warm-up over ``warmup_rounds``, then ``constant``,
    ``step`` (times ``step_gamma`` every ``step_every`` rounds) or ``cosine`` (to 0 at
    ``total_rounds``).

    >>> from p2pforget.config import TrainConfig
    >>> [round(learning_rate(TrainConfig(lr=1.0, schedule="cosine", warmup_rounds=2), r, 6), 3) for r in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if round < cfg.warmup_rounds:
        return cfg.lr * (round + 1) / cfg.warmup_rounds
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** ((round - cfg.warmup_rounds) // cfg.step_every)
    if cfg.schedule == "cosine":
        span = max(total_rounds - cfg.warmup_rounds, 1)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(round - cfg.warmup_rounds, span) / span))
    return cfg.lr
