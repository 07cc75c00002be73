"""Many clients per process: vectorized batches, evaluation every k rounds, sparse graphs and
ledgers, fixed-point reductions, devices, and the vmap fallback."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from p2pforget import Engine, config, devices, ledger, seeding, topology, transport
from p2pforget.registry import MODELS


def _cfg(**sections):
    base = {"run": {"seed": 2, "rounds": 12}, "topology": {"kind": "ring", "n_clients": 9},
            "data": {"n_samples_per_client": 20, "n_test": 30}, "model": {"kind": "mlp", "mlp": {"hidden": 6}},
            "train": {"batch_size": 5, "local_steps": 2, "dtype": "float64"}}
    for k, v in sections.items():
        base[k] = base.get(k, {}) | v
    return config.from_dict(base)


def test_batches_are_uniform_distinct_and_keyed_by_client():
    retained = np.ones((3, 10), dtype=bool)
    retained[2, 7:] = False
    counts = np.zeros((3, 10))
    for r in range(2000):
        keys = seeding.uniform_keys(5, np.arange(3), purpose="batch", counters=(r, 0), width=10)
        idx, mask = seeding.sample_without_replacement(keys, retained, 4)
        assert all(len(set(row)) == 4 for row in idx)
        np.add.at(counts, (np.repeat(np.arange(3), 4), idx.ravel()), mask.ravel())
    np.testing.assert_allclose(counts[:2] / 2000, 0.4, atol=0.05)        # 4 of 10, uniformly
    np.testing.assert_allclose(counts[2, :7] / 2000, 4 / 7, atol=0.05)   # 4 of the 7 retained
    assert counts[2, 7:].sum() == 0
    alone = seeding.uniform_keys(5, np.array([1]), purpose="batch", counters=(3, 0), width=10)
    together = seeding.uniform_keys(5, np.arange(3), purpose="batch", counters=(3, 0), width=10)
    assert np.array_equal(alone[0], together[1])  # any rank count draws the same batches
    assert not np.array_equal(together[0], together[1])


def test_metrics_every_k_rounds_equal_the_every_round_metrics():
    every = Engine(config=_cfg())
    every.train(12, progress=False)
    sparse = Engine(config=_cfg(run={"eval_every": 5}))
    sparse.train(12, progress=False)
    assert sparse.metrics["round"] == [5, 10, 12] and every.metrics["round"] == list(range(1, 13))
    for name in ("loss_mean", "test_acc_mean", "test_acc_min", "consensus_distance"):
        assert sparse.metrics[name] == [every.metrics[name][r - 1] for r in (5, 10, 12)]
    assert sparse.metrics["bytes_sent"] == every.metrics["bytes_sent"]
    assert torch.equal(sparse.params, every.params)
    only_end = Engine(config=_cfg(run={"eval_every": 0}))
    only_end.train(12, progress=False)
    assert only_end.metrics["round"] == [12] and only_end.metrics["loss_mean"] == [every.metrics["loss_mean"][-1]]


def test_default_vmap_width_is_bit_identical_to_width_8():
    runs = {}
    for width in (8, 256):
        e = Engine(config=_cfg(run={"vmap_width": width}, topology={"n_clients": 300}, data={"n_samples_per_client": 6},
                               train={"dtype": "float32"}))
        e.train(2, progress=False)
        runs[width] = e.params
    assert torch.equal(runs[8], runs[256])


def test_consensus_distance_from_fixed_point_mean_matches_numpy():
    e = Engine(config=_cfg(topology={"kind": "erdos_renyi", "erdos_renyi": {"p": 0.5}}))
    e.train(3, progress=False)
    P = e.params.numpy()
    mean = e.network.mean(e.params).numpy()
    np.testing.assert_allclose(mean, P.mean(axis=0), rtol=0, atol=1e-15 * np.abs(P).max() * 9 * 2 ** 4)
    expected = np.linalg.norm(P - P.mean(axis=0), axis=1).mean()
    assert e.metrics["consensus_distance"][-1] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kind", ["ring", "star"])
def test_sparse_ledger_with_room_for_every_client_equals_the_full_ledger(kind):
    full = Engine(config=_cfg(topology={"kind": kind, "dropout": 0.3 if kind == "ring" else 0.0}))
    sparse = Engine(config=_cfg(topology={"kind": kind, "dropout": 0.3 if kind == "ring" else 0.0},
                                ledger={"kind": "sparse", "keep": 9}))
    full.train(12, progress=False)
    sparse.train(12, progress=False)
    np.testing.assert_allclose(sparse.ledger.C.dense(9).numpy(), full.ledger.C.numpy(), rtol=0, atol=1e-12)
    assert sparse.ledger.C.dropped.abs().max() < 1e-12
    np.testing.assert_allclose(sparse.ledger.shares([2, 5]).numpy(), full.ledger.shares([2, 5]).numpy(), atol=1e-12)


def test_sparse_ledger_error_is_bounded_by_the_dropped_mass():
    cfg = dict(topology={"kind": "erdos_renyi", "n_clients": 16, "erdos_renyi": {"p": 0.4}}, run={"rounds": 10})
    full = Engine(config=_cfg(**cfg))
    small = Engine(config=_cfg(**cfg, ledger={"kind": "sparse", "keep": 4}))
    full.train(10, progress=False)
    small.train(10, progress=False)
    C, kept, dropped = full.ledger.C.numpy(), small.ledger.C.dense(16).numpy(), small.ledger.C.dropped.numpy()
    np.testing.assert_allclose(kept.sum(axis=1) + dropped, 10.0, rtol=1e-12)  # mass is conserved
    assert dropped.min() > 0  # something was cut
    err = C - kept
    assert err.min() > -1e-12  # kept entries are lower bounds ...
    np.testing.assert_allclose(err.sum(axis=1), dropped, rtol=1e-9)  # ... whose errors add up to the dropped mass
    share_err = full.ledger.shares(list(range(16))).numpy() - small.ledger.shares(list(range(16))).numpy()
    assert (share_err <= dropped[:, None] / 10 + 1e-12).all()


def test_ledger_off_trains_the_same_models_and_certified_dsgd_says_what_it_needs():
    on, off = Engine(config=_cfg()), Engine(config=_cfg(ledger={"kind": "off"}))
    on.train(4, progress=False)
    off.train(4, progress=False)
    assert torch.equal(on.params, off.params) and off.ledger is None and "ledger" not in off.state()
    from p2pforget.unlearn import forget
    with pytest.raises(ValueError, match=r'set \[ledger\] kind = "full"'):
        forget(off, clients=[1], method="certified", progress=False, first_step="ledger")


def test_large_sparse_ring_has_no_quadratic_arrays():
    g = topology.build_graph("ring", 100_000)
    W = topology.mixing_matrix(g)
    assert sp.issparse(W) and W.nnz == 300_000
    rows = __import__("p2pforget").aggregate.MixingRows.from_matrix(W, lo=500, hi=600)
    assert rows.idx.shape == (100, 3) and rows.idx[0].tolist() == [499, 500, 501]
    e = Engine(config=_cfg(topology={"n_clients": 5000}, model={"kind": "logistic"}, data={"n_samples_per_client": 4},
                           run={"eval_every": 0}, ledger={"kind": "off"}))
    assert e.network.base_mixing.nnz == 15_000
    e.step()
    s = e.network.stats()
    # ARPACK's tol 1e-10 on eigenvalues near 1 pins a gap of 5e-7 to ~2e-4 relative
    assert s.spectral_gap == pytest.approx(2 / 3 * (1 - np.cos(2 * np.pi / 5000)), rel=5e-4)
    assert not s.diameter_exact and s.diameter == 2500  # the 2-sweep bound is exact on a ring


def test_sparse_spectral_gap_matches_dense():
    g = topology.build_graph("erdos_renyi", 1500, seed=1, p=0.01)
    W = topology.mixing_matrix(g)
    dense = np.sort(np.abs(np.linalg.eigvalsh(W.toarray())))[::-1][1]
    assert topology.second_eigenvalue(W) == pytest.approx(dense, rel=1e-8)


def test_sparse_spectral_gap_is_the_same_on_every_call():
    W = topology.mixing_matrix(topology.build_graph("ring", 3000))
    gaps = {topology.second_eigenvalue(W) for _ in range(3)}
    assert len(gaps) == 1


def test_device_selection(monkeypatch):
    assert devices.select("cpu") == torch.device("cpu")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert transport.launched_local_rank() == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.select("cuda") == torch.device("cuda", 1)  # local rank 3 on a node with 2 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no GPU"):
        devices.select("cuda")


class _Branchy(nn.Module):
    """Data-dependent Python control flow: vmap cannot batch it."""

    def __init__(self, n_features, n_classes):
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)

    def forward(self, x):
        out = self.lin(x.reshape(x.shape[0], -1))
        return out if out.sum() > 0 else -out


class _RefusesBatches(nn.Module):
    """Fails under vmap with a message that does not name vmap, as torch 2.11's attention does
    ("attn_bias: wrong shape (batch dimension)"); ``broken`` fails always: a model's own bug."""

    def __init__(self, n_features, n_classes, *, broken=False):
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)
        self.broken = broken

    def forward(self, x):
        if self.broken or torch._C._functorch.is_batchedtensor(x):
            raise RuntimeError("attn_bias: wrong shape (batch dimension)")
        return self.lin(x.reshape(x.shape[0], -1))


def test_any_vmap_failure_falls_back_and_a_models_own_error_still_surfaces():
    for name, broken in (("refuses_batches_test", False), ("broken_test", True)):
        if name not in MODELS.names():
            MODELS.register(name, help="a test model vmap cannot batch")(lambda cfg, input_shape, n_classes, broken=broken:
                                  _RefusesBatches(int(np.prod(input_shape)), n_classes, broken=broken))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = Engine(config=_cfg(model={"kind": "refuses_batches_test"}))
        e.train(2, progress=False)
    assert not e.compute.vectorized and e.round == 2 and np.isfinite(e.metrics["loss_mean"][-1])
    assert sum("cannot be vectorized" in str(w.message) and "attn_bias" in str(w.message) for w in caught) == 1
    e = Engine(config=_cfg(model={"kind": "broken_test"}))
    with pytest.raises(RuntimeError, match="attn_bias"):
        e.train(1, progress=False)
    assert e.compute.vectorized  # the loop failed too: nothing was switched


def test_models_vmap_cannot_batch_fall_back_to_a_loop_once():
    if "branchy_test" not in MODELS.names():
        MODELS.register("branchy_test", help="a test model with a data-dependent branch")(lambda cfg, input_shape, n_classes: _Branchy(int(np.prod(input_shape)), n_classes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = Engine(config=_cfg(model={"kind": "branchy_test"}))
        e.train(3, progress=False)
    messages = [str(w.message) for w in caught if "cannot be vectorized" in str(w.message)]
    assert len(messages) == 1 and not e.compute.vectorized
    assert np.isfinite(e.metrics["loss_mean"][-1]) and e.round == 3


def test_edge_dropout_works_on_edge_arrays():
    g = topology.build_graph("erdos_renyi", 40, seed=3, p=0.2)
    for r in range(3):
        via_graph = topology.mixing_matrix(topology.drop_edges(g, 0.4, seed=7, round=r))
        via_edges = topology.mixing_from_edges(40, topology.kept_edges(topology.edge_array(g), 0.4, seed=7, round=r))
        assert (via_graph != via_edges).nnz == 0
    e = Engine(config=_cfg(topology={"n_clients": 50_000, "dropout": 0.3}, model={"kind": "logistic"},
                           data={"n_samples_per_client": 2}, run={"eval_every": 0}, ledger={"kind": "off"}))
    W = e.network.mixing_at(5)
    assert W.shape == (50_000, 50_000) and 50_000 < W.nnz < 150_000
    topology.validate_mixing(W)


def test_the_default_ledger_is_dense_up_to_its_limit_and_sparse_above():
    limit = config.LedgerConfig.FULL_UP_TO
    small = Engine(config=_cfg(topology={"n_clients": limit}, data={"n_samples_per_client": 2, "n_test": 4}))
    big = Engine(config=_cfg(topology={"n_clients": limit + 1}, data={"n_samples_per_client": 2, "n_test": 4}))
    assert isinstance(small.ledger.C, torch.Tensor) and small.ledger.C.shape == (limit, limit)
    assert isinstance(big.ledger.C, ledger.SparseRows)
    big.step()
    # after one ring round node 0 holds itself and its two neighbours (1 and n - 1), 1/3 each
    np.testing.assert_allclose(big.ledger.shares([0, 1, 2, limit])[0].numpy(), [1 / 3, 1 / 3, 0, 1 / 3])


def test_minibatch_training_keeps_the_inputs_once():
    engine = Engine(config=_cfg(train={"dtype": "float32"}, run={"eval_every": 3}))
    assert np.shares_memory(engine.batches.raw_inputs.numpy(), engine.data.x)  # the data's own float64 array, not a copy
    engine.train(6, progress=False)                                  # minibatches and two evaluations
    assert engine.batches._cast is None                               # no float32 copy of every input was made
    batch = engine.batches.full()                                      # a full batch makes it, once
    assert batch["x"].dtype == torch.float32 and engine.batches.x is batch["x"]
    np.testing.assert_array_equal(batch["x"].numpy(), engine.data.x.astype(np.float32))
