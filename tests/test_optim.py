"""Local optimizers and schedules against torch.optim, their state in the engine (resume, ranks)."""
import numpy as np
import pytest
import torch

from p2pforget import config, optim
from p2pforget.config import TrainConfig
from p2pforget.engine import Engine


def _torch_run(kind, cfg, grads, theta0):
    p = torch.nn.Parameter(theta0.clone())
    if kind == "sgd":
        opt = torch.optim.SGD([p], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif kind == "adam":
        opt = torch.optim.Adam([p], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    else:
        opt = torch.optim.AdamW([p], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("kind,extra", [("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.8, "nesterov": True}),
                                        ("adam", {}), ("adamw", {"weight_decay": 0.1})])
def test_optimizers_match_torch_optim(kind, extra):
    cfg = TrainConfig(optimizer=kind, lr=0.05, **extra)
    r = np.random.default_rng(0)
    theta0 = torch.as_tensor(r.standard_normal((3, 5)))
    grads = [torch.as_tensor(r.standard_normal((3, 5))) for _ in range(6)]
    state = optim.init_state(kind, 3, 5, dtype=torch.float64, device="cpu")
    theta = theta0.clone()
    for g in grads:
        theta = optim.apply(theta, g, state, lr=cfg.lr, cfg=cfg, active=torch.ones(3))
    for row in range(3):
        ref = _torch_run(kind, cfg, [g[row] for g in grads], theta0[row])
        np.testing.assert_allclose(theta[row].numpy(), ref.numpy(), rtol=1e-12, atol=1e-14)


def test_schedules():
    warm = TrainConfig(lr=0.4, warmup_rounds=4, schedule="step", step_every=3, step_gamma=0.5)
    assert [optim.learning_rate(warm, r, 20) for r in range(10)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2])
    cos = TrainConfig(lr=1.0, schedule="cosine")
    assert [optim.learning_rate(cos, r, 4) for r in range(5)] == pytest.approx(
        [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0])


def _cfg(**train):
    return config.from_dict({"run": {"seed": 3, "rounds": 6}, "topology": {"kind": "ring", "n_clients": 5},
                             "data": {"n_samples_per_client": 12, "n_test": 20, "gaussian_logistic": {"n_features": 4}},
                             "model": {"kind": "mlp", "mlp": {"hidden": 6}}, "train": {"batch_size": 4, "local_steps": 2} | train})


def test_engine_sgd_momentum_is_the_per_client_torch_update_and_state_persists_and_resumes():
    cfg = _cfg(optimizer="sgd", momentum=0.9, lr=0.05, dtype="float64", weight_decay=0.0)
    engine = Engine(config=cfg)
    params0 = engine.params.clone()
    new = engine.compute.local_steps(engine.params)
    # the same two steps by hand: g from the engine's gradients at each iterate, torch's SGD rule
    p, buf = params0.clone(), torch.zeros_like(params0)
    for s in range(2):
        g, _ = engine.compute.gradients(p, engine.batches.minibatch((0, s)))
        buf = 0.9 * buf + g
        p = p - 0.05 * buf
    np.testing.assert_allclose(new.numpy(), p.numpy(), rtol=1e-10, atol=1e-12)
    engine.set_params(params0)
    engine.train(3, progress=False)
    assert "opt/momentum" in engine.optimizer_state  # kept across rounds
    state = engine.state()
    resumed = Engine(config=cfg)
    resumed.load_state(state)
    engine.train(3, progress=False)
    resumed.train(3, progress=False)
    assert torch.equal(engine.params, resumed.params)


def test_adam_trains_and_gradient_tracking_refuses_other_optimizers():
    engine = Engine(config=_cfg(optimizer="adamw", lr=0.01))
    engine.train(6, progress=False)
    assert engine.metrics["loss_mean"][-1] < engine.metrics["loss_mean"][0]
    with pytest.raises(ValueError, match="gradient_tracking"):
        Engine(config=_cfg(optimizer="adam", algorithm="gradient_tracking", local_steps=1))
