"""Tables and matplotlib figures from run files.

Example
-------
>>> print(table(["a", "b"], [[1, 2.5]]))
a | b
--+----
1 | 2.5
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402

from . import history  # noqa: E402


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    cells = [list(headers)] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_metrics(metrics: dict[str, np.ndarray], path: str | Path, *, title: str = "") -> Path:
    """One PNG with the per-round loss, test accuracy, consensus distance and bytes sent."""
    rounds = np.arange(1, len(metrics["loss_mean"]) + 1)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0, 0]
    ax.plot(rounds, metrics["loss_mean"])
    ax.set(title="mean training objective", xlabel="round", yscale="log")
    ax = axes[0, 1]
    ax.plot(rounds, metrics["test_acc_mean"], label="mean over nodes")
    ax.plot(rounds, metrics["test_acc_min"], label="worst node")
    ax.set(title="test accuracy", xlabel="round")
    ax.legend()
    ax = axes[1, 0]
    ax.plot(rounds, np.maximum(metrics["consensus_distance"], 1e-16))
    ax.set(title="consensus distance  mean_i ||x_i - x̄||", xlabel="round", yscale="log")
    ax = axes[1, 1]
    ax.plot(rounds, np.cumsum(metrics["bytes_sent"]) / 1e6)
    ax.set(title="communication (cumulative MB)", xlabel="round")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(curves: dict[str, dict[str, list[float]]], path: str | Path) -> Path:
    """Per-round test accuracy, consensus distance and communication of several runs (one line each)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, m in curves.items():
        rounds = np.arange(1, len(m["test_acc_mean"]) + 1)
        axes[0].plot(rounds, m["test_acc_mean"], label=name)
        axes[1].plot(rounds, np.maximum(m["consensus_distance"], 1e-16), label=name)
        axes[2].plot(rounds, np.cumsum(m["bytes_sent"]) / 1e6, label=name)
    axes[0].set(title="test accuracy (mean over nodes)", xlabel="round")
    axes[1].set(title="consensus distance", xlabel="round", yscale="log")
    axes[2].set(title="communication (cumulative MB)", xlabel="round")
    axes[0].legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_graph(g: nx.Graph, path: str | Path, *, title: str = "") -> Path:
    """A drawing of the gossip graph (a star's hub drawn larger and in another colour)."""
    hub = g.graph.get("hub")
    fig, ax = plt.subplots(figsize=(6, 6))
    pos = nx.kamada_kawai_layout(g) if g.number_of_nodes() <= 200 else nx.spring_layout(g, seed=0)
    colours = ["tab:orange" if v == hub else "tab:blue" for v in g.nodes]
    sizes = [400 if v == hub else 160 for v in g.nodes]
    nx.draw_networkx(g, pos, ax=ax, node_color=colours, node_size=sizes, font_size=7, font_color="white", width=0.8)
    ax.set_title(title)
    ax.set_axis_off()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def report_run(run_dir: str | Path) -> list[Path]:
    """PNG plots for a finished (or interrupted) run directory; returns the files written."""
    run_dir = Path(run_dir)
    rf = history.read_h5(run_dir / "history.h5")
    metrics = {k.removeprefix("metrics/"): v for k, v in rf.arrays.items() if k.startswith("metrics/")}
    if not len(metrics.get("loss_mean", [])):
        raise ValueError(f"{run_dir} has no completed rounds to plot")
    return [plot_metrics(metrics, run_dir / "metrics.png", title=run_dir.name)]
