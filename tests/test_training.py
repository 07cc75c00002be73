"""The engine's training against independent numpy/scipy computations."""
import numpy as np
import pytest
import torch

from p2pforget import Engine, config, forget

from reference import gradient, hessian, objective, split, sum_objective_optimum


def test_numpy_reference_derivatives_match_torch():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((15, 4)), rng.integers(0, 3, 15)
    theta = rng.standard_normal(15)
    t = torch.tensor(theta, requires_grad=True)
    W, b = t[:12].view(3, 4), t[12:]
    loss = torch.nn.functional.cross_entropy(torch.tensor(x) @ W.T + b, torch.tensor(y)) + 0.05 * (t * t).sum()
    g, = torch.autograd.grad(loss, t, create_graph=True)
    H = torch.stack([torch.autograd.grad(g[i], t, retain_graph=True)[0] for i in range(15)])
    assert abs(loss.item() - objective(theta, x, y, 3, 0.1)) < 1e-12
    np.testing.assert_allclose(gradient(theta, x, y, 3, 0.1), g.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(hessian(theta, x, y, 3, 0.1), H.numpy(), atol=1e-12)


def test_star_fedavg_matches_numpy_loop():
    cfg = config.from_dict({
        "run": {"seed": 1, "rounds": 7},
        "topology": {"kind": "star", "n_clients": 5},
        "data": {"n_samples_per_client": 25, "partition": "dirichlet", "alpha": 0.5,
                 "gaussian_logistic": {"n_features": 6, "n_classes": 4}},
        "model": {"kind": "logistic"},
        "train": {"lr": 0.4, "local_steps": 3, "batch_size": 0, "dtype": "float64", "weight_decay": 0.01},
    })
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    d = engine.data
    g = engine.init_params[0].numpy().copy()
    for _ in range(cfg.run.rounds):
        local = []
        for i in range(5):
            theta = g.copy()
            for _ in range(3):
                theta -= 0.4 * gradient(theta, d.x[i], d.y[i], 4, 0.01)
            local.append(theta)
        g = np.mean(local, axis=0)  # equal sample counts: FedAvg weights are uniform
    trained = engine.network.gather()
    assert trained.shape == (5, 6 * 4 + 4)
    assert np.abs(trained - g).max() < 1e-10
    assert np.abs(g - engine.init_params[0].numpy()).max() > 0.1  # training moved the model


@pytest.mark.parametrize("kind,n", [("ring", 6), ("torus", 9), ("erdos_renyi", 8)])
def test_gradient_tracking_reaches_centralized_optimum(kind, n):
    cfg = config.from_dict({
        "run": {"seed": 2},
        "topology": {"kind": kind, "n_clients": n, "erdos_renyi": {"p": 0.5}},
        "data": {"n_samples_per_client": 20, "partition": "dirichlet", "alpha": 1.0,
                 "holdout_fraction": 0.0, "gaussian_logistic": {"n_features": 3, "n_classes": 3}},
        "train": {"algorithm": "gradient_tracking", "lr": 0.15, "batch_size": 0, "dtype": "float64", "weight_decay": 0.3},
    })
    engine = Engine(config=cfg)
    engine.train(500, progress=False)
    d = engine.data
    opt = sum_objective_optimum(list(d.x), list(d.y), 3, 0.3, np.zeros(12))
    err = np.linalg.norm(engine.network.gather() - opt, axis=1) / np.linalg.norm(opt)
    assert err.max() < 1e-6, err
    assert split(opt, 3, 3)[0].std() > 0.05  # a non-trivial optimum


def test_dsgd_single_round_is_mix_of_local_steps(small_cfg):
    engine = Engine(config=small_cfg)
    x0 = engine.params.numpy().copy()
    engine.step()
    d = engine.data
    stepped = np.stack([x0[i] - 0.3 * gradient(x0[i], d.x[i], d.y[i], 3, small_cfg.train.weight_decay) for i in range(6)])
    np.testing.assert_allclose(engine.params.numpy(), engine.network.base_mixing.toarray() @ stepped, rtol=0, atol=1e-13)


def test_minibatches_are_seeded_per_client_and_round(small_cfg):
    cfg = config.replace(small_cfg, train={"batch_size": 5})
    a, b = Engine(config=cfg), Engine(config=cfg)
    xa, xb, xc = a.batches.minibatch((3, 0))["x"], b.batches.minibatch((3, 0))["x"], a.batches.minibatch((4, 0))["x"]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert xa.shape == (6, 5, 4)


def test_gradient_tracking_requires_one_local_step(small_cfg):
    with pytest.raises(ValueError, match="local_steps = 1"):
        Engine(config=config.replace(small_cfg, train={"algorithm": "gradient_tracking", "local_steps": 2}))


@pytest.mark.parametrize("kind,lr,rounds,acc", [("mlp", 0.3, 40, 0.6), ("cnn", 1.0, 60, 0.35)])
def test_nonconvex_models_learn_digits(kind, lr, rounds, acc):
    cfg = config.from_dict({
        "topology": {"kind": "ring", "n_clients": 4},
        "data": {"kind": "digits", "n_samples_per_client": 100, "n_test": 200},
        "model": {"kind": kind, kind: {"hidden": 32}},
        "train": {"lr": lr, "local_steps": 2, "batch_size": 32},
    })
    engine = Engine(config=cfg)
    engine.train(rounds, progress=False)
    assert engine.metrics["test_acc_mean"][-1] > acc  # chance is 0.1
    assert engine.metrics["loss_mean"][-1] < engine.metrics["loss_mean"][0]
