"""Tasks: a model, its loss, the layout of its batches, and how it is evaluated.

A :class:`Task` is the one place a loss is defined. Training, curvature, certificates and metrics
all call it. A batch is a dict of tensors: ``x`` (inputs), ``y`` (labels), ``mask`` (1 for the
samples that count; batches are padded to fixed shapes) and anything else a model needs.

A model whose module defines ``loss_terms(batch) -> dict[str, Tensor]`` and ``loss_weights``
(a dict with the same keys) is trained on the weighted sum of its terms; any other model is a
classifier trained with the masked mean cross-entropy of its logits.

Example
-------
>>> import torch
>>> from p2pforget.config import ModelConfig
>>> from p2pforget.models import FlatModel, build
>>> task = Task(model=FlatModel(build(ModelConfig(kind="logistic"), input_shape=(4,), n_classes=3)), weight_decay=0.0)
>>> batch = {"x": torch.zeros(5, 4), "y": torch.zeros(5, dtype=torch.long), "mask": torch.ones(5)}
>>> round(float(task.data_loss(torch.zeros(task.model.dim), batch)), 4)  # log 3
1.0986
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.func import vmap

Batch = dict[str, torch.Tensor]


def as_inputs(x: Any, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
    """Inputs ``x`` as a tensor: floating-point inputs in ``dtype``; integer ones as they are
    (pixels stored as uint8, which the model decodes per batch: a dataset in float would be 4-8
    times bigger).

    >>> as_inputs([0.5], torch.float64).dtype, as_inputs(torch.zeros(2, dtype=torch.uint8), torch.float32).dtype
    (torch.float64, torch.uint8)
    """
    x = torch.as_tensor(x, device=device)
    return x.to(dtype) if x.is_floating_point() else x


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * values) / max(sum(mask), 1)``."""
    return (mask * values).sum() / mask.sum().clamp(min=1)


class Task:
    """Loss and evaluation of one model (see the module docstring).

    Parameters
    ----------
    model : FlatModel
        The model, evaluated at flat parameter vectors.
    weight_decay : float
        ``weight_decay / 2 * ||theta||^2`` is added to the objective of every client holding data.
    """

    def __init__(self, *, model, weight_decay: float) -> None:
        self.model = model
        self.weight_decay = weight_decay
        self.has_terms = hasattr(model.module, "loss_terms")

    def logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``[m, C]`` of inputs ``x`` at parameters ``flat``."""
        return self.model.forward(flat, x)

    def loss_terms(self, flat: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """The named losses of ``batch`` (unweighted)."""
        if self.has_terms:
            return self.model.call(flat, "loss_terms", batch)
        ce = F.cross_entropy(self.logits(flat, batch["x"]), batch["y"], reduction="none")
        return {"ce": masked_mean(ce, batch["mask"])}

    def score(self, flat: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The fraction the engine reports as test accuracy: the module's own ``score(batch)`` if it
        has one (e.g. retrieval R@1), else the classification accuracy of ``batch``."""
        if hasattr(self.model.module, "score"):
            return self.model.call(flat, "score", batch)
        return (self.logits(flat, batch["x"]).argmax(-1) == batch["y"]).to(batch["x"].dtype).mean()

    def with_gallery(self, flat: torch.Tensor, batches: list[Batch]) -> list[Batch]:
        """``batches`` scored against a common gallery (``gallery_x``, the same in each), each given
        the gallery's embeddings by the model ``flat`` once (a module with ``embed_gallery``);
        otherwise as they are."""
        first = next((b for b in batches if "gallery_x" in b), None)
        if first is None or not hasattr(self.model.module, "embed_gallery"):
            return batches
        embedded = self.model.call(flat, "embed_gallery", first)
        return [b | embedded if "gallery_x" in b else b for b in batches]

    def judge(self, flat: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """How a model does on a set of samples: its :meth:`score` on the set, and a per-sample
        membership score ``[m]`` (higher = looks more like training data): the module's own
        ``judge(batch)`` or ``membership(batch)`` if it has one, else the logit confidence
        ``log p_y - log(1 - p_y)`` (a monotone transform of the loss, Yeom et al. 2018), in float64."""
        if hasattr(self.model.module, "judge"):
            score, member = self.model.call(flat, "judge", batch)
            return score, member.double()
        if hasattr(self.model.module, "membership"):
            return self.score(flat, batch), self.model.call(flat, "membership", batch).double()
        logits = self.logits(flat, batch["x"]).double()
        y = batch["y"]
        z = logits.log_softmax(-1)
        true = z.gather(-1, y[:, None])[:, 0]
        rest = torch.where(F.one_hot(y, z.shape[-1]).bool(), torch.full_like(z, -torch.inf), z).logsumexp(-1)
        return (logits.argmax(-1) == y).double().mean(), true - rest

    def loss_weights(self) -> dict[str, float]:
        return dict(self.model.module.loss_weights) if self.has_terms else {"ce": 1.0}

    def data_loss(self, flat: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The weighted sum of :meth:`loss_terms` (no weight decay)."""
        terms = self.loss_terms(flat, batch)
        weights = self.loss_weights()
        total = 0.0
        for name in sorted(terms):
            total = total + weights[name] * terms[name]
        return total

    def decay(self, rows: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight-decay part of :meth:`objective` for stacked parameter ``rows``, and its
        gradient, in closed form: ``active * weight_decay/2 * ||row||^2`` and
        ``active * weight_decay * row`` (cheaper than differentiating it with the data loss)."""
        c = active.to(rows.dtype) * self.weight_decay
        return 0.5 * c * (rows * rows).sum(dim=1), c[:, None] * rows

    def decay_gradient(self, rows: torch.Tensor, active: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        """The gradient part of :meth:`decay` written into ``out`` (a training step's buffer: no
        allocation, and the loss value a step does not need is not computed); the same numbers."""
        return torch.mul(rows, (active.to(rows.dtype) * self.weight_decay)[:, None], out=out)

    def objective(self, flat: torch.Tensor, batch: Batch, active: torch.Tensor) -> torch.Tensor:
        """What a client minimizes: :meth:`data_loss` plus ``active * weight_decay/2 ||flat||^2``
        (``active`` is 0 for a client without data, which only relays). ``flat`` may also be a dict
        of named parameters (see :meth:`~p2pforget.models.FlatModel.compose`)."""
        if isinstance(flat, dict):
            square = sum((p * p).sum() for p in flat.values())
        else:
            square = (flat * flat).sum()
        return self.data_loss(flat, batch) + active * 0.5 * self.weight_decay * square


def _rows(arg: Any, sl: slice) -> Any:
    return {k: v[sl] for k, v in arg.items()} if isinstance(arg, dict) else arg[sl]


def _pad(arg: Any, width: int) -> Any:
    def one(a: torch.Tensor) -> torch.Tensor:
        m = a.shape[0]
        return a if m == width else torch.cat([a, a[-1:].expand(width - m, *a.shape[1:])])
    return {k: one(v) for k, v in arg.items()} if isinstance(arg, dict) else one(arg)


def fixed_width_vmap(fn: Callable, width: int, *args: Any):
    """``vmap(fn)(*args)`` computed in batches of exactly ``width`` rows (the last one padded).

    ``args`` are tensors or dicts of tensors (batches) sharing the leading dimension. Fixed batch
    shapes keep each row's arithmetic independent of how many rows a process holds, which keeps
    results bit-identical at any number of ranks.
    """
    first = args[0]
    n = (next(iter(first.values())) if isinstance(first, dict) else first).shape[0]
    outs = []
    for start in range(0, n, width):
        chunk = [_pad(_rows(a, slice(start, start + width)), width) for a in args]
        m = min(width, n - start)
        out = vmap(fn)(*chunk)
        outs.append(tuple(o[:m] for o in out) if isinstance(out, tuple) else out[:m])
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def row_by_row(fn: Callable, *args: Any):
    """``fn`` applied to each row of ``args`` in a Python loop, outputs stacked: the fallback for
    models whose operations ``torch.func.vmap`` cannot batch (same results as
    :func:`fixed_width_vmap`, up to floating-point rounding)."""
    first = args[0]
    n = (next(iter(first.values())) if isinstance(first, dict) else first).shape[0]
    outs = [fn(*[{k: v[i] for k, v in a.items()} if isinstance(a, dict) else a[i] for a in args]) for i in range(n)]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*outs))
    return torch.stack(outs)


def fixed_width_value_and_grad(fn: Callable, width: int, params: torch.Tensor, *args: Any, loop: bool = False,
                               update: Callable[[slice, torch.Tensor], None] | None = None):
    """Per-row gradients of ``fn(params_row, *args_row)`` w.r.t. ``params`` and the values, in
    batches of exactly ``width`` rows (the last one padded), like :func:`fixed_width_vmap`.

    The rows' values are independent, so one backward pass of their sum through the vmapped
    forward gives every row its own gradient, with less overhead than a vmapped
    ``torch.func.grad``. ``loop=True`` runs the forward row by row (models vmap cannot batch).
    With ``update``, each batch's gradient is handed to ``update(rows, grad)`` as soon as it is
    computed (e.g. an optimizer step) and only the values are returned.
    """
    n = params.shape[0]
    grads, values = [], []
    with torch.enable_grad():
        for start in range(0, n, width):
            m = min(width, n - start)
            q = _pad(params[start:start + width].detach(), width).requires_grad_(True)
            rest = [_pad(_rows(a, slice(start, start + width)), width) for a in args]
            v = row_by_row(fn, q, *rest) if loop else vmap(fn)(q, *rest)
            g, = torch.autograd.grad(v[:m].sum(), q)
            if update is not None:
                update(slice(start, start + m), g[:m])
            else:
                grads.append(g[:m])
            values.append(v[:m].detach())
    values = values[0] if len(values) == 1 else torch.cat(values)
    if update is not None:
        return values
    return (grads[0] if len(grads) == 1 else torch.cat(grads)), values
