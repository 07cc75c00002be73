"""Push-sum on directed graphs against a numpy reference; it reaches the average where the
column-stochastic mixing alone does not."""
import numpy as np
import pytest
import torch

from p2pforget import config, topology
from p2pforget.engine import Engine


def _cfg(kind="ring", n=6, **extra):
    train = {"algorithm": "push_sum", "dtype": "float64", "batch_size": 0, "lr": 0.1, "same_init": False}
    return config.from_dict({"run": {"seed": 5, "rounds": 5, "eval_every": 0}, "topology": {"kind": kind, "n_clients": n} | extra,
                             "data": {"n_samples_per_client": 10, "n_test": 10, "gaussian_logistic": {"n_features": 5}},
                             "model": {"kind": "logistic"}, "train": train})


def test_push_matrix_is_column_stochastic_and_a_directed_cycle_on_a_ring():
    W = topology.mixing_from_edges(6, topology.edge_array(topology.build_graph("ring", 6, seed=0)), "metropolis")
    A = topology.push_matrix(W, 6).toarray()
    np.testing.assert_allclose(A.sum(axis=0), 1.0)
    assert all(A[(i + 1) % 6, i] == 0.5 and A[(i - 1) % 6, i] == 0 for i in range(6))  # i -> i + 1 only


@pytest.mark.parametrize("kind,extra", [("ring", {}), ("erdos_renyi", {"erdos_renyi": {"p": 0.6}})])
def test_push_sum_matches_a_numpy_reference(kind, extra):
    cfg = _cfg(kind, 7, **extra)
    engine, ref = Engine(config=cfg), Engine(config=cfg)
    A = topology.push_matrix(engine.network.base_mixing, 7).toarray()
    x, y = ref.params.numpy().copy(), np.ones((7, 1))
    for _ in range(5):
        engine.step()
        z = x / y
        x = A @ (x + (ref.compute.local_steps(torch.as_tensor(z)).numpy() - z))
        y = A @ y
        ref.round += 1
    np.testing.assert_allclose(engine.params.numpy(), x / y, atol=1e-10, rtol=0)


def test_push_sum_reaches_the_average_where_plain_column_mixing_does_not():
    cfg = config.replace(_cfg("erdos_renyi", 8, erdos_renyi={"p": 0.5}), train={"lr": 0.0})
    engine = Engine(config=cfg)
    start = engine.params.numpy().copy()
    A = topology.push_matrix(engine.network.base_mixing, 8).toarray()
    assert np.abs(A.sum(axis=1) - 1).max() > 0.1  # not row-stochastic: plain mixing is biased
    engine.train(150, progress=False)
    np.testing.assert_allclose(engine.params.numpy(), np.broadcast_to(start.mean(axis=0), start.shape), atol=1e-8)
    plain = np.linalg.matrix_power(A, 150) @ start
    assert np.abs(plain - start.mean(axis=0)).max() > 1e-3
    ring = Engine(config=config.replace(_cfg("ring", 6), train={"lr": 0.0}))
    first = ring.params.numpy().copy()
    ring.train(300, progress=False)
    np.testing.assert_allclose(ring.params.numpy(), np.broadcast_to(first.mean(axis=0), first.shape), atol=1e-8)


@pytest.mark.parametrize("kind,extra", [("ring", {}), ("erdos_renyi", {"erdos_renyi": {"p": 0.6}})])
def test_the_influence_ledger_follows_the_push_matrix(kind, extra):
    """The ledger is updated with the matrix push-sum mixes with, ``C <- A (C + I)``; its shares
    match explicit numpy products of the push matrices, not of the undirected Metropolis ones."""
    cfg = config.replace(_cfg(kind, 7, **extra), ledger={"kind": "full"})
    engine = Engine(config=cfg)
    A = topology.push_matrix(engine.network.base_mixing, 7).toarray()
    W = engine.network.base_mixing.toarray()
    C, wrong = np.zeros((7, 7)), np.zeros((7, 7))
    for _ in range(5):
        engine.step()
        C, wrong = A @ (C + np.eye(7)), W @ (wrong + np.eye(7))
    np.testing.assert_allclose(engine.ledger.C.numpy(), C, atol=1e-12, rtol=0)
    assert np.abs(C - wrong).max() > 0.1  # the two ledgers differ: the test tells them apart
