"""Batches of the clients' data: the round's minibatches, full batches with the mask of the samples still
trained on, the test split and the data's probes, as stacked ``[n_local, ...]`` tensors.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import seeding
from ..tasks import Batch, as_inputs


class Batches:
    """The engine's batches (a part of :class:`~p2pforget.engine.Engine`)."""

    @property
    def x(self) -> torch.Tensor:
        """Every input of this process's clients ``[n_local, m, ...]`` in the training dtype (cast
        when first read, then kept)."""
        if self._cast_inputs is None:
            self._cast_inputs = as_inputs(self._inputs, self.dtype)
        return self._cast_inputs

    def full_batch(self, dtype: torch.dtype | None = None) -> Batch:
        """Every sample of this process's clients, with the mask of those still trained on; in
        ``dtype`` (default: the training dtype), e.g. float64 for curvature and certificates."""
        batch = self._every_sample(self.x)
        if dtype is None or dtype == self.dtype:
            return batch
        return batch | {"x": as_inputs(self.x, dtype), "mask": self._local_mask.to(dtype)}

    def _every_sample(self, x: torch.Tensor) -> Batch:
        """Every sample of this process's clients with inputs ``x`` and the mask of those still trained on."""
        return {"x": x, "y": self.y, "mask": self._local_mask} | self._extras_batch(self.extras, self.y.shape, None)

    def _extras_batch(self, extras: dict[str, torch.Tensor], shape: tuple[int, int], key: tuple[int, int] | None) -> Batch:
        """``extras`` plus ``u``: one uniform number in [0, 1) per sample for the task's own random
        choices (e.g. which caption of an image), drawn per ``(round, step)`` ``key`` from streams
        keyed by client id (0 for full batches); nothing for data without extras."""
        if not extras:
            return {}
        if key is None:
            u = torch.zeros(shape, dtype=self.dtype, device=self.device)
        else:
            keys = seeding.uniform_keys(self.seed, np.arange(self.lo, self.hi), purpose="batch/choice", counters=key,
                                        width=shape[1])
            u = torch.as_tensor((keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53, dtype=self.dtype, device=self.device)
        return dict(extras) | {"u": u}

    def test_batch(self, n_local: int | None = None) -> Batch:
        """The test split as a batch repeated for ``n_local`` clients (default: this process's)."""
        n_local = self.hi - self.lo if n_local is None else n_local
        batch = {"x": self.x_test, "y": self.y_test} | self.extras_test
        return {k: v.expand(n_local, *v.shape) for k, v in batch.items()}

    def batch(self, key: tuple[int, int]) -> Batch:
        """The minibatch of every local client for ``key = (round, step)`` (``train.batch_size``;
        0 = full batch). Sampled from streams keyed by client id, so any rank count draws the same."""
        b, m = self.config.train.batch_size, self._inputs.shape[1]
        if b == 0 or b >= m:
            return self.full_batch()
        keys = seeding.uniform_keys(self.seed, np.arange(self.lo, self.hi), purpose="batch", counters=key, width=m)
        idx, mask = seeding.sample_without_replacement(keys, self.retained[self.lo:self.hi], b)
        flat = torch.as_tensor(idx + np.arange(self.hi - self.lo)[:, None] * m, device=self.device).reshape(-1)
        n_loc = self.hi - self.lo
        shape = self._inputs.shape[2:]
        x = as_inputs(torch.index_select(self._inputs.reshape(n_loc * m, *shape), 0, flat).reshape(n_loc, b, *shape), self.dtype)
        y = torch.index_select(self.y.reshape(-1), 0, flat).reshape(n_loc, b)
        extras = {k: torch.index_select(v.reshape(n_loc * m, *v.shape[2:]), 0, flat).reshape(n_loc, b, *v.shape[2:])
                  for k, v in self.extras.items()}
        return ({"x": x, "y": y, "mask": torch.as_tensor(mask, dtype=self.dtype, device=self.device)}
                | self._extras_batch(extras, (n_loc, b), key))

    def samples(self, mask: np.ndarray, *, held_out: bool = False) -> dict[str, np.ndarray]:
        """The samples ``mask`` picks (boolean ``[n_clients, m]`` over the training samples, or over
        the held-out ones with ``held_out``) as ``x``, ``y`` and the data's extras, in client order,
        on every process. A process holds its own clients' inputs only: the picked ones of the
        others come through the transport (every process calls this)."""
        d = self.data
        x, extras, y = (d.x_holdout, d.extras_holdout, d.y_holdout) if held_out else (d.x, d.extras, d.y)
        local = mask[d.clients.start:d.clients.stop]
        part = {"x": x[local]} | {k: v[local] for k, v in extras.items()}
        if len(d.clients) < self.n_clients:
            parts = self.transport.allgather_object(part)
            part = {k: np.concatenate([p[k] for p in parts]) for k in part}
        return part | {"y": y[mask]}

    def client_samples(self, client: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``idx`` of ``client``, in that order (:meth:`samples`; every process calls this)."""
        idx = np.asarray(idx, dtype=np.int64)
        mask = np.zeros(self.data.y.shape, dtype=bool)
        mask[client, idx] = True
        order = np.searchsorted(np.sort(idx), idx)
        return {k: v[order] for k, v in self.samples(mask).items()}

    def inputs(self) -> np.ndarray:
        """Every client's training inputs ``[n_clients, m, ...]`` on every process (gathered from
        the processes that hold them), for what needs the whole federation's data at once (the
        certificate's objective, a run file that saves the data)."""
        d = self.data
        if len(d.clients) == self.n_clients:
            return d.x
        return np.concatenate(self.transport.allgather_object(d.x))

    def _probe_batch(self, name: str, n_local: int) -> Batch:
        return {k: v.expand(n_local, *v.shape) for k, v in self.probes[name].items()}
