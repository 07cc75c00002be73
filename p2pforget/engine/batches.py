"""Batches of the clients' data: the round's minibatches, full batches with the mask of the samples still
trained on, the test split and the data's probes, as stacked ``[n_local, ...]`` tensors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import seeding
from ..tasks import Batch, as_inputs
from .part import Part

if TYPE_CHECKING:
    from .core import Engine


class Batches(Part):
    """This process's clients' data as tensors, and the batches drawn from it (``engine.batches``).

    On the CPU the inputs stay in the data's own array: a minibatch is cast to the training dtype
    as it is drawn, and a copy of all of them in that dtype (:attr:`x`) is made only if something
    asks for it (full batches), not held beside the data by every run.
    """

    def __init__(self, engine: "Engine") -> None:
        super().__init__(engine)
        d, dtype, device = engine.data, engine.dtype, engine.device
        self.raw_inputs = torch.as_tensor(d.x) if device.type == "cpu" else as_inputs(d.x, dtype, device)
        self._cast: torch.Tensor | None = None
        self.y = torch.as_tensor(d.y[engine.lo:engine.hi], device=device)
        self.x_test = as_inputs(d.x_test, dtype, device)
        self.y_test = torch.as_tensor(d.y_test, device=device)
        # Further per-sample inputs (e.g. caption tokens) travel with the samples into batches.
        self.extras = {k: torch.as_tensor(v, device=device) for k, v in d.extras.items()}
        self.extras_test = {k: torch.as_tensor(v, device=device) for k, v in d.extras_test.items()}
        # Further test sets every node is scored on at every evaluation (e.g. a backdoor's triggered inputs).
        self.probes = {name: {"x": as_inputs(x, dtype, device), "y": torch.as_tensor(y, device=device)}
                       for name, (x, y) in d.probes.items()}
        self.mask = self.y.new_empty(0)  # samples still trained on; set by refresh()

    def refresh(self) -> None:
        """Follow the engine's exclusions: the mask of the samples each local client still trains on."""
        e = self.engine
        self.mask = torch.as_tensor(e.retained[e.lo:e.hi], dtype=e.dtype, device=e.device)

    @property
    def x(self) -> torch.Tensor:
        """Every input of this process's clients ``[n_local, m, ...]`` in the training dtype (cast
        when first read, then kept)."""
        if self._cast is None:
            self._cast = as_inputs(self.raw_inputs, self.engine.dtype)
        return self._cast

    def full(self, dtype: torch.dtype | None = None) -> Batch:
        """Every sample of this process's clients, with the mask of those still trained on; in
        ``dtype`` (default: the training dtype), e.g. float64 for curvature and certificates."""
        batch = self.every_sample(self.x)
        if dtype is None or dtype == self.engine.dtype:
            return batch
        return batch | {"x": as_inputs(self.x, dtype), "mask": self.mask.to(dtype)}

    def every_sample(self, x: torch.Tensor) -> Batch:
        """Every sample of this process's clients with inputs ``x`` and the mask of those still trained on."""
        return {"x": x, "y": self.y, "mask": self.mask} | self._with_choices(self.extras, self.y.shape, None)

    def _with_choices(self, extras: dict[str, torch.Tensor], shape: tuple[int, int], key: tuple[int, int] | None) -> Batch:
        """``extras`` plus ``u``: one uniform number in [0, 1) per sample for the task's own random
        choices (e.g. which caption of an image), drawn per ``(round, step)`` ``key`` from streams
        keyed by client id (0 for full batches); nothing for data without extras."""
        if not extras:
            return {}
        e = self.engine
        if key is None:
            u = torch.zeros(shape, dtype=e.dtype, device=e.device)
        else:
            keys = seeding.uniform_keys(e.seed, np.arange(e.lo, e.hi), purpose="batch/choice", counters=key, width=shape[1])
            u = torch.as_tensor((keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53, dtype=e.dtype, device=e.device)
        return dict(extras) | {"u": u}

    def test(self, n_local: int | None = None) -> Batch:
        """The test split as a batch repeated for ``n_local`` clients (default: this process's)."""
        n_local = self.engine.hi - self.engine.lo if n_local is None else n_local
        batch = {"x": self.x_test, "y": self.y_test} | self.extras_test
        return {k: v.expand(n_local, *v.shape) for k, v in batch.items()}

    def probe(self, name: str, n_local: int) -> Batch:
        """The probe ``name`` as a batch repeated for ``n_local`` clients."""
        return {k: v.expand(n_local, *v.shape) for k, v in self.probes[name].items()}

    def minibatch(self, key: tuple[int, int]) -> Batch:
        """The minibatch of every local client for ``key = (round, step)`` (``train.batch_size``;
        0 = full batch). Sampled from streams keyed by client id, so any rank count draws the same."""
        e = self.engine
        b, m = e.config.train.batch_size, self.raw_inputs.shape[1]
        if b == 0 or b >= m:
            return self.full()
        keys = seeding.uniform_keys(e.seed, np.arange(e.lo, e.hi), purpose="batch", counters=key, width=m)
        idx, mask = seeding.sample_without_replacement(keys, e.retained[e.lo:e.hi], b)
        flat = torch.as_tensor(idx + np.arange(e.hi - e.lo)[:, None] * m, device=e.device).reshape(-1)
        n_loc = e.hi - e.lo
        shape = self.raw_inputs.shape[2:]
        x = as_inputs(torch.index_select(self.raw_inputs.reshape(n_loc * m, *shape), 0, flat).reshape(n_loc, b, *shape), e.dtype)
        y = torch.index_select(self.y.reshape(-1), 0, flat).reshape(n_loc, b)
        extras = {k: torch.index_select(v.reshape(n_loc * m, *v.shape[2:]), 0, flat).reshape(n_loc, b, *v.shape[2:])
                  for k, v in self.extras.items()}
        return ({"x": x, "y": y, "mask": torch.as_tensor(mask, dtype=e.dtype, device=e.device)}
                | self._with_choices(extras, (n_loc, b), key))

    def samples(self, mask: np.ndarray, *, held_out: bool = False) -> dict[str, np.ndarray]:
        """The samples ``mask`` picks (boolean ``[n_clients, m]`` over the training samples, or over
        the held-out ones with ``held_out``) as ``x``, ``y`` and the data's extras, in client order,
        on every process. A process holds its own clients' inputs only: the picked ones of the
        others come through the transport (every process calls this)."""
        e, d = self.engine, self.engine.data
        x, extras, y = (d.x_holdout, d.extras_holdout, d.y_holdout) if held_out else (d.x, d.extras, d.y)
        local = mask[d.clients.start:d.clients.stop]
        part = {"x": x[local]} | {k: v[local] for k, v in extras.items()}
        if len(d.clients) < e.n_clients:
            parts = e.transport.allgather_object(part)
            part = {k: np.concatenate([p[k] for p in parts]) for k in part}
        return part | {"y": y[mask]}

    def client_samples(self, client: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``idx`` of ``client``, in that order (:meth:`samples`; every process calls this)."""
        idx = np.asarray(idx, dtype=np.int64)
        mask = np.zeros(self.engine.data.y.shape, dtype=bool)
        mask[client, idx] = True
        order = np.searchsorted(np.sort(idx), idx)
        return {k: v[order] for k, v in self.samples(mask).items()}

    def inputs(self) -> np.ndarray:
        """Every client's training inputs ``[n_clients, m, ...]`` on every process (gathered from
        the processes that hold them), for what needs the whole federation's data at once (the
        certificate's objective, a run file that saves the data)."""
        e, d = self.engine, self.engine.data
        if len(d.clients) == e.n_clients:
            return d.x
        return np.concatenate(e.transport.allgather_object(d.x))
