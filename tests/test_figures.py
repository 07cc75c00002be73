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


def test_comparison_has_a_legend_in_every_panel(tmp_path, figures):
    curves = {"ring": {k: list(v) for k, v in _metrics([1e-2, 1e-3, 1e-4]).items()},
              "star": {k: list(v) for k, v in _metrics([1e-16, 1e-16, 1e-16]).items()}}
    report.plot_comparison(curves, tmp_path / "c.png")
    axes = _axes(figures[-1])
    assert len(axes) == 4 and all(ax.get_legend() is not None and ax.get_ylabel() and ax.get_xlabel() for ax in axes)
    assert axes[2].get_yscale() == "symlog"


def test_report_writes_every_requested_format(tmp_path, capsys):
    out = tmp_path / "run"
    experiment.run(config.from_dict({"run": {"rounds": 3}, "topology": {"n_clients": 4},
                                     "data": {"n_samples_per_client": 8, "n_test": 10}}), out=out, progress=False)
    assert main(["report", str(out), "--format", "png,pdf,svg"]) == 0
    for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")):
        assert (out / f"metrics.{fmt}").read_bytes().startswith(magic)
    assert main(["report", str(out), "--format", "gif"]) == 2
    assert "png, pdf, svg" in capsys.readouterr().err
