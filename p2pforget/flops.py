"""Counting the work of a piece of code: seconds and FLOPs from one run.

FLOPs are torch's :class:`~torch.utils.flop_counter.FlopCounterMode` count: matrix products and
convolutions, plus the formulas registered next to the operations it would not see: gossip
mixing and the hub's weighted average (:mod:`p2pforget.aggregate`), two FLOPs per number
received. Other elementwise arithmetic (activations, the optimizers' updates) is not counted, on
either side of a comparison.

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

import torch
from torch.utils.flop_counter import FlopCounterMode

def counter() -> FlopCounterMode:
    """A FLOP counter (a context manager; ``get_total_flops()`` afterwards)."""
    from . import aggregate  # noqa: F401  (registers the mixing formulas)

    return FlopCounterMode(display=False)


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn()`` once under :func:`counter` and return ``(result, seconds, flops)``.

    The seconds are those of the counted run: the counter adds a fixed cost to every operation
    (about four times the plain time of a 12-client digits round), so seconds compare
    measurements taken this way with each other, not with an uncounted run.
    """
    # The counter imports torch._dynamo on its first use (about two seconds): import it before
    # the clock starts, so that whichever code is measured first is not charged for it.
    import torch._dynamo  # noqa: F401

    start = time.perf_counter()
    with counter() as count:
        result = fn()
    return result, time.perf_counter() - start, float(count.get_total_flops())
