"""Progress bars: shown on rank 0 when asked for, never when ``TQDM_DISABLE`` is set (batch jobs:
``p2pforget --quiet`` sets it), so that cluster logs do not fill with carriage returns.

>>> import os
>>> os.environ["TQDM_DISABLE"] = "1"
>>> bar(total=3, desc="x", show=True).disable
True
>>> del os.environ["TQDM_DISABLE"]
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm import tqdm


def quiet() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no progress bars (any value but empty, ``0`` or ``false``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def bar(iterable: Iterable | None = None, *, show: bool, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless ``show`` and not :func:`quiet`."""
    return tqdm(iterable, disable=not show or quiet(), **kwargs)
