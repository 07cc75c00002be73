"""Per-client curvature of the local objective, for all clients of a process at once.

Each function takes the engine (for its model, data masks and fixed-width vmap) and stacked
parameters ``[n_local, d]`` and returns one curvature per client:

- ``exact``: the Hessian ``[n_local, d, d]`` (``torch.func.hessian``);
- ``ggn``: the generalized Gauss-Newton ``J^T (diag p - p p^T) J`` of the cross-entropy, which for
  softmax outputs equals the Fisher information (Martens 2020, "New insights and perspectives on
  the natural gradient method"); exact for the logistic model;
- ``diag_fisher``: the diagonal of that Fisher/GGN, ``[n_local, d]``;
- ``kfac``: Kronecker-factored approximate curvature (Martens & Grosse, ICML 2015), built per client
  by ``curvlinops`` (KFACLinearOperator, type-2 Fisher) and materialized ``[n_local, d, d]``.

GGN, diagonal Fisher and K-FAC are those of the cross-entropy of the task's logits (classification
tasks). All include the weight-decay term ``weight_decay * I`` of clients that still hold data, and
are computed in the dtype of ``params`` (certified unlearning passes float64 whatever the training
dtype).
"""
from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Callable

import torch
from torch.func import hessian, jacrev


if TYPE_CHECKING:
    from ..engine import Engine

KINDS = ("exact", "ggn", "diag_fisher", "kfac")


def is_diagonal(kind: str) -> bool:
    return kind == "diag_fisher"


def _exact(engine: "Engine", params: torch.Tensor) -> torch.Tensor:
    return engine.compute.per_client(hessian(engine.compute.objective), params.detach(), engine.batches.full(params.dtype), engine.active)


def _output_curvature(engine: "Engine", flat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor):
    """Per-sample Jacobians ``J [m, C, d]`` and softmax curvature ``diag p - p p^T [m, C, C]``, masked and
    scaled by ``1 / sum(mask)``."""
    logits = engine.task.logits(flat, x)
    J = jacrev(engine.task.logits)(flat, x)  # [m, C, d]
    p = torch.softmax(logits, dim=-1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    A = A * (mask / mask.sum().clamp(min=1))[:, None, None]
    return J, A


def _ggn(engine: "Engine", params: torch.Tensor) -> torch.Tensor:
    wd = engine.config.train.weight_decay

    def one(flat, batch, active):
        J, A = _output_curvature(engine, flat, batch["x"], batch["mask"])
        G = torch.einsum("scd,sce,sef->df", J, A, J)
        return G + active * wd * torch.eye(flat.shape[0], dtype=flat.dtype, device=flat.device)

    return engine.compute.per_client(one, params.detach(), engine.batches.full(params.dtype), engine.active)


def _diag_fisher(engine: "Engine", params: torch.Tensor) -> torch.Tensor:
    wd = engine.config.train.weight_decay

    def one(flat, batch, active):
        J, A = _output_curvature(engine, flat, batch["x"], batch["mask"])
        return torch.einsum("scd,sce,sed->d", J, A, J) + active * wd

    return engine.compute.per_client(one, params.detach(), engine.batches.full(params.dtype), engine.active)


def _kfac(engine: "Engine", params: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its dependencies warn about torch.jit on import
        from curvlinops import KFACLinearOperator

    wd = engine.config.train.weight_decay
    module = copy.deepcopy(engine.model.module).to(params.dtype)  # the engine's own module stays as it is
    d = engine.dim
    out = torch.zeros(params.shape[0], d, d, dtype=params.dtype, device=params.device)
    batch = engine.batches.full(params.dtype)
    x, y, mask = batch["x"], batch["y"], batch["mask"]
    for r in range(params.shape[0]):
        keep = mask[r] > 0
        if not keep.any():
            continue
        with torch.no_grad():
            for p, v in zip(module.parameters(), torch.split(params[r].detach(), engine.model.sizes)):
                p.copy_(v.view_as(p))
        op = KFACLinearOperator(module, torch.nn.CrossEntropyLoss(), list(module.parameters()), [(x[r][keep], y[r][keep])],
                                fisher_type="type-2", check_deterministic=False)
        eye = torch.eye(d, dtype=params.dtype, device=params.device)
        out[r] = op @ eye + wd * eye
    return out


COMPUTE: dict[str, Callable[["Engine", torch.Tensor], torch.Tensor]] = {
    "exact": _exact,
    "ggn": _ggn,
    "diag_fisher": _diag_fisher,
    "kfac": _kfac,
}


def local_curvature(engine: "Engine", params: torch.Tensor, kind: str) -> torch.Tensor:
    """Curvature of each local client's objective at its own parameters (see module docstring)."""
    if kind not in COMPUTE:
        raise ValueError(f"unknown unlearn.curvature {kind!r}; choose one of: {', '.join(KINDS)}")
    return COMPUTE[kind](engine, params)
