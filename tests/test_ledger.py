"""The influence ledger against explicit numpy products of the stored mixing matrices."""
import numpy as np
import pytest

from p2pforget import config, experiment, history, ledger


def _explicit(Ws):
    """sum_{k<T} W_{T-1} ... W_k, multiplying the matrices out for every k."""
    T, n = len(Ws), Ws[0].shape[0]
    total = np.zeros((n, n))
    for k in range(T):
        P = np.eye(n)
        for t in range(k, T):
            P = Ws[t] @ P
        total += P
    return total


@pytest.mark.parametrize("kind,dropout,algorithm", [
    ("ring", 0.0, "dsgd"), ("torus", 0.0, "gradient_tracking"), ("erdos_renyi", 0.4, "dsgd"),
    ("small_world", 0.3, "gradient_tracking"), ("star", 0.0, "dsgd"),
])
def test_ledger_equals_products_of_stored_mixing_matrices(tmp_path, kind, dropout, algorithm):
    cfg = config.from_dict({
        "run": {"seed": 4, "rounds": 12},
        "topology": {"kind": kind, "n_clients": 9, "erdos_renyi": {"p": 0.5}, "dropout": dropout},
        "data": {"n_samples_per_client": 10, "n_test": 10},
        "train": {"algorithm": algorithm},
    })
    experiment.run(cfg, out=tmp_path, progress=False)
    rf = history.read_h5(tmp_path / "history.h5")
    Ws = history.stored_mixings(rf, 12)
    if dropout:
        assert not np.array_equal(Ws[0], Ws[1])
    C = rf.arrays["ledger/influence"]
    assert np.abs(C - _explicit(Ws)).max() < 1e-12
    assert np.abs(C.sum(axis=1) - 12).max() < 1e-12 and np.abs(C.sum(axis=0) - 12).max() < 1e-12
    np.testing.assert_allclose(ledger.influence(Ws), C, rtol=0, atol=1e-12)


def test_ring_shares_approach_uniform_at_the_rate_of_the_spectral_gap():
    from p2pforget import topology

    W = topology.mixing_matrix(topology.build_graph("ring", 10)).toarray()
    s = ledger.share_history([W] * 400, client=0)
    assert s[0, 0] == pytest.approx(1 / 3) and s[0, 5] == 0  # after one round only neighbours hold client 0
    assert np.abs(s[-1] - 0.1).max() < 0.01
    assert np.abs(s[-1] - 0.1).max() < np.abs(s[40] - 0.1).max()
