"""The clients' arithmetic: objectives, gradients and local optimizer steps of all local clients at once
(``torch.func.vmap`` in fixed-width chunks), and the running statistics those steps update.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .. import optim
from ..tasks import Batch, fixed_width_value_and_grad, fixed_width_vmap, row_by_row
from .part import Part

if TYPE_CHECKING:
    from .core import Engine


class Compute(Part):
    """Gradients, local steps and running statistics of this process's clients (``engine.compute``).

    Clients are computed in vmap batches of exactly ``width`` rows (the last one padded): fixed
    batch shapes keep each client's arithmetic independent of how many clients a process hosts,
    which keeps results bit-identical at any number of ranks.
    """

    def __init__(self, engine: "Engine") -> None:
        super().__init__(engine)
        self.width = min(engine.config.run.vmap_width, engine.n_clients)
        self.vectorized = True  # False after vmap failed once for this model: row-by-row fallback
        self.training_rows: torch.Tensor | None = None
        self.training_width = self.width

    def refresh(self) -> None:
        """Follow the engine's exclusions. Training computes the rows of clients that hold data
        only: a node that left, or a relay, has a zero gradient, so computing (and charging) its
        row would be work nobody does. The vmap width follows the clients that train, the same at
        any rank count."""
        e = self.engine
        holding = torch.as_tensor(np.flatnonzero(e.has_data[e.lo:e.hi]), dtype=torch.long, device=e.device)
        self.training_rows = None if len(holding) == e.hi - e.lo else holding
        self.training_width = min(e.config.run.vmap_width, max(int(e.has_data.sum()), 1))

    def objective(self, flat: torch.Tensor, batch: Batch, active: torch.Tensor) -> torch.Tensor:
        """One client's objective (the task's loss plus weight decay); see :class:`~p2pforget.tasks.Task`."""
        return self.engine.task.objective(flat, batch, active)

    def gradients(self, params: torch.Tensor, batch: Batch, *, mask: torch.Tensor | None = None,
                  loss: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client gradients and objective values of stacked ``params`` on a stacked ``batch``
        (see :meth:`~p2pforget.engine.batches.Batches.full`). With a boolean ``mask`` (``[d]``,
        whole parameter tensors, e.g. ``model.mask("V")``) only those entries are differentiated
        (the rest of the gradient is 0), and back-propagation stops at the layers that do not need it.

        The clients' objectives are independent, so one backward pass of their sum through the
        vmapped forward gives every client's own gradient (the same numbers as a vmapped
        ``torch.func.grad``, with less overhead); the weight decay's gradient is added in closed
        form (:meth:`~p2pforget.tasks.Task.decay`). ``loss(flat, batch)`` replaces the task's data
        loss (e.g. an unlearning method's own)."""
        e = self.engine
        loss = e.task.data_loss if loss is None else loss
        if mask is None:
            g, values = self._value_and_grad(loss, params, batch)
        else:
            mask = mask.to(params.device)
            idx = torch.nonzero(mask).squeeze(1)

            def partial(sub, frozen, b):
                return loss(e.model.compose(frozen, sub, mask), b)

            g_sub, values = self._value_and_grad(partial, params[:, idx], params.detach(), batch)
            g = torch.zeros_like(params)
            g[:, idx] = g_sub
        if e.task.weight_decay:
            value, grad = e.task.decay(params.detach(), e.active)
            values = values + value
            g = g + (grad if mask is None else grad * mask.to(grad.dtype))
        return g, values

    def _value_and_grad(self, fn: Callable, params: torch.Tensor, *args, update=None, width: int | None = None):
        width = self.width if width is None else width
        if self.vectorized:
            try:
                return fixed_width_value_and_grad(fn, width, params, *args, update=update)
            except (RuntimeError, NotImplementedError) as e:
                return self._unbatched(e, fixed_width_value_and_grad, fn, width, params, *args, loop=True,
                                       update=update)
        return fixed_width_value_and_grad(fn, width, params, *args, loop=True, update=update)

    def training_gradients(self, params: torch.Tensor, batch: Batch, *, update=None, loss: Callable | None = None):
        """Like :meth:`gradients` without a mask (data loss only: the caller adds the weight decay),
        for a training step: only the rows of clients that hold data are computed; the others'
        gradients are zero, as their objective is. With ``update``, the full gradient is handed to
        ``update(slice(0, n_local), g)`` and the values are returned. ``loss`` as in :meth:`gradients`."""
        rows = self.training_rows
        loss = self.engine.task.data_loss if loss is None else loss
        if rows is None:
            return self._value_and_grad(loss, params, batch, update=update, width=self.training_width)
        n_loc = params.shape[0]
        sub = {k: v[rows] for k, v in batch.items()}
        g = torch.zeros_like(params)
        values = torch.zeros(n_loc, dtype=params.dtype, device=params.device)
        if len(rows):
            def collect(part: slice, grad: torch.Tensor) -> None:
                g[rows[part]] = grad

            values[rows] = self._value_and_grad(loss, params[rows], sub, update=collect,
                                                width=self.training_width).to(values.dtype)
        if update is not None:
            update(slice(0, n_loc), g)
            return values
        return g, values

    def _unbatched(self, error: Exception, compute: Callable, *args, **kwargs):
        """``vmap`` failed with ``error``: ``compute(*args, **kwargs)`` clients one by one instead
        and stay row by row from now on, reported once. vmap's own errors do not always say so
        (torch 2.11 rejects a batched attention mask as "attn_bias: wrong shape"), so any error is
        retried; one that the row-by-row computation raises too is the model's and propagates."""
        out = compute(*args, **kwargs)
        self.vectorized = False
        warnings.warn(f"model.kind = {self.engine.config.model.kind!r} cannot be vectorized by torch.func.vmap "
                      f"({' '.join(str(error).split())[:160]}); computing clients one by one (slower)", stacklevel=3)
        return out

    def per_client(self, fn: Callable, *args) -> torch.Tensor:
        """``fn(*row_args)`` for every local client, vmapped in the engine's fixed-width chunks
        (``run.vmap_width``); row by row for a model that ``vmap`` cannot batch, reported once."""
        if self.vectorized:
            try:
                return fixed_width_vmap(fn, self.width, *args)
            except (RuntimeError, NotImplementedError) as e:
                return self._unbatched(e, row_by_row, fn, *args)
        return row_by_row(fn, *args)

    def local_steps(self, params: torch.Tensor, *, grad_mask: torch.Tensor | None = None,
                    key_round: int | None = None, loss: Callable | None = None) -> torch.Tensor:
        """``train.local_steps`` steps of ``train.optimizer`` (plain SGD by default) at the round's
        learning rate (``train.lr`` and its schedule) of every local client from ``params``; the
        optimizer's state (momentum, Adam moments) is kept per client in ``engine.optimizer_state``.

        ``grad_mask`` (boolean ``[d]``) trains only those parameters (the others are frozen and not
        differentiated); batches are keyed by ``(key_round, step)`` (default: the current round);
        ``loss(flat, batch)`` replaces the task's data loss (default).
        """
        e = self.engine
        cfg, task = e.config.train, e.task
        key_round = e.round if key_round is None else key_round
        grad_mask = None if grad_mask is None else grad_mask.to(params.device)
        lr = optim.learning_rate(cfg, key_round, e.config.run.rounds)
        plain = optim.is_plain_sgd(cfg)
        decay = task.weight_decay and not optim.decouples_decay(cfg)
        if not plain and not all(k in e.optimizer_state for k in optim.state_names(cfg.optimizer)):
            e.optimizer_state |= optim.init_state(cfg.optimizer, params.shape[0], params.shape[1], dtype=e.dtype,
                                                  device=e.device)
        state = {k: v for k, v in e.optimizer_state.items() if k.startswith("opt/")}

        def update(rows: slice, old: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
            if plain:
                torch.sub(old, g.mul_(lr), out=out)
            else:
                out.copy_(optim.apply(old, g, {k: v[rows] for k, v in state.items()}, lr=lr, cfg=cfg,
                                      active=e.active[rows]))

        for s in range(cfg.local_steps):
            batch = e.batches.minibatch((key_round, s))
            if e.model.buffer_dim:
                self.update_buffers(params, batch)
            if grad_mask is not None:
                g, _ = self.gradients(params, batch, mask=grad_mask, loss=loss)
                if not decay and task.weight_decay:  # gradients() added it: decoupled instead
                    g = g - task.decay(params.detach(), e.active)[1] * grad_mask.to(g.dtype)
                for hook in e.hooks.values():
                    extra = hook.gradient(params.detach(), slice(0, params.shape[0]))
                    if extra is not None:
                        g = g + extra * grad_mask.to(g.dtype)
                new = torch.empty_like(params)
                update(slice(0, params.shape[0]), params.detach(), g, new)
                params = torch.where(grad_mask, new, params) if not plain else new
                continue
            # The step is applied batch by batch of clients as their gradients come out of the
            # backward pass: the same numbers as `params - lr * gradients(...)`, without a full
            # gradient tensor.
            new = torch.empty_like(params)

            def step(rows: slice, g: torch.Tensor, old: torch.Tensor = params) -> None:
                if decay:  # g is this step's own gradient buffer, and new[rows] is free until the update
                    g = g.add_(task.decay_gradient(old[rows].detach(), e.active[rows], out=new[rows]))
                for hook in e.hooks.values():
                    extra = hook.gradient(old[rows].detach(), rows)
                    if extra is not None:
                        g = g + extra
                update(rows, old[rows].detach(), g, new[rows])

            self.training_gradients(params, batch, update=step, loss=loss)
            params = new
        return params

    def update_buffers(self, params: torch.Tensor, batch: Batch) -> None:
        """Each training client's running statistics after the forward of its ``batch`` at
        ``params`` (the update one ``module.train()`` step makes). Batch statistics are taken over
        the whole batch, so a batch must hold no padding."""
        e = self.engine
        active = e.active.bool()
        short = active & (batch["mask"] < 1).any(dim=1)
        if bool(short.any()):
            j = e.lo + int(torch.nonzero(short)[0, 0])
            raise ValueError(f"model.kind = {e.config.model.kind!r} keeps running statistics (BatchNorm), which a batch "
                             f"computes over all its samples, but client {j} has fewer samples than its batch "
                             f"({int(batch['mask'].shape[1])}); set train.batch_size to at most the smallest client's "
                             "sample count, or use a model without running statistics (e.g. GroupNorm)")
        extras = {k: v for k, v in batch.items() if k not in ("y", "mask", "u")}
        fresh = self.per_client(lambda p, b, x: e.model.updated_buffers(p, b, x), params.detach(), e.buffers, extras["x"])
        e.buffers = torch.where(active[:, None], fresh, e.buffers)

    def with_buffers(self, params: torch.Tensor, buffers: torch.Tensor | None = None) -> torch.Tensor:
        """Stacked local ``params`` followed by running statistics (default: the engine's), the
        vectors a model that keeps statistics is evaluated at (``module.eval()``); ``params`` as
        they are for a model without any."""
        e = self.engine
        if not e.model.buffer_dim or params.shape[-1] != e.dim:
            return params
        return torch.cat([params, (e.buffers if buffers is None else buffers).to(params)], dim=-1)
