"""What a certified release is: the analytic Gaussian mechanism, shared vs per-node noise, noise
from OS entropy, sigma independent of the forgotten data, and when `certified` may be true."""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from p2pforget import Engine, config, forget
from p2pforget.unlearn import gaussian


def _gdp_delta(epsilon, mu):
    """delta(epsilon) of a mu-GDP mechanism (Dong, Roth & Su 2022, Corollary 2.13): the Gaussian
    mechanism with sensitivity D and noise sigma is (D / sigma)-GDP."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


@pytest.mark.parametrize("epsilon,delta", [(0.1, 1e-5), (1.0, 1e-5), (1.0, 1e-8), (5.0, 1e-6), (20.0, 1e-5)])
def test_analytic_gaussian_sigma_meets_delta_exactly(epsilon, delta):
    s = gaussian.sigma(2.0, epsilon=epsilon, delta=delta)
    assert _gdp_delta(epsilon, 2.0 / s) == pytest.approx(delta, rel=1e-6)
    assert _gdp_delta(epsilon, 2.0 / (0.99 * s)) > delta  # any less noise breaks the guarantee


def test_classical_formula_is_not_private_for_large_epsilon():
    classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / 10.0
    assert gaussian.delta_of(classical, sensitivity=1.0, epsilon=10.0) > 1e-5
    assert gaussian.sigma(1.0, epsilon=0.5, delta=1e-5) < math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5


def _cfg(**certified):
    return config.from_dict({
        "run": {"seed": 1},
        "topology": {"kind": "ring", "n_clients": 8},
        "data": {"n_samples_per_client": 20, "gaussian_logistic": {"n_features": 50, "n_classes": 3}},
        "train": {"algorithm": "gradient_tracking", "lr": 0.1, "dtype": "float64", "weight_decay": 0.1},
        "unlearn": {"mode": "keep_relay", "certified": {"newton_steps": 5, "averaging": "tree"} | certified},
    })


@pytest.fixture(scope="module")
def trained():
    engine = Engine(config=_cfg())
    engine.train(80, progress=False)
    return engine.state()


def _forget(state, client=1, **certified):
    engine = Engine(config=_cfg(**certified))
    engine.load_state(state)
    return forget(engine, clients=[client], reference=False, progress=False)


def test_shared_noise_releases_one_model_and_is_certified(trained):
    r = _forget(trained)
    c = r.certificate
    released = r.params["unlearned"]
    assert np.array_equal(released, np.broadcast_to(released[0], released.shape))
    assert c["certified"] and c["private"] and c["not_certified_because"] == ""
    assert c["residual_bound"] <= c["budget"] and c["sigma"] == pytest.approx(gaussian.sigma(1e-6, epsilon=1.0, delta=1e-5))


def test_per_node_noise_covers_the_joint_release(trained):
    means = []
    for _ in range(4):  # four requests' worth of noise, for a tight estimate of its spread
        r = _forget(trained, noise_scope="per_node", budget=1e-3)
        c = r.certificate
        noise = r.params["unlearned"] - r.params["unlearned_noiseless"]
        assert not np.array_equal(noise[0], noise[1])
        assert c["sigma"] == pytest.approx(math.sqrt(8) * c["sigma_single_release"])
        means.append(noise.mean(axis=0))  # what averaging all releases leaves
    assert np.concatenate(means).std() >= 0.9 * c["sigma_single_release"]


def test_sigma_does_not_depend_on_which_client_is_forgotten(trained):
    a, b = _forget(trained, client=1), _forget(trained, client=5)
    assert a.certificate["residual_bound"] != b.certificate["residual_bound"]
    assert a.certificate["sigma"] == b.certificate["sigma"]


def test_noise_comes_from_os_entropy_unless_seeded(trained):
    first, second = _forget(trained, budget=1e-3), _forget(trained, budget=1e-3)
    assert not np.array_equal(first.params["unlearned"], second.params["unlearned"])
    s1, s2 = _forget(trained, budget=1e-3, noise_seed=7), _forget(trained, budget=1e-3, noise_seed=7)
    assert np.array_equal(s1.params["unlearned"], s2.params["unlearned"])
    assert not s1.certificate["private"] and not s1.certificate["certified"]
    assert "noise_seed" in s1.certificate["not_certified_because"]


@pytest.mark.parametrize("certified,reason", [({"noise": False}, "no noise was added"),
                                              ({"budget": 1e-30, "fallback": "none"}, "exceeds the declared budget"),
                                              ({"budget": 0.0}, "depends on the forgotten data")])
def test_certified_is_false_with_the_reason(trained, certified, reason):
    c = _forget(trained, **certified).certificate
    assert not c["certified"] and reason in c["not_certified_because"]


def test_float32_training_is_certified_in_float64():
    """Curvature, steps and certificate run in float64 whatever the training dtype; the release is
    rounded to float32 afterwards (post-processing)."""
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 6}, "data": {"n_samples_per_client": 10},
                            "train": {"algorithm": "gradient_tracking", "weight_decay": 0.1, "dtype": "float32"},
                            "unlearn": {"certified": {"averaging": "tree", "budget": 1e-6}}})
    engine = Engine(config=cfg)
    engine.train(20, progress=False)
    r = forget(engine, clients=[2], reference=False, progress=False)
    c = r.certificate
    assert c["certified"], c["not_certified_because"]
    assert c["residual_bound"] <= 1e-6  # float32 rounding alone would be ~1e-7 * ||theta|| per entry
    assert r.params["unlearned"].dtype == np.float32 and engine.params.dtype == torch.float32


def test_a_bound_over_budget_falls_back_to_exact_newton_steps(trained):
    """Two diagonal-Fisher steps miss the budget; the certificate's own bound sends the request on
    to exact Newton steps, which meet it (and are charged to unlearning)."""
    engine = Engine(config=_cfg(curvature="diag_fisher", newton_steps=1, max_newton_steps=2))
    engine.load_state(trained)
    r = forget(engine, clients=[1], reference=False, progress=False)
    c = r.certificate
    assert c["fallback"] == "exact" and c["certified"], c["not_certified_because"]
    assert c["newton_steps_taken"] > 2 and c["residual_bound"] <= c["budget"]
    plain = Engine(config=_cfg(curvature="diag_fisher", newton_steps=1, max_newton_steps=2, fallback="none"))
    plain.load_state(trained)
    p = forget(plain, clients=[1], reference=False, progress=False)
    assert not p.certificate["certified"] and "after 2 Newton steps" in p.certificate["not_certified_because"]
    assert r.cost["unlearn"].flops > p.cost["unlearn"].flops


def test_newton_steps_never_increase_the_remaining_objective(trained):
    engine = Engine(config=_cfg(noise=False, first_step="uniform", newton_steps=3, max_newton_steps=3))
    engine.load_state(trained)
    values = []
    from p2pforget.unlearn import certified as cert_mod
    original = cert_mod._NewtonState.local

    def spy(self, theta):
        g, f = original(self, theta)
        values.append(float(self.net_sum(f.clone(), exact=True)[0, 0]))
        return g, f

    cert_mod._NewtonState.local = spy
    try:
        forget(engine, clients=[1], reference=False, progress=False, damping=0.0)
    finally:
        cert_mod._NewtonState.local = original
    accepted = [values[0]]
    for v in values[1:]:
        if v <= accepted[-1] + 1e-13 * abs(accepted[-1]):
            accepted.append(v)
    assert len(accepted) >= 3 and all(b <= a + 1e-13 * abs(a) for a, b in zip(accepted, accepted[1:]))


def test_a_release_that_is_mostly_noise_warns(trained):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _forget(trained, budget=10.0)
    assert any("mostly noise" in str(w.message) for w in caught)
