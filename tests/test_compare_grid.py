"""The method x topology x seed grid: resumable, the same CSV in one process or as array tasks."""
import csv

import pytest

from p2pforget import compare, config
from p2pforget.__main__ import main

CFG = {"run": {"seed": 0, "rounds": 6, "eval_every": 2}, "topology": {"n_clients": 6},
       "data": {"n_samples_per_client": 12, "n_test": 20, "n_features": 4},
       "model": {"kind": "logistic"}, "train": {"dtype": "float64", "weight_decay": 0.05, "lr": 0.3},
       "unlearn": {"clients": [2], "finetune": {"rounds": 2}, "certified": {"noise": False}}}
SPEC = compare.Grid(topologies=("ring", "star"), methods=("retrain", "finetune", "certified"), seeds=(0, 1))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_writes_every_cell_and_resumes_without_rerunning(tmp_path, monkeypatch):
    cfg = config.from_dict(CFG)
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
                 "quality_and_cost_vs_spectral_gap.png"):
        assert (tmp_path / "g" / name).is_file()

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
