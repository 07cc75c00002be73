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
import tomllib
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


def mean_std(values: list, digits: int = 1) -> str:
    """``"mean ± std"`` over seeds (population std) of the values that are not ``None``; with some
    missing, the mean and how many seeds it covers; ``"-"`` with none.

    >>> mean_std([1.0, 3.0]), mean_std([2.0, None], 2), mean_std([None])
    ('2.0 ± 1.0', '2.00 (1/2 seeds)', '-')
    """
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) < len(values):
        return f"{np.mean(vals):.{digits}f} ({len(vals)}/{len(values)} seeds)"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}" if len(vals) > 1 else f"{vals[0]:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    cells = [list(headers)] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


FORMATS = ("png",)
"""Formats figures are written in by default; ``formats=("png", "pdf", "svg")`` writes each."""


def _save(fig, path: str | Path, formats: Sequence[str] = FORMATS) -> Path:
    """Write ``fig`` as ``path`` in every format (its suffix replaced), close it, return the first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.with_suffix(f".{formats[0]}")


def _distance_axis(ax, values: np.ndarray) -> None:
    """Log scale, or symlog when a series reaches machine precision (a star's consensus is ~1e-16,
    which would stretch a log axis over 14 decades of nothing)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and np.nanmin(values) < 1e-10:
        ax.set_yscale("symlog", linthresh=1e-10)
    else:
        ax.set_yscale("log")


def _percent(values) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=np.float64)


def plot_metrics(metrics: dict[str, np.ndarray], path: str | Path, *, title: str = "",
                 formats: Sequence[str] = FORMATS) -> Path:
    """The training objective, test accuracy (percent) and consensus distance at the evaluated
    rounds, the communication per round, and test accuracy against the bytes sent."""
    rounds = np.asarray(metrics.get("round", np.arange(1, len(metrics["loss_mean"]) + 1)))
    sent = np.cumsum(metrics["bytes_sent"]) / 1e6
    sent_at = sent[np.clip(rounds - 1, 0, len(sent) - 1)] if len(sent) else np.zeros(len(rounds))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    ax = axes[0, 0]
    ax.plot(rounds, metrics["loss_mean"], label="mean over nodes")
    ax.set(title="training objective", xlabel="round", ylabel="objective", yscale="log")
    ax = axes[0, 1]
    ax.plot(rounds, _percent(metrics["test_acc_mean"]), label="mean over nodes")
    ax.plot(rounds, _percent(metrics["test_acc_min"]), label="worst node")
    if len(metrics.get("test_acc_of_mean", [])) == len(rounds):
        ax.plot(rounds, _percent(metrics["test_acc_of_mean"]), ls="--", label="the nodes' mean model")
    ax.set(title="test accuracy", xlabel="round", ylabel="test accuracy (%)")
    ax = axes[0, 2]
    ax.plot(rounds, metrics["consensus_distance"], label="mean_i ||x_i - x̄||")
    ax.set(title="consensus distance", xlabel="round", ylabel="distance to the mean model")
    _distance_axis(ax, metrics["consensus_distance"])
    ax = axes[1, 0]
    ax.plot(np.arange(1, len(sent) + 1), sent, label="all nodes")
    ax.set(title="communication", xlabel="round", ylabel="bytes sent, cumulative (MB)")
    ax = axes[1, 1]
    ax.plot(sent_at, _percent(metrics["test_acc_mean"]), label="mean over nodes")
    ax.set(title="test accuracy vs communication", xlabel="bytes sent, cumulative (MB)", ylabel="test accuracy (%)")
    axes[1, 2].set_axis_off()
    for ax in axes.flat[:5]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, formats)


def plot_comparison(curves: dict[str, dict[str, list[float]]], path: str | Path, *,
                    formats: Sequence[str] = FORMATS) -> Path:
    """Test accuracy (percent) vs round and vs bytes sent, consensus distance and communication of
    several runs (one line each, a legend in every panel)."""
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    every = []
    for name, m in curves.items():
        rounds = np.asarray(m.get("round") or np.arange(1, len(m["test_acc_mean"]) + 1))
        sent = np.cumsum(m["bytes_sent"]) / 1e6
        axes[0].plot(rounds, _percent(m["test_acc_mean"]), label=name)
        axes[1].plot(sent[np.clip(rounds - 1, 0, len(sent) - 1)], _percent(m["test_acc_mean"]), label=name)
        axes[2].plot(rounds, m["consensus_distance"], label=name)
        axes[3].plot(np.arange(1, len(sent) + 1), sent, label=name)
        every += list(m["consensus_distance"])
    axes[0].set(title="test accuracy (mean over nodes)", xlabel="round", ylabel="test accuracy (%)")
    axes[1].set(title="test accuracy vs communication", xlabel="bytes sent, cumulative (MB)", ylabel="test accuracy (%)")
    axes[2].set(title="consensus distance", xlabel="round", ylabel="mean_i ||x_i - x̄||")
    _distance_axis(axes[2], np.asarray(every))
    axes[3].set(title="communication", xlabel="round", ylabel="bytes sent, cumulative (MB)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, formats)


def plot_graph(g: nx.Graph, path: str | Path, *, title: str = "", formats: Sequence[str] = FORMATS) -> Path:
    """A drawing of the gossip graph (a star's hub drawn larger and in another colour)."""
    hub = g.graph.get("hub")
    fig, ax = plt.subplots(figsize=(6, 6))
    pos = nx.kamada_kawai_layout(g) if g.number_of_nodes() <= 200 else nx.spring_layout(g, seed=0)
    colours = ["tab:orange" if v == hub else "tab:blue" for v in g.nodes]
    sizes = [400 if v == hub else 160 for v in g.nodes]
    nx.draw_networkx(g, pos, ax=ax, node_color=colours, node_size=sizes, font_size=7, font_color="white", width=0.8)
    ax.set_title(title)
    ax.set_axis_off()
    return _save(fig, path, formats)


def plot_ledger(C: np.ndarray, path: str | Path, *, title: str = "influence ledger", formats: Sequence[str] = FORMATS) -> Path:
    """Heatmap of the ledger shares: row i, column j = fraction of node i's updates from client j."""
    from .ledger import shares

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(shares(C), cmap="viridis", vmin=0)
    fig.colorbar(im, ax=ax, label="share of node i's accumulated updates")
    ax.set(title=title, xlabel="client j (source)", ylabel="node i (holder)")
    return _save(fig, path, formats)


def plot_influence_share(mixings: list[np.ndarray], client: int, path: str | Path, *,
                         formats: Sequence[str] = FORMATS) -> Path:
    """Share of ``client``'s influence at every node after each round (one line per node)."""
    from .ledger import share_history

    h = share_history(mixings, client)
    n = h.shape[1]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(n):
        ax.plot(np.arange(1, len(h) + 1), h[:, i], lw=2.0 if i == client else 0.8, color="tab:red" if i == client else None,
                label=f"node {client} (the client itself)" if i == client else ("other nodes" if i == (client + 1) % n else None))
    ax.axhline(1 / n, color="k", ls="--", lw=0.8, label="uniform 1/n")
    ax.set(title=f"share of client {client}'s updates held by each node", xlabel="round",
           ylabel="share of the node's accumulated updates", xscale="log")
    ax.legend()
    return _save(fig, path, formats)


def plot_unlearning(metrics: dict, path: str | Path, *, formats: Sequence[str] = FORMATS) -> Path:
    """FA / RA / TA / MIA of the trained, retrained and unlearned models, side by side."""
    names = [k for k in ("trained", "retrained", "unlearned") if k in metrics]
    labels = ["FA", "RA", "TA", "MIA"] + (["ASR"] if any("ASR" in metrics[k] for k in names) else [])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        m = metrics[name]
        vals = [m[x]["mean"] if isinstance(m.get(x), dict) else (m.get(x) or 0.0) for x in labels]
        ax.bar(np.arange(len(labels)) + k * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(names) - 1) / 2, labels)
    ax.set(xlabel="metric", ylabel="percent (mean over nodes)", title="unlearning metrics (MIA 50 = forgotten data look unseen)")
    ax.legend()
    return _save(fig, path, formats)


def plot_fa_traces(traces: dict[str, list[float]], path: str | Path, *, formats: Sequence[str] = FORMATS) -> Path:
    """FA after each round of unlearning (and of Retrain's training), the time-to-forget picture."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, trace in traces.items():
        ax.plot(np.arange(1, len(trace) + 1), trace, marker="o" if len(trace) < 5 else None, label=name)
    ax.set(xlabel="round (unlearning; Retrain: training)", ylabel="FA (%)", title="accuracy on the forgotten data")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, formats)


def plot_probe_per_node(rounds: np.ndarray, values: np.ndarray, highlight: Sequence[int], path: str | Path, *,
                        name: str = "ASR", formats: Sequence[str] = FORMATS) -> Path:
    """A probe's score (e.g. the backdoor's attack success rate) on every node after each
    evaluation round, ``values [evaluations, n_clients]`` (NaN where a node had left): how far the
    attack spread through the graph. The ``highlight`` nodes (the malicious clients) in red."""
    fig, ax = plt.subplots(figsize=(7, 4))
    others = [i for i in range(values.shape[1]) if i not in set(highlight)]
    if others:
        v = _percent(values[:, others])
        ax.fill_between(rounds, np.nanmin(v, axis=1), np.nanmax(v, axis=1), color="tab:blue", alpha=0.2,
                        label=f"other nodes (min to max, {len(others)})")
        ax.plot(rounds, np.nanmean(v, axis=1), color="tab:blue", label="other nodes (mean)")
    for k, i in enumerate(highlight):
        ax.plot(rounds, _percent(values[:, i]), color="tab:red", lw=2, label="malicious client(s)" if k == 0 else None)
    ax.set(title=f"{name} on each node", xlabel="round", ylabel=f"{name} (%)", ylim=(-2, 102))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, formats)


PLOT_LIMIT = 1000
"""Ledger and influence-share plots (n x n pictures) are drawn up to this many clients."""


def report_run(run_dir: str | Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """PNG plots for a finished (or interrupted) run directory; returns the files written. The
    ledger and influence-share plots need ``[ledger] kind = "full"`` and at most
    :data:`PLOT_LIMIT` clients."""

    run_dir = Path(run_dir)
    rf = history.read_h5(run_dir / "history.h5")
    metrics = {k.removeprefix("metrics/"): v for k, v in rf.arrays.items() if k.startswith("metrics/")}
    if not len(metrics.get("loss_mean", [])):
        raise ValueError(f"{run_dir} has no completed rounds to plot")
    pngs = [plot_metrics(metrics, run_dir / "metrics.png", title=run_dir.name, formats=formats)]
    n = int(rf.attrs.get("n_clients", 0))
    if "ledger/influence" in rf.arrays and n <= PLOT_LIMIT:
        pngs.append(plot_ledger(rf.arrays["ledger/influence"], run_dir / "ledger.png", formats=formats))
        rounds = int(rf.attrs["rounds_done"])
        mixings = history.stored_mixings(rf, rounds)
        if len(mixings) == rounds:
            forgotten = [int(j) for j in json.loads(rf.group_attrs.get("unlearn", {}).get("forgotten", "{}"))]
            pngs.append(plot_influence_share(mixings, forgotten[0] if forgotten else 0, run_dir / "influence_share.png",
                                             formats=formats))
    if "per_node/ASR" in metrics and len(metrics["round"]):
        poison = tomllib.loads(rf.attrs.get("config_toml", "")).get("data", {}).get("poison", {})
        pngs.append(plot_probe_per_node(metrics["round"], metrics["per_node/ASR"], poison.get("clients", []),
                                        run_dir / "asr_per_node.png", formats=formats))
    report_file = run_dir / "report.json"
    if report_file.exists():
        report = history.read_json(report_file)
        if "metrics" in report:
            pngs.append(plot_unlearning(report["metrics"], run_dir / "unlearning.png", formats=formats))
        if report.get("traces"):
            pngs.append(plot_fa_traces(report["traces"], run_dir / "fa_trace.png", formats=formats))
    return pngs


def plot_grid(rows: list[dict], topologies: Sequence[str], methods: Sequence[str], seeds: Sequence[int], *, out: Path,
              formats: Sequence[str] = FORMATS) -> list[Path]:
    """The figures of a method x topology grid (``p2pforget compare --methods``): test accuracy vs
    round per topology (mean over seeds), the forgotten client's share of every other node's
    model vs round (influence ledger, first seed), and unlearning quality (FA and MIA gaps to
    Retrain) and cost (bytes) against the graph's spectral gap, one line per method."""
    out = Path(out)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in topologies:
        curves = []
        for s in seeds:
            rf = history.read_h5(out / "runs" / f"{t}-s{s}" / "history.h5")
            curves.append((rf.arrays["metrics/round"], _percent(rf.arrays["metrics/test_acc_mean"])))
        ax.plot(curves[0][0], np.mean([c[1] for c in curves], axis=0), label=t)
    ax.set(title="training: test accuracy (mean over nodes and seeds)", xlabel="round", ylabel="test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "accuracy_vs_round.png", formats))

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for t in topologies:
        rf = history.read_h5(out / "runs" / f"{t}-s{seeds[0]}" / "history.h5")
        rounds = int(rf.attrs["rounds_done"])
        mixings = history.stored_mixings(rf, rounds)
        client = _forgotten_client(rows)
        if len(mixings) != rounds or client is None:
            continue
        from .ledger import share_history

        h = share_history(mixings, client)
        others = np.delete(np.arange(h.shape[1]), client)
        ax.plot(np.arange(1, rounds + 1), h[:, others].mean(axis=1), label=t)
        drawn = True
    ax.set(title="the forgotten client's share of the other nodes' models", xlabel="round",
           ylabel="share (mean over the other nodes)", xscale="log")
    if drawn:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "influence_share_vs_round.png", formats))

    gaps = {t: next(r["spectral_gap"] for r in rows if r["topology"] == t) for t in topologies}
    order = sorted(topologies, key=gaps.get)
    asr = any(r.get("ASR") is not None for r in rows)
    fig, axes = plt.subplots(1, 4 if asr else 3, figsize=(21 if asr else 16, 4))
    for m in methods:
        def mean(key, t):
            vals = [r[key] for r in rows if r["topology"] == t and r["method"] == m and r.get(key) is not None]
            return np.mean(vals) if vals else np.nan
        x = [gaps[t] for t in order]
        axes[0].plot(x, [mean("FA_gap_to_retrain", t) for t in order], marker="o", label=m)
        axes[1].plot(x, [mean("MIA_gap_to_retrain", t) for t in order], marker="o", label=m)
        axes[2].plot(x, [mean("comm_bytes", t) / 1e6 for t in order], marker="o", label=m)
        if asr:
            axes[3].plot(x, [mean("ASR_gap_to_retrain", t) for t in order], marker="o", label=m)
    axes[0].set(title="forget accuracy − Retrain's", xlabel="spectral gap of the graph", ylabel="FA gap (points)")
    axes[1].set(title="MIA − Retrain's", xlabel="spectral gap of the graph", ylabel="MIA gap (AUC points)")
    axes[2].set(title="communication of the method", xlabel="spectral gap of the graph", ylabel="bytes sent (MB)",
                yscale="symlog")
    if asr:
        axes[3].set(title="attack success rate − Retrain's", xlabel="spectral gap of the graph", ylabel="ASR gap (points)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_xscale("log")
    fig.tight_layout()
    paths.append(_save(fig, out / "quality_and_cost_vs_spectral_gap.png", formats))
    return paths


def _forgotten_client(rows: list[dict]) -> int | None:
    clients = rows[0].get("forgotten_clients") if rows else None
    return int(clients[0]) if clients else None
