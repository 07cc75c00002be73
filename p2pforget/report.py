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

COLUMN, FULL = 3.4, 7.0
"""Figure widths in inches: one column and the full text width of a two-column paper."""

PAPER_STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "legend.fontsize": 6,
               "xtick.labelsize": 6, "ytick.labelsize": 6, "lines.linewidth": 1.0, "lines.markersize": 3,
               "errorbar.capsize": 2}
"""Matplotlib settings of the comparison figures (sized for :data:`COLUMN` / :data:`FULL`)."""

MARKERS, LINESTYLES = "osD^vP*X", ("-", "--", ":", "-.")


def _save(fig, path: str | Path, formats: Sequence[str] = FORMATS) -> Path:
    """Write ``fig`` as ``path`` in every format (its suffix replaced), close it, return the first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=200 if fig.get_figwidth() <= FULL else 110, bbox_inches="tight")
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


def _band(ax, x, runs: np.ndarray, *, label: str, k: int, log: bool = False) -> None:
    """The mean over seeds (rows of ``runs``) as a line, their min to max as a band (one seed: the line)."""
    runs = np.asarray(runs, dtype=np.float64)
    centre = np.exp(np.log(runs).mean(axis=0)) if log else runs.mean(axis=0)
    line, = ax.plot(x, centre, ls=LINESTYLES[k % len(LINESTYLES)], marker=MARKERS[k % len(MARKERS)],
                    markevery=max(1, len(x) // 6), label=label)
    if len(runs) > 1:
        ax.fill_between(x, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.2, lw=0)


def _log_floor(values: np.ndarray, floor: float = 1e-12) -> float:
    """The bottom of a log axis for ``values``: a decade below the smallest value above ``floor``
    (values at or below it, a star's exact consensus, go on the bottom edge: no empty decades)."""
    values = np.asarray(values, dtype=np.float64)
    above = values[values > floor]
    return float(10 ** np.floor(np.log10(above.min())) / 10) if above.size else floor


def plot_comparison(curves: dict[str, list[dict[str, list[float]]]], path: str | Path, *,
                    after: dict[str, dict[str, list[float]]] | None = None,
                    formats: Sequence[str] = FORMATS) -> Path:
    """Training of several topologies, full text width: test accuracy vs round and vs bytes sent,
    consensus distance and communication; a line per topology (its own line style and marker) with
    the band from the lowest to the highest seed. ``curves[topology]`` is one metrics dict per seed
    (a bare dict counts as one seed). With ``after`` (``{method: {topology: per-seed gaps}}``), a
    fifth panel: each method's FA held-out gap to Retrain after unlearning, per topology, with its
    90% interval over seeds."""
    curves = {t: (c if isinstance(c, list) else [c]) for t, c in curves.items()}
    with plt.rc_context(PAPER_STYLE):
        fig, axes = plt.subplots(2, 3 if after else 2, figsize=(FULL, 4.6))
        axes = axes.ravel()
        if after:
            _dodged_errorbars(axes[4], list(after), {t: [after[m].get(t, []) for m in after] for t in curves})
            axes[4].set(title="after unlearning: FA held-out − Retrain's (90% CI)", ylabel="gap (points)")
            axes[4].tick_params(axis="x", rotation=30)
            axes[4].legend()
            axes[5].set_axis_off()
        consensus = {t: np.array([np.asarray(m["consensus_distance"], dtype=np.float64) for m in runs])
                     for t, runs in curves.items()}
        bottom = _log_floor(np.concatenate([c.ravel() for c in consensus.values()]))
        for k, (name, runs) in enumerate(curves.items()):
            m0 = runs[0]
            rounds = np.asarray(m0.get("round") or np.arange(1, len(m0["test_acc_mean"]) + 1))
            n = min(len(m["test_acc_mean"]) for m in runs)
            rounds = rounds[:n]
            acc = np.array([_percent(m["test_acc_mean"][:n]) for m in runs])
            sent = np.array([np.cumsum(m["bytes_sent"]) / 1e6 for m in runs])
            at = sent[:, np.clip(rounds - 1, 0, sent.shape[1] - 1)]
            label = f"{name} ({len(runs)} seeds)" if len(runs) > 1 else name
            _band(axes[0], rounds, acc, label=label, k=k)
            axes[1].plot(at.mean(axis=0), acc.mean(axis=0), ls=LINESTYLES[k % 4], marker=MARKERS[k % len(MARKERS)],
                         markevery=max(1, n // 6), label=label)
            exact = (consensus[name][:, :n] <= 1e-12).all()
            _band(axes[2], rounds, np.maximum(consensus[name][:, :n], bottom), k=k, log=True,
                  label=f"{label}: exact, on the bottom edge" if exact else label)
            _band(axes[3], np.arange(1, sent.shape[1] + 1), sent, label=label, k=k)
        axes[0].set(title="test accuracy (mean over nodes)", xlabel="round", ylabel="test accuracy (%)")
        axes[1].set(title="test accuracy vs communication", xlabel="bytes sent, cumulative (MB)", ylabel="test accuracy (%)")
        axes[2].set(title="consensus distance", xlabel="round", ylabel="mean_i ||x_i - x̄||", yscale="log")
        axes[2].set_ylim(bottom=bottom)
        axes[3].set(title="communication", xlabel="round", ylabel="bytes sent, cumulative (MB)")
        for ax in axes[:4]:
            ax.legend()
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
    """Share of ``client``'s influence at every node after each round: the client itself, the
    other nodes' mean with their min to max as a band, and the uniform share 1/n."""
    from .ledger import share_history

    h = share_history(mixings, client)
    n = h.shape[1]
    rounds = np.arange(1, len(h) + 1)
    others = np.delete(np.arange(n), client)
    with plt.rc_context(PAPER_STYLE):
        fig, ax = plt.subplots(figsize=(COLUMN, 2.4))
        if len(others):
            ax.fill_between(rounds, h[:, others].min(axis=1), h[:, others].max(axis=1), color="tab:blue", alpha=0.2,
                            lw=0, label=f"other nodes, min to max ({len(others)})")
            ax.plot(rounds, h[:, others].mean(axis=1), color="tab:blue", label="other nodes, mean")
        ax.plot(rounds, h[:, client], color="tab:red", lw=1.5, label=f"node {client} (the client itself)")
        ax.axhline(1 / n, color="k", ls="--", lw=0.8, label=f"uniform 1/n = {1 / n:.3g}")
        ax.set(title=f"share of client {client}'s updates held by each node", xlabel="round",
               ylabel="share of the node's updates", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
        return _save(fig, path, formats)


ACCURACIES = ("FA", "FA_heldout", "RA", "TA")


def _value(m: dict, key: str) -> tuple[float, float, float] | None:
    """(mean, min, max over nodes) of a metric entry, or ``None``."""
    v = m.get(key)
    if isinstance(v, dict):
        return v["mean"], v.get("min", v["mean"]), v.get("max", v["mean"])
    return None if v is None else (float(v), float(v), float(v))


def plot_unlearning(metrics: dict, path: str | Path, *, formats: Sequence[str] = FORMATS) -> Path:
    """The trained, retrained and unlearned models side by side: accuracies in percent (bars at the
    mean over nodes, error bars from the lowest to the highest node, the value written on each bar)
    and, on its own axis, the membership attack's AUC x 100 (50 = the forgotten data look unseen)."""
    names = [k for k in ("trained", "retrained", "unlearned") if k in metrics]
    accs = [x for x in ACCURACIES + ("ASR",) if any(_value(metrics[k], x) for k in names)]
    with plt.rc_context(PAPER_STYLE):
        fig, (ax, mia) = plt.subplots(1, 2, figsize=(FULL, 2.6), gridspec_kw={"width_ratios": [len(accs), 1.3]})
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            values = [_value(metrics[name], x) or (np.nan,) * 3 for x in accs]
            mean = np.array([v[0] for v in values])
            err = np.array([[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]])
            bars = ax.bar(np.arange(len(accs)) + k * width, mean, width, yerr=err, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=5, padding=2)
            auc = _value(metrics[name], "MIA")
            if auc is not None:
                b = mia.bar([k], [auc[0]], 0.7, color=bars.patches[0].get_facecolor(), label=name)
                mia.bar_label(b, fmt="%.1f", fontsize=5, padding=2)
        ax.set_xticks(np.arange(len(accs)) + width * (len(names) - 1) / 2, [a.replace("_", " ") for a in accs])
        ax.set(ylabel="accuracy (%), mean over nodes", ylim=(0, 110),
               title="accuracies (error bars: lowest to highest node)")
        ax.legend(loc="lower right")
        mia.axhline(50, color="k", ls="--", lw=0.8)
        mia.set_xticks(range(len(names)), names)
        mia.set(ylabel="membership attack AUC x 100", ylim=(0, 105), title="MIA (50 = looks unseen)")
        for a in (ax, mia):
            a.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        return _save(fig, path, formats)


def plot_fa_traces(traces: dict[str, list[float]], path: str | Path, *, formats: Sequence[str] = FORMATS) -> Path:
    """FA after each round: the unlearning methods on the left (x = unlearning round), Retrain on
    the right (x = its training round), so the two kinds of round never share an axis."""
    unlearning = {k: v for k, v in traces.items() if k not in ("retrained", "retrain")}
    retrain = {k: v for k, v in traces.items() if k in ("retrained", "retrain")}
    with plt.rc_context(PAPER_STYLE):
        fig, axes = plt.subplots(1, 2 if retrain else 1, figsize=(FULL if retrain else COLUMN, 2.4), squeeze=False,
                                 sharey=True)
        for ax, group, xlabel in zip(axes[0], (unlearning, retrain), ("unlearning round", "Retrain's training round")):
            for k, (name, trace) in enumerate(group.items()):
                ax.plot(np.arange(1, len(trace) + 1), trace, ls=LINESTYLES[k % 4], marker=MARKERS[k % len(MARKERS)],
                        markevery=max(1, len(trace) // 8), label=name)
            ax.set(xlabel=xlabel, ylabel="FA (%)")
            ax.grid(alpha=0.3)
            if group:
                ax.legend()
        axes[0, 0].set_title("accuracy on the forgotten data while unlearning")
        if retrain:
            axes[0, 1].set_title("... and while Retrain trains without them")
        fig.tight_layout()
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


def _dodged_errorbars(ax, categories: Sequence[str], series: dict[str, list[list[float]]], *, zero: bool = True) -> None:
    """At each category one point per series (its mean over seeds), side by side, with the 90%
    t-interval over seeds as error bars (none for one seed); points are not joined. ``zero`` draws
    the zero line (gaps)."""
    from .stats import mean_ci

    width = 0.7 / max(1, len(series))
    for k, (name, per_category) in enumerate(series.items()):
        x = np.arange(len(categories)) - 0.35 + width * (k + 0.5)
        cis = [mean_ci(v) if v else (np.nan, np.nan, np.nan) for v in per_category]
        mean = np.array([c[0] for c in cis])
        err = np.array([[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]])
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), ls="none", marker=MARKERS[k % len(MARKERS)], label=name)
    ax.set_xticks(np.arange(len(categories)), categories)
    if zero:
        ax.axhline(0, color="k", lw=0.6)
    ax.grid(alpha=0.3, axis="y")


def plot_grid(rows: list[dict], topologies: Sequence[str], methods: Sequence[str], seeds: Sequence[int], *, out: Path,
              formats: Sequence[str] = FORMATS) -> list[Path]:
    """The figures of a method x topology grid (``p2pforget compare --methods``), sized for a paper:

    - ``accuracy_vs_round``: training test accuracy per topology (mean over seeds, band from the
      lowest to the highest seed) and, after unlearning, each method's test accuracy per topology
      (90% interval over seeds);
    - ``influence_share_vs_round``: the forgotten client's share of the other nodes' models (first seed);
    - ``quality_and_cost_vs_spectral_gap``: FA held-out, MIA and (with a poisoned client) ASR gaps
      to Retrain and the method's bytes, at each topology (ordered by spectral gap, named with it),
      one point per method with its 90% interval over seeds, never joined across topologies."""
    out = Path(out)
    paths = []
    gaps = {t: next(r["spectral_gap"] for r in rows if r["topology"] == t) for t in topologies}
    order = sorted(topologies, key=gaps.get)
    ticks = [f"{t}\ngap {gaps[t]:.2g}" for t in order]

    def values(key, t, m):
        return [r[key] for r in rows if r["topology"] == t and r["method"] == m and r.get(key) is not None]

    with plt.rc_context(PAPER_STYLE):
        fig, (train, after) = plt.subplots(1, 2, figsize=(FULL, 2.6), gridspec_kw={"width_ratios": [1.4, 1]})
        for k, t in enumerate(topologies):
            curves = [history.read_h5(out / "runs" / f"{t}-s{s}" / "history.h5").arrays for s in seeds]
            n = min(len(c["metrics/round"]) for c in curves)
            _band(train, curves[0]["metrics/round"][:n], [_percent(c["metrics/test_acc_mean"][:n]) for c in curves],
                  label=t, k=k)
        train.set(title=f"training: test accuracy ({len(seeds)} seeds, band = min to max)", xlabel="round",
                  ylabel="test accuracy (%)")
        train.legend()
        train.grid(alpha=0.3)
        shown = [m for m in methods if any(values("TA", t, m) for t in topologies)]
        _dodged_errorbars(after, shown, {t: [values("TA", t, m) for m in shown] for t in order}, zero=False)
        after.set(title="after unlearning: test accuracy (90% CI)", ylabel="test accuracy (%)")
        after.tick_params(axis="x", rotation=30)
        after.legend()
        fig.tight_layout()
        paths.append(_save(fig, out / "accuracy_vs_round.png", formats))

        fig, ax = plt.subplots(figsize=(COLUMN, 2.4))
        drawn = False
        client = _forgotten_client(rows)
        for k, t in enumerate(topologies):
            rf = history.read_h5(out / "runs" / f"{t}-s{seeds[0]}" / "history.h5")
            rounds = int(rf.attrs["rounds_done"])
            mixings = history.stored_mixings(rf, rounds)
            if len(mixings) != rounds or client is None:
                continue
            from .ledger import share_history

            h = share_history(mixings, client)
            others = np.delete(np.arange(h.shape[1]), client)
            ax.plot(np.arange(1, rounds + 1), h[:, others].mean(axis=1), ls=LINESTYLES[k % 4], label=t)
            drawn = True
        ax.set(title="the forgotten client's share of the other nodes' models", xlabel="round",
               ylabel="share (mean over the other nodes)", xscale="log")
        if drawn:
            ax.legend()
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / "influence_share_vs_round.png", formats))

        asr = any(r.get("ASR") is not None for r in rows)
        fa_key = "FA_heldout_gap_to_retrain" if any(r.get("FA_heldout_gap_to_retrain") is not None for r in rows) \
            else "FA_gap_to_retrain"
        panels = [(fa_key, "forget accuracy" + (" (held out)" if "heldout" in fa_key else "") + " − Retrain's",
                   "gap (points)", 1.0),
                  ("MIA_gap_to_retrain", "MIA − Retrain's", "gap (AUC x 100)", 1.0),
                  ("comm_bytes", "communication of the method", "bytes sent (MB)", 1e-6)]
        if asr:
            panels.append(("ASR_gap_to_retrain", "attack success rate − Retrain's", "gap (points)", 1.0))
        fig, axes = plt.subplots(1, len(panels), figsize=(FULL, 2.5))
        for ax, (key, title, ylabel, scale) in zip(axes, panels):
            _dodged_errorbars(ax, ticks, {m: [[v * scale for v in values(key, t, m)] for t in order] for m in methods})
            ax.set(title=title, ylabel=ylabel, xlabel="topology (spectral gap)")
            if len(order) > 3:
                ax.tick_params(axis="x", rotation=45, labelsize=5)
            if key == "comm_bytes":  # methods differ by orders of magnitude, and some send nothing
                top = max([v * scale for t in order for m in methods for v in values(key, t, m)], default=1.0)
                ax.set_yscale("symlog", linthresh=0.01)
                ax.set_ylim(0, 3 * max(top, 0.01))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        paths.append(_save(fig, out / "quality_and_cost_vs_spectral_gap.png", formats))
    return paths


def _forgotten_client(rows: list[dict]) -> int | None:
    clients = rows[0].get("forgotten_clients") if rows else None
    return int(clients[0]) if clients else None
