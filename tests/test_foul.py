"""FOUL: the L2U losses and Theorem 1's direction against numpy, the Gamma solver, and unlearning
that changes theta_V only."""
import numpy as np
import pytest
import torch

from p2pforget import Engine, config, forget
from p2pforget.engine.compute import Compute
from p2pforget.models.l2u import L2U, VARIANCE_EPS
from p2pforget.unlearn.foul import foul_direction, gamma_objective, solve_gamma


def _batch(seed=0, m=12, classes=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 0, 1])[:m]
    mask = torch.tensor([1.0] * (m - 2) + [0.0, 0.0], dtype=torch.float64)  # two padded rows
    return {"x": x, "y": y, "mask": mask}


def _numpy_losses(zk, zv, logits, recon, x, y, mask, classes):
    keep = mask > 0
    zk, zv, logits, recon, x, y = zk[keep], zv[keep], logits[keep], recon[keep], x[keep], y[keep]
    hinges = []
    for c in range(classes):
        rows = zv[y == c]
        if len(rows) >= 2:
            hinges.append(max(0.0, 1.0 - np.sqrt(rows.var(axis=0).mean() + VARIANCE_EPS)))
    l_v = np.mean(hinges)
    present = [c for c in range(classes) if (y == c).any()]
    protos = np.stack([zk[y == c].mean(axis=0) for c in present])
    d = ((zk[:, None, :] - protos[None]) ** 2).sum(-1)
    logp = -d - np.log(np.exp(-d - (-d).max(1, keepdims=True)).sum(1, keepdims=True)) - (-d).max(1, keepdims=True)
    l_k = -np.mean([logp[s, present.index(y[s])] for s in range(len(y))])
    z = logits - logits.max(1, keepdims=True)
    l_gtc = -np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))
    mse = ((recon - x) ** 2).reshape(len(x), -1).mean(1)
    mu = np.concatenate([zk, zv], axis=1)
    l_rec = np.mean(mse + 0.5 * (mu ** 2).mean(1))
    return {"V": l_v, "K": l_k, "gtc": l_gtc, "rec": l_rec}


def test_each_l2u_loss_equals_a_numpy_computation():
    torch.manual_seed(0)
    model = L2U(input_shape=(3, 16, 16), n_classes=4, width=4, alphas=(0.3, 0.7, 1.1)).double()
    b = _batch()
    terms = model.loss_terms(b)
    with torch.no_grad():
        zk_map, zv_map = model.encode(b["x"])
        zk, zv = model.code(zk_map), model.code(zv_map)
        logits = model(b["x"])
        h = torch.relu(model.decoder["mix"](torch.cat([zk_map, zv_map], 1)))
        recon = model.decoder["out"](torch.nn.functional.interpolate(h, size=(16, 16), mode="bilinear", align_corners=False))
    ref = _numpy_losses(*(t.numpy() for t in (zk, zv, logits, recon, b["x"], b["y"], b["mask"])), classes=4)
    for name in ("V", "K", "gtc", "rec"):
        assert float(terms[name].detach()) == pytest.approx(ref[name], rel=1e-10, abs=1e-12), name
    assert 0 < ref["V"] < 1 and ref["K"] > 0


def test_l2u_objective_is_the_weighted_sum_and_subnetworks_partition_theta():
    from p2pforget.models import FlatModel
    from p2pforget.tasks import Task

    model = L2U(input_shape=(1, 8, 8), n_classes=3, width=2, alphas=(0.3, 0.7, 1.1)).double()
    fm = FlatModel(model)
    task = Task(model=fm, weight_decay=0.0)
    flat = fm.init_vector(0, torch.float64)
    b = {"x": torch.randn(6, 1, 8, 8, dtype=torch.float64), "y": torch.tensor([0, 1, 2, 0, 1, 2]),
         "mask": torch.ones(6, dtype=torch.float64)}
    t = task.loss_terms(flat, b)
    assert float(task.data_loss(flat, b)) == pytest.approx(float(0.3 * t["V"] + 0.7 * t["K"] + 1.1 * t["gtc"] + t["rec"]), rel=1e-12)
    masks = [fm.mask(n) for n in "EKVDC"]
    assert torch.equal(torch.stack(masks).sum(0), torch.ones(fm.dim, dtype=torch.long))
    with pytest.raises(ValueError, match="no sub-network 'Z'"):
        fm.mask("Z")


def test_foul_direction_equals_numpy_theorem_1():
    r = np.random.default_rng(0)
    d, R, F = 50, 6, 3
    g_fl, retain, forgot = r.standard_normal(d), r.standard_normal((R, d)), r.standard_normal((F, d))
    gr, gf = r.dirichlet(np.ones(R)), r.dirichlet(np.ones(F))
    kappa, beta = 0.7, 2.0
    conflict = gr @ retain - beta * gf @ forgot
    want = g_fl + kappa * np.linalg.norm(g_fl) / np.linalg.norm(conflict) * conflict
    args = [torch.as_tensor(v) for v in (g_fl, retain, forgot, gr, gf)]
    got = foul_direction(*args, kappa=kappa, beta=beta, scaled=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # the conflict term always has norm kappa ||g_FL||
    assert np.linalg.norm(got.numpy() - g_fl) == pytest.approx(kappa * np.linalg.norm(g_fl), rel=1e-12)
    # the official step (the default) is the same direction divided by 1 + kappa^2, as in CAGrad
    np.testing.assert_allclose(foul_direction(*args, kappa=kappa, beta=beta).numpy(), want / (1 + kappa ** 2), rtol=1e-12)


def test_gamma_objective_and_solver():
    r = np.random.default_rng(1)
    retain, forgot = torch.as_tensor(r.standard_normal((5, 30))), torch.as_tensor(r.standard_normal((2, 30)) + 1.0)
    kappa, beta = 0.5, 2.0
    # numpy version of the dual at uniform weights
    s_r = np.mean(np.sqrt((retain.numpy() ** 2).sum(1) + 1e-4))
    s_f = np.mean(np.sqrt((forgot.numpy() ** 2).sum(1) + 1e-4))
    Rn, Fn = retain.numpy() / s_r, forgot.numpy() / s_f
    Gr, Gf = Rn @ Rn.T, Fn @ Fn.T
    c = kappa * np.sqrt((5 * Gr.mean() + 2 * Gf.mean()) / 7 + 1e-4)
    w = np.full(7, 1 / 7)
    comb = w[:5] @ Rn - beta * w[5:] @ Fn
    want = w[:5] @ Gr.mean(1) - beta * w[5:] @ Gf.mean(1) + c * np.sqrt(comb @ comb + 1e-4)
    assert float(gamma_objective(torch.zeros(7, dtype=torch.float64), retain, forgot, kappa=kappa, beta=beta)) == pytest.approx(want, rel=1e-12)
    gr, gf = solve_gamma(retain, forgot, kappa=kappa, beta=beta, steps=20, lr=25.0)
    z = torch.log(torch.cat([gr, gf]))
    assert float(gr.sum() + gf.sum()) == pytest.approx(1.0) and (gr > 0).all() and (gf > 0).all()
    assert float(gamma_objective(z, retain, forgot, kappa=kappa, beta=beta)) < want - 1e-3


UNMONITORED = config.StoppingConfig(rule="budget", guard=False)  # the method's own mechanics, its whole budget


def test_cross_entropy_is_the_default_unlearning_loss(monkeypatch):
    """FOUL's clients train the classifier's cross-entropy while unlearning (as the official
    code), the L2U loss with loss = "l2u"."""
    seen = []
    real = Compute.local_steps

    def spy(self, params, **kw):
        seen.append(kw.get("loss"))
        return real(self, params, **kw)

    monkeypatch.setattr(Compute, "local_steps", spy)
    for loss in ("cross_entropy", "l2u"):
        engine = Engine(config=_foul_cfg(loss=loss))
        engine.train(1, progress=False)
        seen.clear()
        forget(engine, clients=[5], reference=False, progress=False, stopping=UNMONITORED)
        assert len(seen) >= 2  # two rounds (the FLOP count runs them again)
        if loss == "l2u":
            assert set(seen) == {None}
            continue
        b = engine.batches.minibatch((0, 0))
        flat = engine.params[0]
        ce = torch.nn.functional.cross_entropy(engine.task.logits(flat, b["x"][0]), b["y"][0], reduction="none")
        want = float((ce * b["mask"][0]).sum() / b["mask"][0].sum())
        assert float(seen[0](flat, {k: v[0] for k, v in b.items()})) == pytest.approx(want, rel=1e-6)


def _foul_cfg(kind="star", **foul):
    return config.from_dict({
        "run": {"seed": 1},
        "topology": {"kind": kind, "n_clients": 6},
        "data": {"kind": "pacs_like", "n_samples_per_client": 14, "n_test": 28, "partition": "by_domain", "pacs_like": {"image_size": 16}},
        "model": {"kind": "l2u", "l2u": {"hidden": 8}},
        "train": {"lr": 0.1, "local_steps": 2, "batch_size": 7},
        "unlearn": {"method": "foul", "foul": {"rounds": 2} | foul},
    })


@pytest.mark.parametrize("kind", ["star", "ring"])
def test_foul_changes_theta_v_only(kind):
    engine = Engine(config=_foul_cfg(kind))
    engine.train(2, progress=False)
    before = engine.params.clone()
    result = forget(engine, clients=[5], reference=False, progress=False, stopping=UNMONITORED)
    nodes = torch.as_tensor(engine.members)  # client 5 left the graph: it releases nothing (NaN row)
    after, before = torch.as_tensor(result.params["unlearned"])[nodes], before[nodes]
    v = engine.model.mask("V")
    assert torch.equal(after[:, ~v], before[:, ~v])
    assert (after[:, v] - before[:, v]).abs().max() > 1e-4
    assert result.certificate is None and result.cost["unlearn"].comm_bytes > 0
    assert len(result.traces["unlearned"]) == 2


def test_foul_all_params_moves_more_than_theta_v():
    engine = Engine(config=_foul_cfg(params="all"))
    engine.train(2, progress=False)
    before = engine.params.clone()
    after = torch.as_tensor(forget(engine, clients=[5], reference=False, progress=False,
                                   stopping=UNMONITORED).params["unlearned"])
    nodes = torch.as_tensor(engine.members)
    assert (after[nodes][:, ~engine.model.mask("V")] - before[nodes][:, ~engine.model.mask("V")]).abs().max() > 1e-4


def test_star_foul_bytes_are_theta_v_up_and_down():
    engine = Engine(config=_foul_cfg(rounds=3))
    engine.train(1, progress=False)
    result = forget(engine, clients=[4, 5], reference=False, progress=False, stopping=UNMONITORED)
    assert result.cost["unlearn"].comm_bytes == 3 * 2 * 6 * int(engine.model.mask("V").sum()) * 4


@pytest.mark.parametrize("method", ["finetune", "gradient_ascent", "not"])
def test_baselines_run_and_report_their_own_columns(method):
    engine = Engine(config=_foul_cfg())
    engine.train(2, progress=False)
    result = forget(engine, clients=[5], method=method, reference=False, progress=False, rounds=2)
    assert result.method == method and result.certificate is None
    assert result.cost["unlearn"].comm_bytes > 0 and result.cost["unlearn"].flops > 0
    assert not engine.has_data[5] and result.metrics["unlearned"]["FA"] is not None


def test_not_negates_the_first_layer_only():
    from p2pforget.unlearn.negation import first_layers_mask

    engine = Engine(config=_foul_cfg())
    mask = first_layers_mask(engine, 1)
    assert int(mask.sum()) == sum(p.numel() for p in engine.model.module.extractor[0].parameters())
