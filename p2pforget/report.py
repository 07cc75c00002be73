"""Tables and matplotlib figures from run files.

Example
-------
>>> print(table(["a", "b"], [[1, 2.5]]))
a | b
--+----
1 | 2.5
"""
from __future__ import annotations

import json
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
    """One PNG with the loss, test accuracy and consensus distance at the evaluated rounds, and the
    bytes sent per round."""
    rounds = np.asarray(metrics.get("round", np.arange(1, len(metrics["loss_mean"]) + 1)))
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
    ax.plot(np.arange(1, len(metrics["bytes_sent"]) + 1), np.cumsum(metrics["bytes_sent"]) / 1e6)
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
        rounds = m.get("round") or np.arange(1, len(m["test_acc_mean"]) + 1)
        axes[0].plot(rounds, m["test_acc_mean"], label=name)
        axes[1].plot(rounds, np.maximum(m["consensus_distance"], 1e-16), label=name)
        axes[2].plot(np.arange(1, len(m["bytes_sent"]) + 1), np.cumsum(m["bytes_sent"]) / 1e6, label=name)
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


def plot_ledger(C: np.ndarray, path: str | Path, *, title: str = "influence ledger") -> Path:
    """Heatmap of the ledger shares: row i, column j = fraction of node i's updates from client j."""
    from .ledger import shares

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(shares(C), cmap="viridis", vmin=0)
    fig.colorbar(im, ax=ax, label="share of node i's accumulated updates")
    ax.set(title=title, xlabel="client j (source)", ylabel="node i (holder)")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_influence_share(mixings: list[np.ndarray], client: int, path: str | Path) -> Path:
    """Share of ``client``'s influence at every node after each round (one line per node)."""
    from .ledger import share_history

    h = share_history(mixings, client)
    n = h.shape[1]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(n):
        ax.plot(np.arange(1, len(h) + 1), h[:, i], lw=2.0 if i == client else 0.8, color="tab:red" if i == client else None)
    ax.axhline(1 / n, color="k", ls="--", lw=0.8, label="uniform 1/n")
    ax.set(title=f"share of client {client}'s updates held by each node", xlabel="round", ylabel="share", xscale="log")
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_unlearning(metrics: dict, path: str | Path) -> Path:
    """FA / RA / TA / MIA of the trained, retrained and unlearned models, side by side."""
    names = [k for k in ("trained", "retrained", "unlearned") if k in metrics]
    labels = ["FA", "RA", "TA", "MIA"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        m = metrics[name]
        vals = [m[x]["mean"] if isinstance(m.get(x), dict) else (m.get(x) or 0.0) for x in labels]
        ax.bar(np.arange(len(labels)) + k * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(names) - 1) / 2, labels)
    ax.set(ylabel="percent (mean over nodes)", title="unlearning metrics (MIA 50 = forgotten data look unseen)")
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_fa_traces(traces: dict[str, list[float]], path: str | Path) -> Path:
    """FA after each round of unlearning (and of Retrain's training), the time-to-forget picture."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, trace in traces.items():
        ax.plot(np.arange(1, len(trace) + 1), trace, marker="o" if len(trace) < 5 else None, label=name)
    ax.set(xlabel="round (unlearning; Retrain: training)", ylabel="FA (%)", title="accuracy on the forgotten data")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


PLOT_LIMIT = 1000
"""Ledger and influence-share plots (n x n pictures) are drawn up to this many clients."""


def report_run(run_dir: str | Path) -> list[Path]:
    """PNG plots for a finished (or interrupted) run directory; returns the files written. The
    ledger and influence-share plots need ``[ledger] kind = "full"`` and at most
    :data:`PLOT_LIMIT` clients."""

    run_dir = Path(run_dir)
    rf = history.read_h5(run_dir / "history.h5")
    metrics = {k.removeprefix("metrics/"): v for k, v in rf.arrays.items() if k.startswith("metrics/")}
    if not len(metrics.get("loss_mean", [])):
        raise ValueError(f"{run_dir} has no completed rounds to plot")
    pngs = [plot_metrics(metrics, run_dir / "metrics.png", title=run_dir.name)]
    n = int(rf.attrs.get("n_clients", 0))
    if "ledger/influence" in rf.arrays and n <= PLOT_LIMIT:
        pngs.append(plot_ledger(rf.arrays["ledger/influence"], run_dir / "ledger.png"))
        rounds = int(rf.attrs["rounds_done"])
        mixings = history.stored_mixings(rf, rounds)
        if len(mixings) == rounds:
            forgotten = [int(j) for j in json.loads(rf.group_attrs.get("unlearn", {}).get("forgotten", "{}"))]
            pngs.append(plot_influence_share(mixings, forgotten[0] if forgotten else 0, run_dir / "influence_share.png"))
    report_file = run_dir / "report.json"
    if report_file.exists():
        report = json.loads(report_file.read_text())
        if "metrics" in report:
            pngs.append(plot_unlearning(report["metrics"], run_dir / "unlearning.png"))
        if report.get("traces"):
            pngs.append(plot_fa_traces(report["traces"], run_dir / "fa_trace.png"))
    return pngs
