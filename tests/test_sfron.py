"""SFR-on: the saliency mask against a direct computation, the fast-slow update against a
hand-computed two-step example, and where it runs (only the nodes holding forget data on a
gossip graph; the hub on the star)."""
import warnings

import numpy as np
import pytest
import torch

from p2pforget import config
from p2pforget.engine import Engine
from p2pforget.unlearn import ForgetRequest, forget, sfron
from p2pforget.unlearn.sfron import SFRon, SFRonOptions, adaptive_forget_loss, fast_slow, saliency_mask


def test_fast_slow_matches_a_hand_computed_two_step_example():
    # theta0 = (1, 2), mask (1, 0), forget gradient (0.5, -1) every 2nd step, remain gradient = theta,
    # SGD lr 0.1 (cosine over 2 steps: 0.1 then 0.05), momentum 0.9, weight decay 0.01, alpha 4.
    # t=0: forget g = -4 (0.5, 0) -> d = (-1.99, 0.02), buf = d, theta = (1.199, 1.998)
    #      remain d = 1.01 theta = (1.21099, 2.01798), buf = 0.9 buf + d = (-0.58001, 2.03598),
    #      theta = (1.257001, 1.794402)
    # t=1: remain d = 1.01 theta, buf = (0.74756201, 3.64472802), theta -= 0.05 buf
    opts = SFRonOptions(steps=2, lr=0.1, momentum=0.9, weight_decay=0.01, forget_every=2, alpha=4.0, max_norm=0.0)
    theta = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    out = fast_slow(theta, forget_grad=lambda p, t: torch.tensor([[0.5, -1.0]], dtype=torch.float64),
                    remain_grad=lambda p, t: p.clone(), mask=torch.tensor([True, False]), options=opts)
    np.testing.assert_allclose(out.numpy(), [[1.2196228995, 1.612165599]], rtol=1e-12)


def test_forget_step_is_clipped_like_clip_grad_norm():
    opts = SFRonOptions(steps=1, lr=1.0, momentum=0.0, weight_decay=0.0, forget_every=1, alpha=2.0, max_norm=1.0)
    theta = torch.zeros(1, 2, dtype=torch.float64)
    out = fast_slow(theta, forget_grad=lambda p, t: torch.tensor([[3.0, 4.0]], dtype=torch.float64),
                    remain_grad=lambda p, t: torch.zeros_like(p), mask=torch.tensor([True, True]), options=opts)
    # g = -2 (3, 4), norm 10, scaled by 1 / (10 + 1e-6): theta moves +(0.6, 0.8) (ascent on the forget loss)
    np.testing.assert_allclose(out.numpy(), [[6.0 / (10 + 1e-6), 8.0 / (10 + 1e-6)]], rtol=1e-12)


def test_adaptive_weights_favour_the_samples_still_remembered():
    losses = torch.tensor([0.01, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    value = adaptive_forget_loss(losses, torch.ones(3, dtype=torch.float64), 0.5)
    c = 1.0 / (np.array([0.01, 1.0, 4.0]) ** 0.5 + 1e-15)
    w = c / c.sum()
    assert float(value.detach()) == pytest.approx(float((w * np.array([0.01, 1.0, 4.0])).sum()), rel=1e-12)
    g, = torch.autograd.grad(value, losses)  # the weights are constants: d/dl_i = w_i
    np.testing.assert_allclose(g.numpy(), w, rtol=1e-12)


UNMONITORED = config.StoppingConfig(rule="budget", guard=False)  # the method's own mechanics, its whole budget


def _cfg(kind, n):
    return config.from_dict({"run": {"seed": 4, "rounds": 5}, "topology": {"kind": kind, "n_clients": n},
                             "data": {"n_samples_per_client": 12, "n_test": 20, "gaussian_logistic": {"n_features": 5}},
                             "model": {"kind": "mlp", "mlp": {"hidden": 6}},
                             "train": {"batch_size": 4, "lr": 0.2, "dtype": "float64"},
                             "audit": {"after_forget": False}})


def _grad_sq(engine, client, idx, params=None):
    """The mean-CE gradient squared of ``client``'s samples ``idx`` at ``params`` (default: the
    engine's), by autograd on the module itself."""
    theta = (engine.params if params is None else params)[client].clone().requires_grad_(True)
    x = torch.as_tensor(engine.data.x[client][idx])
    y = torch.as_tensor(engine.data.y[client][idx])
    loss = torch.nn.functional.cross_entropy(engine.model.forward(theta, x), y)
    g, = torch.autograd.grad(loss, theta)
    return (g ** 2).detach()


def _minibatch_sq(engine, theta, x, y, size):
    """The mean over consecutive mini-batches of ``size`` samples of the squared mean-CE gradient."""
    out = []
    for k in range(0, len(y), size):
        t = theta.clone().requires_grad_(True)
        g, = torch.autograd.grad(torch.nn.functional.cross_entropy(engine.model.forward(t, x[k:k + size]), y[k:k + size]), t)
        out.append(g ** 2)
    return sum(out) / len(out)


def _remain_sq(engine, client, theta, key):
    """The mean over the engine's remain mini-batches ``(key, s)`` (enough of them to cover 12
    samples once) of the squared mean-CE gradient of ``client``'s batch."""
    out = []
    for s in range(3):  # 12 samples in batches of 4
        b = engine.batches.minibatch((key, s))
        real = b["mask"][client] > 0
        out.append(_minibatch_sq(engine, theta, b["x"][client][real], b["y"][client][real], 4))
    return sum(out) / len(out)


def test_saliency_mask_on_the_star_matches_a_direct_computation(monkeypatch):
    engine = Engine(config=_cfg("star", 4))
    engine.train(3, progress=False)
    seen = {}
    real = sfron.fast_slow

    def spy(params, **kwargs):
        seen["mask"] = kwargs["mask"]
        return real(params, **kwargs)

    monkeypatch.setattr(sfron, "fast_slow", spy)
    forgotten = np.arange(5)
    start = engine.params.clone()
    # the forget set in consecutive mini-batches of train.batch_size = 4: samples 0-3, then 4
    F_f = _minibatch_sq(engine, start[1], torch.as_tensor(engine.data.x[1][forgotten]),
                        torch.as_tensor(engine.data.y[1][forgotten]), 4)
    request = ForgetRequest.build(engine, samples={1: forgotten})
    SFRon().unlearn(engine, request, SFRonOptions(steps=1))
    # the remain statistics: each client's mean over its mini-batches, then a plain mean over clients
    F_r = sum(_remain_sq(engine, c, start[c], 35_000_000 + engine.round) for c in range(4)) / 4
    direct = (F_f + 1e-15) / (F_r + 1e-15) >= 1.0
    assert torch.equal(seen["mask"], direct) and 0 < int(direct.sum()) < direct.numel()
    assert torch.equal(saliency_mask(F_f, F_r, 1.0), direct)


def test_on_a_gossip_graph_only_the_node_holding_forget_data_changes():
    engine = Engine(config=_cfg("ring", 6))
    engine.train(3, progress=False)
    before = engine.params.clone()
    request = ForgetRequest.build(engine, samples={2: np.arange(4)})
    outcome = SFRon().unlearn(engine, request, SFRonOptions(steps=10))
    changed = (engine.params != before).any(dim=1).tolist()
    assert changed == [False, False, True, False, False, False] and outcome.comm_bytes == 0.0


def test_holders_placement_on_a_whole_client_request_says_it_changes_no_staying_node():
    engine = Engine(config=_cfg("ring", 6))
    engine.train(3, progress=False)
    before = engine.params.clone()
    with pytest.warns(UserWarning, match="no staying node changes and nothing is sent.*placement = 'auto'"):
        outcome = SFRon().unlearn(engine, ForgetRequest.build(engine, clients=[2]), SFRonOptions(steps=3, placement="holders"))
    stay = [0, 1, 3, 4, 5]
    assert outcome.comm_bytes == 0.0 and torch.equal(engine.params[stay], before[stay])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default placement acts on the staying nodes: no note
        engine2 = Engine(config=_cfg("ring", 6))
        engine2.train(3, progress=False)
        SFRon().unlearn(engine2, ForgetRequest.build(engine2, clients=[2]), SFRonOptions(steps=1))


def test_every_node_placement_runs_at_the_nodes_that_stay_and_counts_requests_per_hop():
    engine = Engine(config=_cfg("ring", 6))
    engine.train(3, progress=False)
    before = engine.params.clone()
    request = ForgetRequest.build(engine, clients=[2])
    o = SFRonOptions(steps=7, forget_every=3, placement="every_node")
    outcome = SFRon().unlearn(engine, request, o)
    changed = (engine.params != before).any(dim=1).tolist()
    assert changed == [True, True, False, True, True, True]  # node 2 left with its model
    # forget-gradient requests: the mask's three (12 samples in mini-batches of 4), then steps 0, 3,
    # 6; each 2 vectors per hop from node 2 to the nodes that stay (hops 2, 1, 1, 2, 3); one gossip
    # step per remain step on the path left
    itemsize, d = 8, engine.dim
    requests = 6 * 2 * d * itemsize * (2 + 1 + 1 + 2 + 3)
    gossip = 7 * 8 * d * itemsize  # the 5-node path 3-4-5-0-1 has 4 edges, 8 directed messages
    assert outcome.comm_bytes == pytest.approx(requests + gossip)


def test_every_node_gossip_carries_the_models_or_only_the_changes():
    # With a zero learning rate no node changes its model: gossiping the changes moves nothing,
    # gossiping the models (the default) mixes the ring's different models once per step.
    engine = Engine(config=_cfg("ring", 6))
    engine.train(3, progress=False)
    state = engine.state()
    before = engine.params.clone()
    assert (before[0] != before[3]).any()
    SFRon().unlearn(engine, ForgetRequest.build(engine, clients=[2]),
                    SFRonOptions(steps=4, lr=0.0, placement="every_node", gossip="changes"))
    assert torch.equal(engine.params, before)

    engine = Engine(config=_cfg("ring", 6))
    engine.load_state(state)
    SFRon().unlearn(engine, ForgetRequest.build(engine, clients=[2]), SFRonOptions(steps=4, lr=0.0, placement="every_node"))
    W = engine.network.base_mixing.toarray()  # the ring without node 2
    want = np.linalg.matrix_power(W, 4) @ before.double().numpy()
    want[2] = before[2].double().numpy()  # the node that left keeps its model
    assert np.allclose(engine.params.double().numpy(), want, atol=1e-5)
    assert not torch.equal(engine.params, before)


def test_every_node_forget_gradient_is_the_holders_gradient_at_each_nodes_model(monkeypatch):
    engine = Engine(config=_cfg("ring", 5))
    engine.train(3, progress=False)
    seen = {}
    real = sfron.fast_slow

    def spy(params, **kwargs):
        seen["forget"] = kwargs["forget_grad"](params, 0)
        seen["mask"] = kwargs["mask"]
        return real(params, **kwargs)

    monkeypatch.setattr(sfron, "fast_slow", spy)
    idx = np.array([0, 3, 5])
    start = engine.params.clone()
    SFRon().unlearn(engine, ForgetRequest.build(engine, samples={1: idx}), SFRonOptions(steps=1, placement="every_node"))
    x = torch.as_tensor(engine.data.x[1][idx], dtype=engine.dtype)
    y = torch.as_tensor(engine.data.y[1][idx])
    for i in range(5):
        theta = start[i].clone().requires_grad_(True)
        losses = torch.nn.functional.cross_entropy(engine.model.forward(theta, x), y, reduction="none")
        c = 1.0 / (losses.detach() ** 0.5 + 1e-15)
        g, = torch.autograd.grad((c * losses).sum() / c.sum(), theta)
        torch.testing.assert_close(seen["forget"][i], g, rtol=1e-9, atol=1e-12)
        # the mask: the holder's squared forget gradient (3 samples: one mini-batch) against node
        # i's own remaining data in mini-batches
        mean_g, = torch.autograd.grad(torch.nn.functional.cross_entropy(engine.model.forward(theta, x), y), theta)
        r_g = _remain_sq(engine, i, start[i], 35_000_000 + engine.round)
        torch.testing.assert_close(saliency_mask(mean_g ** 2, r_g, 1.0).float(), seen["mask"][i].float(), rtol=0, atol=0)


def _mean_ce(engine, params, mask):
    x = torch.as_tensor(engine.data.x[mask], dtype=engine.dtype)
    y = torch.as_tensor(engine.data.y[mask])
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(engine.model.forward(params[0], x), y))


def test_sfron_on_the_star_raises_the_forget_loss_more_than_the_remain_loss(trained_digits):
    engine = trained_digits("star", 8, seed=1, rounds=8, local_steps=5)
    forgotten = np.zeros_like(engine.retained)
    forgotten[0] = engine.retained[0]
    remain = engine.retained & ~forgotten
    before = (_mean_ce(engine, engine.params, forgotten), _mean_ce(engine, engine.params, remain))
    result = forget(engine, clients=[0], method="sfron", reference=False, progress=False, steps=50, lr=0.05, alpha=25.0,
                    stopping=UNMONITORED)
    after = (_mean_ce(engine, engine.params, forgotten), _mean_ce(engine, engine.params, remain))
    assert result.method == "sfron" and result.certificate is None
    assert after[0] - before[0] > 2.0 and after[0] - before[0] > 2 * (after[1] - before[1])


def test_a_class_level_request_runs_at_every_node_holding_the_class_and_forgets_that_class(trained_digits):
    from p2pforget.unlearn import class_samples

    engine = trained_digits("ring", 6, seed=3, rounds=10, local_steps=3)
    samples = class_samples(engine, [4])
    expected = {j: np.flatnonzero((engine.data.y[j] == 4) & engine.retained[j]) for j in range(6)}
    assert {j: v.tolist() for j, v in samples.items()} == {j: v.tolist() for j, v in expected.items() if len(v)}
    four = np.isin(engine.data.y, [4]) & engine.retained
    rest = engine.retained & ~four
    before = engine.params.clone()
    losses = [(_mean_ce_rows(engine, before, four), _mean_ce_rows(engine, before, rest))]
    result = forget(engine, samples=samples, method="sfron", reference=False, progress=False, steps=20, lr=0.02, alpha=5.0,
                    stopping=UNMONITORED)
    changed = (engine.params != before).any(dim=1).numpy()
    assert changed.tolist() == [j in samples for j in range(6)] and result.method == "sfron"
    losses.append((_mean_ce_rows(engine, engine.params, four), _mean_ce_rows(engine, engine.params, rest)))
    (f0, r0), (f1, r1) = losses
    assert f1 - f0 > 1.0 and f1 - f0 > 3 * (r1 - r0)


def _mean_ce_rows(engine, params, mask):
    """Mean over nodes of each node's own-model cross-entropy on the samples ``mask`` marks, all clients' data."""
    x = torch.as_tensor(engine.data.x[mask], dtype=engine.dtype)
    y = torch.as_tensor(engine.data.y[mask])
    with torch.no_grad():
        return float(np.mean([float(torch.nn.functional.cross_entropy(engine.model.forward(p, x), y)) for p in params]))
