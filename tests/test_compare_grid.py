"""The method x topology x seed grid: resumable, the same CSV in one process or as array tasks."""
import csv
from pathlib import Path

import pytest

from p2pforget import compare, config, report
from p2pforget.__main__ import main

CFG = {"run": {"seed": 0, "rounds": 6, "eval_every": 2}, "topology": {"n_clients": 6},
       "data": {"n_samples_per_client": 12, "n_test": 20, "gaussian_logistic": {"n_features": 4}},
       "model": {"kind": "logistic"}, "train": {"dtype": "float64", "weight_decay": 0.05, "lr": 0.3},
       "unlearn": {"clients": [2], "finetune": {"rounds": 2}, "certified": {"noise": False}}}
SPEC = compare.Grid(topologies=("ring", "star"), methods=("retrain", "finetune", "certified"), seeds=(0, 1))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_writes_every_cell_and_resumes_without_rerunning(tmp_path, monkeypatch):
    cfg = config.from_dict(CFG)
    figures = {}
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path, formats=report.FORMATS:
                        figures.setdefault(Path(path).stem, fig) and real_save(fig, path, formats))
    rows = compare.grid(cfg, SPEC, out=tmp_path / "g")
    assert len(rows) == 12
    table = _rows(tmp_path / "g" / "compare.csv")
    assert [(r["topology"], r["method"], r["seed"]) for r in table][:3] == [("ring", "retrain", "0"), ("ring", "retrain", "1"),
                                                                            ("ring", "finetune", "0")]
    retrain = [r for r in table if r["method"] == "retrain"]
    assert all(float(r["FA_gap_to_retrain"]) == 0.0 and float(r["bytes_ratio_to_retrain"]) == 1.0 for r in retrain)
    md = (tmp_path / "g" / "compare.md").read_text()
    before = [line for line in md.splitlines() if "trained (before)" in line]  # the do-nothing line per topology
    assert len(before) == 2 and all(line.endswith("do nothing |") for line in before)
    ring_trained_fa = [float(r["FA_trained"]) for r in table if r["topology"] == "ring" and r["method"] == "retrain"]
    assert f"| {sum(ring_trained_fa) / 2:.1f} ± " in before[0]
    star = [r for r in table if r["topology"] == "star"]
    assert all(float(r["spectral_gap"]) == 1.0 for r in star)
    for name in ("compare.md", "timing.csv", "accuracy_vs_round.png", "influence_share_vs_round.png",
                 "quality_and_cost_vs_spectral_gap.png", "quality_and_cost_vs_spectral_gap.pdf"):
        assert (tmp_path / "g" / name).is_file()
    _check_grid_figures(figures)

    # a killed grid: one cell lost; the rerun computes that cell only, and no training
    (tmp_path / "g" / "cells" / "star__finetune__s1.json").unlink()
    calls = []
    import p2pforget.unlearn as unlearn
    real = unlearn.forget
    monkeypatch.setattr(unlearn, "forget", lambda *a, **k: calls.append(k["method"]) or real(*a, **k))
    monkeypatch.setattr(compare.experiment, "run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    compare.grid(cfg, SPEC, out=tmp_path / "g")
    assert calls == ["finetune"]
    assert _rows(tmp_path / "g" / "compare.csv") == table


def _check_grid_figures(figures):
    """Paper-ready: full text width, topologies as named categories (ordered by spectral gap, never
    joined by a line), every method's point with its 90% interval over the two seeds, one legend."""
    from matplotlib.container import ErrorbarContainer

    quality = figures["quality_and_cost_vs_spectral_gap"]
    assert quality.get_figwidth() == report.FULL
    axes = [ax for ax in quality.axes if ax.axison]
    assert [ax.get_title() for ax in axes] == ["forget accuracy (held out) − Retrain's", "MIA − Retrain's",
                                               "communication of the method"]
    for ax in axes:
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks[0].startswith("ring\ngap") and ticks[1] == "star\ngap 1"
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 3 and all(c.lines[0].get_linestyle() == "None" for c in bars)
        assert all(c.has_yerr for c in bars)
    finetune = [c for c in axes[1].containers if isinstance(c, ErrorbarContainer)][1]
    segments = finetune.lines[2][0].get_segments()  # one interval per topology, from the two seeds' MIA gaps
    assert len(segments) == 2 and any(seg[1][1] > seg[0][1] for seg in segments)
    (legend,) = quality.legends
    assert [t.get_text() for t in legend.get_texts()] == ["retrain", "finetune", "certified"]
    comparison = [ax for ax in figures["comparison"].axes if ax.axison]
    assert len(comparison) == 5 and comparison[4].get_title().startswith("after unlearning: FA held-out")
    assert [t.get_text() for t in comparison[4].get_xticklabels()] == ["finetune", "certified"]
    assert len([c for c in comparison[4].containers if isinstance(c, ErrorbarContainer)]) == 2  # one per topology
    train, after = [ax for ax in figures["accuracy_vs_round"].axes if ax.axison]
    assert len(train.collections) == 2  # a seed band per topology
    assert [t.get_text() for t in after.get_xticklabels()] == ["retrain", "finetune", "certified"]
    assert len([c for c in after.containers if isinstance(c, ErrorbarContainer)]) == 2


def test_array_tasks_then_merge_give_the_same_csv(tmp_path, capsys):
    cfg = config.from_dict(CFG)
    compare.grid(cfg, SPEC, out=tmp_path / "one")
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(cfg))
    base = ["compare", str(path), "--topologies", "ring,star", "--methods", "retrain,finetune,certified", "--seeds", "0,1",
            "--out", str(tmp_path / "array")]
    assert main(base + ["--count-tasks"]) == 0
    assert capsys.readouterr().out.strip() == "4"  # the SLURM array size: 2 topologies x 2 seeds
    assert main(base + ["--merge"]) == 2
    assert "not done yet" in capsys.readouterr().err
    for task in range(4):
        assert main(base + ["--task", str(task)]) == 0
    assert main(base + ["--merge"]) == 0
    assert (tmp_path / "array" / "compare.csv").read_bytes() == (tmp_path / "one" / "compare.csv").read_bytes()
    assert main(base + ["--task", "4"]) == 2
    assert "numbered 0..3" in capsys.readouterr().err


def test_a_grid_stored_with_flat_dataset_keys_resumes_and_a_changed_option_is_named(tmp_path):
    from p2pforget import history

    cfg = config.from_dict(CFG)
    assert compare._claim(cfg, tmp_path, overwrite=False) is None
    stored = history.read_json(tmp_path / "grid.json")
    flat = stored["data"] | stored["data"].pop("gaussian_logistic")   # the form written before the kind tables
    for kind in ("pacs_like", "image_folder", "captions_synth", "flickr30k", "coco_captions"):
        flat.pop(kind)
    history.write_json(tmp_path / "grid.json", stored | {"data": flat})
    assert compare._claim(cfg, tmp_path, overwrite=False) is None
    changed = config.replace(cfg, data={"gaussian_logistic": {"n_features": 5}})
    assert "data.gaussian_logistic: {'n_features': 4" in compare._claim(changed, tmp_path, overwrite=False)
