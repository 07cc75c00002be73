"""The base of the engine's parts (``engine.batches``, ``engine.compute``, ``engine.network``)."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Engine


class Part:
    """One concern of an :class:`~p2pforget.engine.Engine`, reading the engine's state."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def refresh(self) -> None:
        """Follow the engine's graph, membership and exclusions; the engine calls it after every
        change of them (:meth:`~p2pforget.engine.Engine.exclude`, a fork) and once when built."""

    def bound(self, engine: "Engine") -> "Part":
        """A shallow copy serving ``engine`` (a fork): what the part holds is shared until replaced."""
        twin = copy.copy(self)
        twin.engine = engine
        return twin
