"""Printing shared by the benchmark tables.

:func:`differences` is the table every calibration script prints (``ease_calibrate.py``,
``sfron_alpha.py``, ``foul_kappa.py``): each setting's metrics minus Retrain's, seed by seed. A cell
is one seed's result: ``cell["retrain"][key]`` and ``cell[field][name][key]`` for every setting
``name``. The result tables' cell format is :func:`p2pforget.report.mean_std`.

>>> cells = [{"retrain": {"FA": 5.0, "seconds": 10.0}, "alpha": {"0.5": {"FA": 7.0, "seconds": 1.0}}},
...          {"retrain": {"FA": 4.0, "seconds": 10.0}, "alpha": {"0.5": {"FA": 3.0, "seconds": 2.0}}}]
>>> print(differences(cells, field="alpha", names=["0.5"], keys=("FA",), ratio="seconds"))
| alpha | FA - Retrain per seed | mean ± std | seconds / Retrain |
|---|---|---|---|
| 0.5 | +2.0, -1.0 | +0.5 ± 2.1 | 0.150 |
"""
from __future__ import annotations

import numpy as np


def differences(cells: list[dict], *, field: str, names: list[str], keys: tuple[str, ...],
                ratio: str | None = None) -> str:
    """A markdown table: per setting, each of ``keys`` minus Retrain's per seed, their mean ± sample
    std over seeds, and (``ratio``) the mean of the setting's ``ratio`` over Retrain's."""
    head = f"| {field} | " + " | ".join(f"{k} - Retrain per seed | mean ± std" for k in keys)
    lines = [head + (f" | {ratio} / Retrain |" if ratio else " |"),
             "|---|" + "---|---|" * len(keys) + ("---|" if ratio else "")]
    for name in names:
        row = []
        for k in keys:
            d = np.array([c[field][name][k] - c["retrain"][k] for c in cells])
            spread = d.std(ddof=1) if len(d) > 1 else 0.0
            row += [", ".join(f"{x:+.1f}" for x in d), f"{d.mean():+.1f} ± {spread:.1f}"]
        tail = f" | {np.mean([c[field][name][ratio] / c['retrain'][ratio] for c in cells]):.3f} |" if ratio else " |"
        lines.append(f"| {name} | " + " | ".join(row) + tail)
    return "\n".join(lines)


