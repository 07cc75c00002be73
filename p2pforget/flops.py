"""Counting the work of a piece of code: seconds and FLOPs from one run.

FLOPs are counted with the formulas of torch's FLOP counter (matrix products, convolutions), plus
those registered next to the operations it would not see (:mod:`p2pforget.aggregate`): gossip
mixing and the hub's weighted average, two FLOPs per number received (a multiply and an add), and
the sums up a spanning tree, one. Other elementwise arithmetic (activations, the optimizers'
updates) is not counted, on either side of a comparison.

Example
-------
>>> import torch
>>> a = torch.ones(3, 4)
>>> _, seconds, flops = measured(lambda: a @ a.T)
>>> flops  # 3 x 3 outputs, each 4 multiplies and 4 adds
72.0
"""
from __future__ import annotations

import time
from typing import Any, Callable

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from . import aggregate  # noqa: F401  (registers the formulas of the mixing operations)


class Counter(TorchDispatchMode):
    """Sums the FLOPs of every operation with a formula in torch's ``flop_registry`` (the same
    formulas and total as :class:`~torch.utils.flop_counter.FlopCounterMode`, without its
    per-module breakdown, which costs as much again per operation). Counters nest: an inner one
    counts its part, the outer one everything."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        return self.total


def counter() -> Counter:
    """A FLOP counter (a context manager; ``get_total_flops()`` afterwards)."""
    return Counter()


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn()`` once under :func:`counter` and return ``(result, seconds, flops)``.

    The seconds are those of the counted run: the counter adds a fixed cost to every operation
    (about twice the plain time of a 12-client digits round), so seconds compare
    measurements taken this way with each other, not with an uncounted run.
    """
    # The counter imports torch._dynamo on its first use (about two seconds): import it before
    # the clock starts, so that whichever code is measured first is not charged for it.
    import torch._dynamo  # noqa: F401

    start = time.perf_counter()
    with counter() as count:
        result = fn()
    return result, time.perf_counter() - start, float(count.get_total_flops())
