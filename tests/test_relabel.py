"""Random-label fine-tuning and SalUn: the wrong labels and the saliency mask against direct
computations, one round's change at the holding node against autograd, and the methods' effect."""
import numpy as np
import pytest
import torch

from p2pforget import config
from p2pforget.engine import Engine
from p2pforget.unlearn import forget
from p2pforget.unlearn.random_label import wrong_labels
from p2pforget.unlearn.salun import saliency_top


def test_wrong_labels_are_uniform_over_the_other_classes():
    y = np.repeat(np.arange(4), 6000)
    new = wrong_labels(y, 4, seed=3)
    assert not (new == y).any()
    for c in range(4):
        counts = np.bincount(new[y == c], minlength=4)
        assert counts[c] == 0
        # each of the three other classes gets a third of 6000 (binomial sd ~ 37)
        np.testing.assert_allclose(np.delete(counts, c), 2000, atol=150)
    assert (wrong_labels(y, 4, seed=3) == new).all() and not (wrong_labels(y, 4, seed=4) == new).all()


def test_saliency_top_keeps_the_largest_magnitudes_as_numpy_does():
    g = torch.randn(3, 101, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for fraction in (0.1, 0.5, 0.9):
        m = saliency_top(g, fraction).numpy()
        keep = round(fraction * 101)
        for row, got in zip(np.abs(g.numpy()), m):
            expected = row >= np.sort(row)[::-1][keep - 1]
            np.testing.assert_array_equal(got, expected)
            assert got.sum() == keep


def _engine(kind):
    cfg = config.from_dict({"run": {"seed": 2, "rounds": 4}, "topology": {"kind": kind, "n_clients": 5},
                            "data": {"n_samples_per_client": 10, "n_test": 20, "gaussian_logistic": {"n_features": 6, "n_classes": 4}},
                            "model": {"kind": "mlp", "mlp": {"hidden": 5}},
                            "train": {"batch_size": 5, "lr": 0.2, "dtype": "float64"},
                            "audit": {"after_forget": False}})
    engine = Engine(config=cfg)
    engine.train(4, progress=False)
    return engine


def _relabel_grad(engine, client, idx, labels):
    theta = engine.params[client].clone().requires_grad_(True)
    x = torch.as_tensor(engine.data.x[client][idx])
    loss = torch.nn.functional.cross_entropy(engine.model.forward(theta, x), torch.as_tensor(labels))
    g, = torch.autograd.grad(loss, theta)
    return g


@pytest.mark.parametrize("method", ["random_label", "salun"])
def test_one_round_changes_only_the_holder_by_the_relabelled_gradient(monkeypatch, method):
    engine = _engine("ring")
    # Freeze the other two parts of a round (local training, gossip) to isolate the method's own change.
    monkeypatch.setattr(engine.compute, "local_steps", lambda params, **kw: params.clone())
    monkeypatch.setattr(engine.network, "mix", lambda params, W: params)
    before = engine.params.clone()
    idx = np.array([1, 4, 7])
    y = engine.data.y[3][idx]
    labels = wrong_labels(y, 4, seed=[2, 7_100, 3])
    g = _relabel_grad(engine, 3, idx, labels)
    forget(engine, samples={3: idx}, method=method, reference=False, progress=False, rounds=1, lr=0.5)
    change = engine.params - before
    assert torch.count_nonzero(change[[0, 1, 2, 4]]) == 0
    if method == "random_label":
        torch.testing.assert_close(change[3], -0.5 * g, rtol=1e-10, atol=1e-12)
    else:
        theta = before[3].clone().requires_grad_(True)
        x = torch.as_tensor(engine.data.x[3][idx])
        true_loss = torch.nn.functional.cross_entropy(engine.model.forward(theta, x), torch.as_tensor(y))
        salient = saliency_top(torch.autograd.grad(true_loss, theta)[0][None], 0.5)[0]
        torch.testing.assert_close(change[3], -0.5 * g * salient, rtol=1e-10, atol=1e-12)
        assert torch.count_nonzero(change[3][~salient]) == 0 and torch.count_nonzero(change[3][salient]) > 0


@pytest.mark.parametrize("method", ["random_label", "salun"])
def test_relabelling_raises_the_forgotten_loss_more_than_the_rest(method, trained_digits):
    trained = trained_digits("star", 4, seed=1, rounds=8, local_steps=5)

    def ce(engine, clients):
        x = torch.cat([torch.as_tensor(engine.data.x[j], dtype=engine.dtype) for j in clients])
        y = torch.cat([torch.as_tensor(engine.data.y[j]) for j in clients])
        return float(torch.nn.functional.cross_entropy(engine.model.forward(engine.params[0], x), y))

    # Against fine-tuning for as many rounds (the same rounds without the relabelled steps): the
    # relabelled steps raise the forgotten client's loss, and the others' less. Every client of
    # digits holds the same ten classes, so wrong labels on one client's digits hurt the others
    # too (measured: +0.47 vs +0.39 for random labels, +0.48 vs +0.37 for SalUn).
    runs = {}
    for name, options in (("finetune", {}), (method, {"forget_steps": 5, "lr": 1.0})):
        engine = Engine(config=trained.config)
        engine.load_state(trained.state())
        result = forget(engine, clients=[0], method=name, reference=False, progress=False, rounds=5,
                        stopping=config.StoppingConfig(rule="budget", guard=False), **options)
        runs[name] = (ce(engine, [0]), ce(engine, range(1, 4)), result)
    (f_ft, r_ft, _), (f_m, r_m, result) = runs["finetune"], runs[method]
    assert result.method == method and result.certificate is None
    assert f_m - f_ft > 0.3 and f_m - f_ft > (r_m - r_ft) + 0.05
    # star: every client up, the model down, once per round
    assert result.cost["unlearn"].comm_bytes == pytest.approx(5 * 2 * 4 * engine.dim * 4)


@pytest.mark.parametrize("method", ["random_label", "salun", "sfron"])
def test_classifier_methods_refuse_a_contrastive_model(method):
    cfg = config.from_dict({"run": {"seed": 2, "rounds": 1, "eval_every": 0}, "topology": {"kind": "star", "n_clients": 3},
                            "data": {"kind": "captions_synth", "n_samples_per_client": 4, "n_test": 4},
                            "model": {"kind": "clip"}, "audit": {"after_forget": False}})
    with pytest.raises(ValueError, match=rf"unlearn.method = '{method}' needs a classifier .* model.kind = 'clip'"):
        forget(Engine(config=cfg), clients=[1], method=method, progress=False)
