"""The analytic Gaussian mechanism (Balle & Wang, "Improving the Gaussian Mechanism for
Differential Privacy: Analytical Calibration and Optimal Denoising", ICML 2018).

Adding ``N(0, sigma^2 I)`` to a vector whose value can change by at most ``sensitivity`` (L2) is
(epsilon, delta)-differentially private exactly when

    Phi(D / (2 sigma) - epsilon sigma / D) - e^epsilon Phi(-D / (2 sigma) - epsilon sigma / D) <= delta

(Theorem 8). :func:`sigma` returns the smallest such ``sigma``; it is valid for every epsilon > 0,
unlike the classical ``D sqrt(2 ln(1.25/delta)) / epsilon``, which needs epsilon < 1.

Example
-------
>>> round(sigma(1.0, epsilon=1.0, delta=1e-5), 4)
3.7306
"""
from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.special import log_ndtr


def delta_of(sigma: float, *, sensitivity: float, epsilon: float) -> float:
    """The smallest delta for which ``N(0, sigma^2)`` noise makes a ``sensitivity``-bounded release
    (epsilon, delta)-private (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return math.exp(log_ndtr(a - b)) - math.exp(epsilon + log_ndtr(-a - b))


def sigma(sensitivity: float, *, epsilon: float, delta: float) -> float:
    """The smallest noise standard deviation that makes a release with L2 ``sensitivity``
    (epsilon, delta)-differentially private; 0 for a release that cannot change."""
    if not 0 < delta < 1 or epsilon <= 0:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1; got epsilon={epsilon}, delta={delta}")
    if sensitivity == 0:
        return 0.0
    if not math.isfinite(sensitivity):
        return math.inf
    lo, hi = sensitivity * 1e-6, sensitivity
    while delta_of(hi, sensitivity=sensitivity, epsilon=epsilon) > delta:
        hi *= 2.0
    while delta_of(lo, sensitivity=sensitivity, epsilon=epsilon) < delta:
        lo /= 2.0
    s = brentq(lambda v: delta_of(v, sensitivity=sensitivity, epsilon=epsilon) - delta, lo, hi, xtol=1e-14 * hi, rtol=1e-13)
    return s * (1 + 1e-12)  # on the safe side of the root
