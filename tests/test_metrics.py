"""Metrics and mixing math against direct numpy computations."""
import numpy as np
import pytest
import torch

from p2pforget import aggregate, config, metrics, topology
from p2pforget.engine import consensus_distance


def test_gossip_mix_equals_matrix_product():
    g = topology.build_graph("erdos_renyi", 12, seed=3, p=0.4)
    W = topology.mixing_matrix(g)
    X = np.random.default_rng(0).standard_normal((12, 7))
    rows = aggregate.MixingRows.from_matrix(W, lo=0, hi=12)
    out = aggregate.gossip_mix(torch.as_tensor(X), rows.idx, rows.weight).numpy()
    np.testing.assert_allclose(out, W @ X, rtol=0, atol=1e-14)
    part = aggregate.MixingRows.from_matrix(W, lo=4, hi=9)  # a block of rows, as one MPI rank sees it
    np.testing.assert_allclose(aggregate.gossip_mix(torch.as_tensor(X), part.idx, part.weight).numpy(), (W @ X)[4:9],
                               rtol=0, atol=1e-14)


def test_fedavg_weights_by_sample_counts():
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    w = np.array([1.0, 3.0, 0.0])
    assert aggregate.FedAvg().aggregate(aggregate.Uploads(global_params=X[0], client_params=X, weights=w)).tolist() == [0.25, 0.75]
    np.testing.assert_allclose(aggregate.fedavg_matrix(w), np.tile([0.25, 0.75, 0.0], (3, 1)))


def test_consensus_distance():
    P = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    mean = P.mean(axis=0)
    assert consensus_distance(P) == pytest.approx(np.mean([np.hypot(*(p - mean)) for p in P]))


def test_logit_confidence_matches_softmax_formula():
    rng = np.random.default_rng(1)
    logits, labels = 5 * rng.standard_normal((20, 5)), rng.integers(0, 5, 20)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = (z / z.sum(axis=1, keepdims=True))[np.arange(20), labels]
    np.testing.assert_allclose(metrics.logit_confidence(logits, labels), np.log(p) - np.log1p(-p), rtol=1e-9)


def test_auc_equals_sklearn_and_the_pair_count():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    pos, neg = rng.normal(0.5, 1, (3, 40)).round(1), rng.normal(0, 1, (3, 30)).round(1)  # rounded: ties
    ours = metrics.auc(pos, neg)
    for k in range(3):
        truth = np.r_[np.ones(40), np.zeros(30)]
        assert ours[k] == pytest.approx(roc_auc_score(truth, np.r_[pos[k], neg[k]]), abs=1e-12)
        pairs = (pos[k][:, None] > neg[k][None, :]).mean() + 0.5 * (pos[k][:, None] == neg[k][None, :]).mean()
        assert ours[k] == pytest.approx(pairs, abs=1e-12)


def test_evaluate_counts_accuracy_per_node():
    from p2pforget import Engine

    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 4}, "data": {"n_samples_per_client": 10, "n_test": 40},
                            "train": {"dtype": "float64"}})
    engine = Engine(config=cfg)
    engine.train(5, progress=False)
    forgotten = np.zeros((4, 10), bool)
    forgotten[1, :4] = True
    sets = metrics.EvalSets.from_masks(engine, forgotten, ~forgotten)
    out = metrics.evaluate(engine, engine.params, sets, nodes=np.array([0, 2]))
    acc = []
    for i in (0, 2):
        pred = engine.model.forward(engine.params[i], torch.as_tensor(sets.x_test)).argmax(-1).numpy()
        acc.append(100 * np.mean(pred == sets.y_test))
    assert out["TA"]["mean"] == pytest.approx(np.mean(acc)) and out["TA"]["min"] == pytest.approx(min(acc))
    fa = [100 * np.mean(engine.model.forward(engine.params[i], torch.as_tensor(sets.x_forget)).argmax(-1).numpy()
                        == sets.y_forget) for i in (0, 2)]
    assert out["FA"]["max"] == pytest.approx(max(fa))
    assert len(sets.y_forget) == 4 and len(sets.y_retain) == 36
    assert 0 <= out["MIA"] <= 100
    # FA_heldout: the forgotten client's own held-out samples (FOUL's evaluation calls this FA)
    d = engine.data
    x_h, y_h = d.x_holdout[1][:d.holdout_counts[1]], d.y_holdout[1][:d.holdout_counts[1]]
    assert sets.clients_heldout and len(y_h) == 3  # 13 drawn so that 10 stay for training
    held = [100 * np.mean(engine.model.forward(engine.params[i], torch.as_tensor(x_h)).argmax(-1).numpy() == y_h)
            for i in (0, 2)]
    assert out["FA_heldout"]["mean"] == pytest.approx(np.mean(held))
    no_holdout = Engine(config=config.replace(cfg, data={"holdout_fraction": 0.0}))
    sets = metrics.EvalSets.from_masks(no_holdout, forgotten, ~forgotten)
    assert not sets.clients_heldout
    assert metrics.evaluate(no_holdout, no_holdout.params, sets, nodes=np.array([0]))["FA_heldout"] is None


def test_recall_at_k_against_a_direct_count():
    rng = np.random.default_rng(3)
    img, txt = rng.standard_normal((30, 8)), rng.standard_normal((150, 8))
    txt[::5] += 2 * img  # the first caption of each image resembles it
    out = metrics.recall_at_k(img, txt, captions_per_image=5, ks=(1, 5, 10))
    sim = img @ txt.T
    for k in (1, 5, 10):
        i2t = np.mean([len(set(np.argsort(-sim[i])[:k]) & set(range(5 * i, 5 * i + 5))) > 0 for i in range(30)])
        t2i = np.mean([j // 5 in np.argsort(-sim[:, j])[:k] for j in range(150)])
        assert out[f"i2t_R@{k}"] == pytest.approx(100 * i2t) and out[f"t2i_R@{k}"] == pytest.approx(100 * t2i)
    assert out["i2t_R@1"] > 50 and out["t2i_R@10"] > out["t2i_R@1"]


def test_membership_non_members_are_held_out_samples_of_the_forgotten_classes():
    from p2pforget import Engine, config, unlearn

    engine = Engine(config=config.from_dict({"topology": {"n_clients": 3},
                                             "data": {"n_samples_per_client": 40, "n_test": 30, "gaussian_logistic": {"n_classes": 3}}}))
    engine.train(3, progress=False)
    d = engine.data
    picked = unlearn.class_samples(engine, [1])
    forgotten = np.zeros_like(engine.retained)
    for j, idx in picked.items():
        forgotten[j, idx] = True
    sets = metrics.EvalSets.from_masks(engine, forgotten, engine.retained & ~forgotten)
    held = np.arange(d.y_holdout.shape[1])[None, :] < d.holdout_counts[:, None]
    clients = sorted(picked)
    assert sets.clients_heldout and len(sets.y_heldout) == int(held[clients].sum())  # FA_heldout: all of them
    assert 0 < sets.non_members.sum() < len(sets.y_heldout)
    np.testing.assert_array_equal(sets.non_members, sets.y_heldout == 1)
    # MIA = AUC of the members' scores against those non-members' only, node by node
    out = metrics.evaluate(engine, engine.params, sets, nodes=np.arange(3))
    x = {"forget": sets.x_forget, "heldout": sets.x_heldout[sets.non_members]}
    y = {"forget": sets.y_forget, "heldout": sets.y_heldout[sets.non_members]}
    phi = {k: np.stack([metrics.logit_confidence(engine.model.forward(p, torch.as_tensor(x[k], dtype=engine.dtype)).double().numpy(), y[k])
                        for p in engine.params]) for k in x}
    assert out["MIA"] == pytest.approx(100 * metrics.auc(phi["forget"], phi["heldout"]).mean(), rel=1e-9)


def test_per_row_evaluates_each_distinct_model_once():
    calls = []
    params = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [1.0, 2.0]])
    out = metrics._per_row(lambda p: calls.append(p.clone()) or float(p.sum()), params)
    assert out == [3.0, 1.0, 3.0, 3.0] and len(calls) == 2
