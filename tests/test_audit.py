"""The audit: held-out splits, bootstrap intervals, offline LiRA, and what the membership attack
detects (Retrain at chance, an overfit model well above)."""
import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from p2pforget import Engine, config, forget, experiment
from p2pforget.__main__ import main
from p2pforget.audit import bootstrap_auc, lira_offline, tpr_at_fpr
from p2pforget.config import DataConfig
from p2pforget.data import build
from p2pforget.data.synthetic import GaussianOptions


def test_holdout_split_is_disjoint_and_keeps_the_training_size():
    fd = build(DataConfig(n_samples_per_client=40, partition="dirichlet", alpha=0.1,
                          tables={"gaussian_logistic": GaussianOptions(n_features=6)}), n_clients=5, seed=2)
    assert fd.counts.tolist() == [40] * 5 and fd.holdout_counts.tolist() == [10] * 5  # 20% of 50
    for i in range(5):
        train = {tuple(r) for r in fd.x[i].round(12)}
        held = {tuple(r) for r in fd.x_holdout[i].round(12)}
        assert len(train) == 40 and len(held) == 10 and not train & held
        # held out from the client's own shard: the same classes (Dirichlet 0.1 skews them per client)
        assert set(fd.y_holdout[i]) <= set(fd.y[i]) | set(np.unique(fd.y_holdout[i]))
    plain = build(DataConfig(n_samples_per_client=40, holdout_fraction=0.0, tables={"gaussian_logistic": GaussianOptions(n_features=6)}), n_clients=5, seed=2)
    assert plain.x_holdout is None and plain.x.shape == (5, 40, 6)


def test_bootstrap_interval_and_paired_gap():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, (2, 300)), rng.normal(0.0, 1.0, (2, 300))
    ref = (rng.normal(0.0, 1.0, (2, 300)), rng.normal(0.0, 1.0, (2, 300)))
    out = bootstrap_auc(pos, neg, reference=ref, rounds=400, seed=1)
    expected = 100 * norm.cdf(1 / math.sqrt(2))  # AUC of N(1,1) vs N(0,1)
    assert out["ci"][0] < expected < out["ci"][1] and out["ci"][1] - out["ci"][0] < 12
    assert out["gap"]["ci"][0] > 10  # the gap to a chance-level reference is clearly positive


def test_lira_offline_is_the_gaussian_likelihood_and_tpr_at_fpr():
    shadow = np.array([[0.0, 1.0], [2.0, 3.0], [1.0, 2.0]])
    target = np.array([[2.0, 0.0]])
    expected = norm.cdf((target - shadow.mean(axis=0)) / shadow.std(axis=0, ddof=1))
    np.testing.assert_allclose(lira_offline(target, shadow), expected, rtol=1e-12)
    neg = np.arange(100) / 100.0
    # threshold 0.98: one negative (0.99) of 100 passes it, and two of the three positives
    assert tpr_at_fpr(np.array([0.995, 0.985, 0.5]), neg, fpr=0.01) == pytest.approx(2 / 3)


def _audited(partition, *, n_features, separation, wd, rounds):
    cfg = config.from_dict({
        "run": {"seed": 5},
        "topology": {"kind": "ring", "n_clients": 8},
        "data": {"n_samples_per_client": 150, "holdout_fraction": 0.5, "partition": partition, "alpha": 0.1,
                 "gaussian_logistic": {"n_features": n_features, "n_classes": 3, "separation": separation}},
        "train": {"algorithm": "gradient_tracking", "lr": 0.2, "dtype": "float64", "weight_decay": wd},
        "unlearn": {"method": "finetune", "mode": "keep_relay", "finetune": {"rounds": 1}},
        "audit": {"bootstrap": 200, "shadow_models": 8, "relearn_steps": 0},
    })
    engine = Engine(config=cfg)
    engine.train(rounds, progress=False)
    return forget(engine, clients=[0, 1, 2, 3], progress=False).audit


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_retrain_is_at_chance_and_an_overfit_model_is_detected(partition):
    """600 forgotten vs 600 held-out samples of the same four clients. Documented setting for the
    overfit model: 200 features, 3 weakly separated classes (separation 0.5), weight decay 1e-4."""
    audit = _audited(partition, n_features=200, separation=0.5, wd=1e-4, rounds=300)
    assert audit["n_forgotten"] == 600 and audit["n_heldout"] == 600
    assert abs(audit["mia"]["retrained"]["mean"] - 50) < 5, audit["mia"]
    assert audit["mia"]["trained"]["mean"] >= 60, audit["mia"]
    assert audit["mia"]["trained"]["gap"]["ci"][0] > 0  # the trained model is distinguishable from Retrain
    assert audit["lira"]["trained"]["auc"] >= audit["lira"]["retrained"]["auc"] + 3, audit["lira"]


def test_audit_command_updates_the_run(tmp_path, capsys):
    cfg = config.from_dict({
        "run": {"seed": 1, "rounds": 30},
        "topology": {"kind": "ring", "n_clients": 6},
        "data": {"n_samples_per_client": 20, "gaussian_logistic": {"n_features": 5}},
        "train": {"dtype": "float64", "weight_decay": 0.1},
        "unlearn": {"clients": [2], "certified": {"noise_seed": 0}},
        "audit": {"bootstrap": 50, "shadow_models": 2, "relearn_steps": 5},
    })
    experiment.run(cfg, out=tmp_path, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["audit"]["mia"]) == {"trained", "unlearned", "retrained"}
    assert report["requests"][0]["audit"] == report["audit"]
    assert main(["audit", str(tmp_path), "--set", "audit.bootstrap=20"]) == 0
    out = capsys.readouterr().out
    assert "MIA AUC" in out and "retrained" in out and "LiRA" in out
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["audit"]["bootstrap"] == 20 and again["requests"][-1]["audit"]["bootstrap"] == 20
    assert again["audit"]["mia"]["unlearned"]["mean"] == report["audit"]["mia"]["unlearned"]["mean"]  # same models
    assert main(["audit", str(tmp_path), "--set", "train.lr=1"]) == 2
    assert "only [audit] keys" in capsys.readouterr().err


def test_bootstrap_counts_give_the_same_aucs_as_resampling_the_scores():
    """The vectorized bootstrap against resampling the scores and ranking them (metrics.auc), for
    the very same draws, ties included."""
    from p2pforget import seeding
    from p2pforget.audit import bootstrap_auc
    from p2pforget.metrics import auc

    rng = np.random.default_rng(0)
    pos, neg = np.round(rng.normal(0.3, 1, (3, 40)), 1), np.round(rng.normal(0, 1, (3, 55)), 1)  # rounded: ties
    ref = (np.round(rng.normal(0, 1, (3, 40)), 1), np.round(rng.normal(0, 1, (3, 55)), 1))
    out = bootstrap_auc(pos, neg, reference=ref, rounds=200, seed=5)
    r = seeding.rng(5, purpose="audit/bootstrap")
    draws, gaps = [], []
    for _ in range(200):
        i, j = r.integers(0, 40, 40), r.integers(0, 55, 55)
        a = 100 * auc(pos[:, i], neg[:, j]).mean()
        draws.append(a)
        gaps.append(a - 100 * auc(ref[0][:, i], ref[1][:, j]).mean())
    np.testing.assert_allclose(out["ci"], [np.percentile(draws, 2.5), np.percentile(draws, 97.5)], atol=1e-9)
    np.testing.assert_allclose(out["gap"]["ci"], [np.percentile(gaps, 2.5), np.percentile(gaps, 97.5)], atol=1e-9)
    assert out["ci"][0] < out["mean"] < out["ci"][1]
