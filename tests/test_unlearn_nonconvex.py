"""Certified unlearning of a non-convex MLP trained with DSGD, judged against Retrain."""
import pytest

from p2pforget import Engine, config, forget


@pytest.mark.slow
def test_mlp_certified_matches_retrain_in_less_time():
    cfg = config.from_dict({
        "run": {"seed": 0},
        "topology": {"kind": "ring", "n_clients": 16},
        "data": {"n_samples_per_client": 30, "partition": "dirichlet", "alpha": 0.3,
                 "n_test": 600, "gaussian_logistic": {"n_features": 20, "n_classes": 3, "separation": 1.2}},
        "model": {"kind": "mlp", "mlp": {"hidden": 32}},
        "train": {"algorithm": "dsgd", "lr": 0.5, "local_steps": 2, "weight_decay": 1e-3},
        # No noise: the certificate needs a convex loss (certified = False for an MLP).
        "unlearn": {"certified": {"curvature": "ggn", "damping": 0.03, "averaging": "tree", "noise": False,
                                  "newton_steps": 1}},
    })
    engine = Engine(config=cfg)
    engine.train(500, progress=False)
    result = forget(engine, clients=[3], progress=False)
    m, cost = result.metrics, result.cost
    trained, unlearned, retrained = m["trained"], m["unlearned"], m["retrained"]
    # the forgotten client's data was memorized: forgetting it must show
    assert trained["FA"]["mean"] - retrained["FA"]["mean"] > 10
    assert trained["MIA"] - retrained["MIA"] > 8
    assert abs(unlearned["FA"]["mean"] - retrained["FA"]["mean"]) <= 3, m
    assert abs(unlearned["RA"]["mean"] - retrained["RA"]["mean"]) <= 2
    assert abs(unlearned["TA"]["mean"] - retrained["TA"]["mean"]) <= 2
    assert abs(unlearned["MIA"] - retrained["MIA"]) <= 5
    # Faster than Retrain in wall time (0.2-0.6x; a process's first curvature call also pays about a
    # second of torch.func set-up), but summing the d x d curvature (d = 771) moves more bytes and,
    # with the dense solve, costs more FLOPs than Retrain's 500 rounds (evaluation left out of both).
    assert cost["unlearn"].seconds < 0.75 * cost["retrain"].seconds, cost
    assert cost["unlearn"].flops > cost["retrain"].flops
    assert not result.certificate["certified"]
