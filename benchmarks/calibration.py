"""What the calibration scripts share: one sweep of a method's options from one trained state,
and the table they print.

:func:`sweep` runs a method once per setting, each from a fork of the same trained engine, and
Retrain once beside the first (``ease_calibrate.py``, ``sfron_alpha.py``, ``foul_kappa.py``).
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


def metric_values(metrics: dict, keys: tuple[str, ...]) -> dict[str, float]:
    """The means of ``keys`` in one model's metrics (MIA is a number already)."""
    return {k: metrics[k] if k == "MIA" else metrics[k]["mean"] for k in keys}


def sweep(engine, settings: dict[str, dict], *, method: str, request: dict, keys: tuple[str, ...],
          extra=lambda result, side: {}) -> dict:
    """``{"variant": {name: values}, "retrain": values, "trained": values}``: ``method`` run with
    each setting's options (name -> keyword options of :func:`p2pforget.forget`) on ``request``
    (``clients=`` / ``samples=``), each from a fork of ``engine`` (left as it is); Retrain beside
    the first. ``values`` are the metric means of ``keys`` and ``extra(result, side)`` (``side``:
    ``"unlearn"`` or ``"retrain"``, e.g. its cost)."""
    from p2pforget import forget

    out: dict = {"variant": {}}
    for i, (name, options) in enumerate(settings.items()):
        result = forget(engine.fork(), method=method, reference=(i == 0), progress=False, **request, **options)
        out["variant"][name] = metric_values(result.metrics["unlearned"], keys) | extra(result, "unlearn")
        if i == 0:
            out["retrain"] = metric_values(result.metrics["retrained"], keys) | extra(result, "retrain")
            out["trained"] = metric_values(result.metrics["trained"], keys)
    return out


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


def verdicts(checks: list[tuple[str, bool]]) -> list[str]:
    """Markdown lines ``- holds: ...`` / ``- FAILS: ...`` for ``(text, ok)`` checks.

    >>> verdicts([("FA within 3", True), ("FLOPs < 1", False)])
    ['- holds: FA within 3', '- FAILS: FLOPs < 1']
    """
    return [f"- {'holds' if ok else 'FAILS'}: {text}" for text, ok in checks]


def plot_per_topology(cells: list[dict], path, draw, *, title: str, xlabel: str, ylabel: str) -> None:
    """One panel per topology of ``cells`` (star first), each filled by ``draw(ax, kind_cells)``
    (see :func:`band`), labelled, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({c["topology"] for c in cells}, key=["star", "ring"].index)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        draw(ax, [c for c in cells if c["topology"] == kind])
        ax.set_title(f"{kind}: {title}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def band(ax, curves: list, *, label: str, start: int = 0) -> None:
    """The mean of ``curves`` (cut to the shortest) as a line, their range as a shaded band."""
    n = min(len(c) for c in curves)
    curve = np.array([c[:n] for c in curves])
    x = np.arange(start, start + n)
    ax.plot(x, curve.mean(0), marker="." if n < 5 else None, label=label)
    ax.fill_between(x, curve.min(0), curve.max(0), alpha=0.15)


def trained_engine(cfg):
    """In a worker of :func:`run_cells`: an engine for ``cfg`` trained for ``run.rounds`` on one
    thread (each worker one thread, whatever the machine has), open_clip's attention warning quiet."""
    import os
    import warnings

    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="There is a performance drop")
    from p2pforget import Engine

    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    return engine


def run_cells(one_cell, jobs: list, *, processes: int) -> list[dict]:
    """``one_cell(job)`` for every job in ``processes`` spawned processes, in job order; prints the
    minutes taken."""
    import multiprocessing as mp
    import time

    start = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        cells = pool.map(one_cell, jobs, chunksize=1)
    print(f"{len(cells)} cells in {(time.perf_counter() - start) / 60:.1f} min")
    return cells


def per_topology(cells: list[dict], kinds: list[str], *, names: list[str], keys: tuple[str, ...],
                 ratio: str | None = None) -> str:
    """For each topology: the trained model's FA minus Retrain's per seed (how much there is to
    forget), then the :func:`differences` table of the sweep's settings."""
    out = []
    for kind in kinds:
        mine = [c for c in cells if c["topology"] == kind]
        out.append(f"\n{kind}: trained FA - Retrain's per seed: "
                   + ", ".join(f"{c['trained']['FA'] - c['retrain']['FA']:+.1f}" for c in mine))
        out.append(differences(mine, field="variant", names=names, keys=keys, ratio=ratio))
    return "\n".join(out)
