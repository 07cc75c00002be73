"""Figures: every panel labelled with units and a legend, percent accuracy, symlog where a series
reaches machine precision, and PNG/PDF/SVG output."""
import numpy as np
import pytest

from p2pforget import config, experiment, report
from p2pforget.__main__ import main


@pytest.fixture
def figures(monkeypatch):
    captured = []
    real = report._save

    def keep(fig, path, formats=report.FORMATS):
        captured.append(fig)
        return real(fig, path, formats)

    monkeypatch.setattr(report, "_save", keep)
    return captured


def _metrics(consensus):
    return {"round": np.array([1, 2, 3]), "loss_mean": np.array([1.0, 0.5, 0.3]), "test_acc_mean": np.array([0.5, 0.7, 0.8]),
            "test_acc_min": np.array([0.4, 0.6, 0.7]), "consensus_distance": np.array(consensus),
            "bytes_sent": np.array([10.0, 10.0, 10.0])}


def _axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def test_metrics_figure_labels_units_legends_and_symlog(tmp_path, figures):
    report.plot_metrics(_metrics([1e-2, 1e-16, 1e-16]), tmp_path / "m.png")
    axes = _axes(figures[-1])
    assert len(axes) == 5
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    acc = next(ax for ax in axes if ax.get_title() == "test accuracy")
    assert "%" in acc.get_ylabel() and acc.lines[0].get_ydata().tolist() == pytest.approx([50.0, 70.0, 80.0])
    consensus = next(ax for ax in axes if ax.get_title() == "consensus distance")
    assert consensus.get_yscale() == "symlog"
    report.plot_metrics(_metrics([1e-2, 1e-3, 1e-4]), tmp_path / "m2.png")
    assert next(ax for ax in _axes(figures[-1]) if ax.get_title() == "consensus distance").get_yscale() == "log"
    vs_bytes = next(ax for ax in _axes(figures[-1]) if ax.get_title() == "test accuracy vs communication")
    assert vs_bytes.lines[0].get_xdata().tolist() == pytest.approx([1e-5, 2e-5, 3e-5])


def test_comparison_has_seed_bands_a_legend_in_every_panel_and_no_empty_decades(tmp_path, figures):
    ring = [{k: list(v) for k, v in _metrics(c).items()} for c in ([1e-2, 1e-3, 1e-4], [2e-2, 2e-3, 3e-4])]
    star = [{k: list(v) for k, v in _metrics([1e-16, 1e-16, 1e-16]).items()}] * 2
    report.plot_comparison({"ring": ring, "star": star}, tmp_path / "c.png")
    fig = figures[-1]
    axes = _axes(fig)
    assert fig.get_figwidth() == report.FULL
    assert len(axes) == 4 and all(ax.get_legend() is not None and ax.get_ylabel() and ax.get_xlabel() for ax in axes)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["ring (2 seeds)", "star (2 seeds)"]
    assert len(axes[0].collections) == 2  # one min-to-max band per topology
    ring_line, star_line = axes[0].lines[:2]
    assert ring_line.get_linestyle() != star_line.get_linestyle()  # one line never hides the other
    consensus = axes[2]
    assert consensus.get_yscale() == "log" and consensus.get_ylim()[0] == pytest.approx(1e-5)  # not down to 1e-16
    star_consensus = consensus.lines[1]
    assert star_consensus.get_ydata().tolist() == pytest.approx([1e-5] * 3)  # drawn on the bottom edge, and named
    assert consensus.get_legend().get_texts()[1].get_text() == "star (2 seeds): exact, on the bottom edge"


def test_unlearning_figure_writes_values_spread_and_the_attack_on_its_own_axis(tmp_path, figures):
    m = {name: {"FA": {"mean": fa, "min": fa - 5, "max": fa + 5}, "RA": {"mean": 80.0, "min": 78.0, "max": 82.0},
                "TA": {"mean": 75.0, "min": 70.0, "max": 77.0}, "MIA": {"mean": mia, "min": mia, "max": mia}}
         for name, fa, mia in (("trained", 90.0, 60.0), ("retrained", 60.0, 50.0), ("unlearned", 62.0, 51.0))}
    report.plot_unlearning(m, tmp_path / "u.png")
    acc, mia = _axes(figures[-1])
    assert "%" in acc.get_ylabel() and "AUC" in mia.get_ylabel() and "%" not in mia.get_ylabel()
    assert [t.get_text() for t in acc.get_xticklabels()] == ["FA", "RA", "TA"]
    assert len(acc.containers) >= 3 and any(c.errorbar is not None for c in acc.containers if hasattr(c, "errorbar"))
    written = {t.get_text() for t in acc.texts}
    assert {"90.0", "60.0", "62.0", "80.0", "75.0"} <= written and {"60.0", "50.0", "51.0"} <= {t.get_text() for t in mia.texts}


def test_fa_traces_keep_unlearning_and_training_rounds_on_separate_axes(tmp_path, figures):
    report.plot_fa_traces({"unlearned": [80.0, 60.0, 58.0], "retrained": [30.0, 50.0, 55.0, 57.0]}, tmp_path / "t.png")
    left, right = _axes(figures[-1])
    assert left.get_xlabel() == "unlearning round" and right.get_xlabel() == "Retrain's training round"
    assert len(left.lines) == 1 and len(right.lines) == 1


def test_influence_share_has_one_legend_entry_per_kind_of_line(tmp_path, figures):
    W = np.full((4, 4), 0.25)
    report.plot_influence_share([W, W, W], 1, tmp_path / "i.png")
    (ax,) = _axes(figures[-1])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["other nodes, min to max (3)", "other nodes, mean", "node 1 (the client itself)", "uniform 1/n = 0.25"]


def test_report_writes_every_requested_format(tmp_path, capsys):
    out = tmp_path / "run"
    experiment.run(config.from_dict({"run": {"rounds": 3}, "topology": {"n_clients": 4},
                                     "data": {"n_samples_per_client": 8, "n_test": 10}}), out=out, progress=False)
    assert main(["report", str(out), "--format", "png,pdf,svg"]) == 0
    for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")):
        assert (out / f"metrics.{fmt}").read_bytes().startswith(magic)
    assert main(["report", str(out), "--format", "gif"]) == 2
    assert "png, pdf, svg" in capsys.readouterr().err
