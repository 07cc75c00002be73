"""Paired comparisons with Retrain over seeds, and the equivalence verdict of a grid cell.

A method is judged seed for seed against Retrain: ``d_s = metric(method, s) - metric(Retrain, s)``.
Its mean gets a two-sided ``level`` t-interval (90%: the two one-sided 5% tests of an equivalence
test, Schuirmann 1987). The verdict for a margin ``delta`` (points):

- ``pass``: the interval lies inside ``[-delta, delta]``;
- ``fail``: it does not (too far from Retrain, or too uncertain to tell);
- ``uninformative``: the do-nothing model (the trained one, before unlearning) passes too, so the
  test cannot tell forgetting from doing nothing: never counted as a pass.

Example
-------
>>> v = equivalence([0.5, -1.0, 0.0, 1.0, -0.5], [10.0, 12.0, 9.0, 11.0, 10.0], margin=3.0)
>>> v["verdict"], round(v["ci"][0], 2), round(v["ci"][1], 2)
('pass', -0.75, 0.75)
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

VERDICTS = ("pass", "fail", "uninformative")


def mean_ci(values: Sequence[float], *, level: float = 0.90) -> tuple[float, float, float]:
    """The mean of ``values`` and its two-sided ``level`` Student-t interval ``(mean, lo, hi)``;
    the interval is ``(nan, nan)`` for fewer than two values."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def within(ci: tuple[float, float], margin: float) -> bool:
    """Whether the interval ``ci`` lies inside ``[-margin, margin]`` (never for an undefined one)."""
    lo, hi = ci
    return bool(np.isfinite(lo) and np.isfinite(hi) and -margin <= lo and hi <= margin)


def equivalence(method_gaps: Sequence[float], trained_gaps: Sequence[float], *, margin: float,
                level: float = 0.90) -> dict[str, Any]:
    """The verdict (see the module docstring) from the per-seed gaps to Retrain of the method and
    of the trained (do-nothing) model, paired by seed."""
    mean, lo, hi = mean_ci(method_gaps, level=level)
    t_mean, t_lo, t_hi = mean_ci(trained_gaps, level=level)
    if within((t_lo, t_hi), margin):
        verdict = "uninformative"
    else:
        verdict = "pass" if within((lo, hi), margin) else "fail"
    return {"verdict": verdict, "mean": mean, "ci": [lo, hi], "trained_mean": t_mean, "trained_ci": [t_lo, t_hi],
            "margin": margin, "level": level, "seeds": len([g for g in method_gaps if g is not None])}


def reason(v: dict[str, Any]) -> str:
    """Why a verdict came out as it did, in numbers."""
    lo, hi = v["ci"]
    m = v["margin"]
    if v["verdict"] == "uninformative":
        tl, th = v["trained_ci"]
        return f"doing nothing is within ±{m:g} too: trained − Retrain {v['trained_mean']:+.1f} [{tl:+.1f}, {th:+.1f}]"
    if v["verdict"] == "pass":
        return f"{v['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}] inside ±{m:g}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "fewer than two seeds"
    side = "above" if hi > m and lo >= -m else "below" if lo < -m and hi <= m else "beyond both ends of"
    return f"{v['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}] reaches {side} ±{m:g}"


def binomial_se(accuracy_percent: float, n: int) -> float:
    """The standard error, in points, of an accuracy measured on ``n`` samples.

    >>> round(binomial_se(50.0, 100), 2)
    5.0
    """
    p = accuracy_percent / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan
