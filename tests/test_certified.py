"""Certified unlearning against independent scipy optima of the remaining objective."""
import numpy as np
import pytest
import torch

from p2pforget import Engine, config, forget
from p2pforget.unlearn import certified, gaussian

from reference import sum_objective_optimum

# These runs converge at their learning rates although the torus matrix has eigenvalue -0.6 (checked below).
pytestmark = pytest.mark.filterwarnings("ignore:the mixing matrix has eigenvalue")

ROUNDS = {0.1: 1200, 0.01: 1500}
LR = {"torus": 0.07}  # the torus's mixing matrix has eigenvalue -0.6: gradient tracking needs a smaller step


def _trained(kind, n, wd, seed=0):
    cfg = config.from_dict({
        "run": {"seed": seed},
        "topology": {"kind": kind, "n_clients": n, "erdos_renyi": {"p": 0.3}},
        "data": {"n_samples_per_client": 50, "partition": "dirichlet", "alpha": 1.0,
                 "holdout_fraction": 0.0, "gaussian_logistic": {"n_features": 4, "n_classes": 3}},
        "train": {"algorithm": "gradient_tracking", "lr": LR.get(kind, 0.15), "dtype": "float64", "weight_decay": wd},
        "unlearn": {"certified": {"noise": False, "gossip_tol": 1e-13, "curvature_tol": 1e-12}},
    })
    engine = Engine(config=cfg)
    engine.train(ROUNDS[wd], progress=False)
    return cfg, engine.state()


_CACHE = {}


def trained(kind, n, wd):
    if (kind, n, wd) not in _CACHE:
        _CACHE[kind, n, wd] = _trained(kind, n, wd)
    cfg, state = _CACHE[kind, n, wd]
    engine = Engine(config=cfg)
    engine.load_state(state)
    return engine


def remaining_optimum(engine, forgotten):
    d = engine.data
    keep = np.ones(d.y.shape, bool)
    for j, idx in forgotten.items():
        keep[j, idx] = False
    xs = [d.x[i][keep[i]] for i in range(engine.n_clients) if keep[i].any()]
    ys = [d.y[i][keep[i]] for i in range(engine.n_clients) if keep[i].any()]
    return sum_objective_optimum(xs, ys, 3, engine.config.train.weight_decay, engine.params[0].numpy())


def relative_errors(engine, result, opt):
    nodes = np.flatnonzero(engine.members)
    trained = result.params["trained"][nodes]
    unlearned = result.params["unlearned_noiseless"][nodes]
    return np.linalg.norm(unlearned - opt, axis=1) / np.linalg.norm(trained - opt, axis=1)


GRAPHS = [("ring", 8), ("torus", 16), ("erdos_renyi", 16)]


@pytest.mark.parametrize("kind,n", GRAPHS)
@pytest.mark.parametrize("mode", ["remove", "keep_relay"])
def test_one_newton_step_lands_within_5_percent(kind, n, mode):
    engine = trained(kind, n, 0.1)
    forgotten = {3: np.arange(50)}
    result = forget(engine, clients=[3], progress=False, reference=False, mode=mode, newton_steps=1, max_newton_steps=1,
                    fallback="none")
    err = relative_errors(engine, result, remaining_optimum(engine, forgotten))
    assert err.max() < 0.05, err
    assert engine.members[3] == (mode == "keep_relay")
    c = result.certificate
    assert c["residual_norm"] <= c["gradient_residual_bound"] and c["residual_bound"] <= c["taylor_bound"]


@pytest.mark.parametrize("kind,n", GRAPHS)
@pytest.mark.parametrize("wd", [0.1, 0.01])
def test_five_newton_steps_reach_the_remaining_optimum(kind, n, wd):
    engine = trained(kind, n, wd)
    result = forget(engine, clients=[5], progress=False, reference=False, newton_steps=5)
    opt = remaining_optimum(engine, {5: np.arange(50)})
    nodes = np.flatnonzero(engine.members)
    err = np.linalg.norm(result.params["unlearned_noiseless"][nodes] - opt, axis=1) / np.linalg.norm(opt)
    assert err.max() < 1e-6, err
    c = result.certificate
    assert c["residual_norm"] <= c["gradient_residual_bound"] and c["residual_bound"] <= c["taylor_bound"]
    # the bound is a real bound on the distance to the remaining optimum
    assert np.linalg.norm(result.params["unlearned_noiseless"][nodes] - opt, axis=1).max() <= c["residual_bound"]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("wd", [0.1, 0.01])
def test_both_bounds_hold_and_the_gradient_bound_is_tighter_far_from_the_optimum(steps, wd):
    engine = trained("ring", 8, wd)
    result = forget(engine, clients=[5], progress=False, reference=False, newton_steps=steps)
    opt = remaining_optimum(engine, {5: np.arange(50)})
    c = result.certificate
    distance = np.linalg.norm(result.params["unlearned_noiseless"][np.flatnonzero(engine.members)] - opt, axis=1).max()
    assert distance <= c["gradient_norm_bound"] and distance <= c["taylor_bound"]
    assert c["residual_bound"] == min(c["gradient_norm_bound"], c["taylor_bound"])
    if steps == 1:
        assert c["gradient_norm_bound"] < 0.1 * c["taylor_bound"]


@pytest.mark.parametrize("kind,n", GRAPHS)
def test_forgetting_samples_of_one_client(kind, n):
    engine = trained(kind, n, 0.1)
    idx = np.arange(0, 50, 3)
    result = forget(engine, samples={2: idx}, progress=False, reference=False)
    assert engine.members[2] and engine.retained[2].sum() == 50 - len(idx)
    err = relative_errors(engine, result, remaining_optimum(engine, {2: idx}))
    assert err.max() < 0.05, err
    five = forget(trained(kind, n, 0.1), samples={2: idx}, progress=False, reference=False, newton_steps=5)
    opt = remaining_optimum(engine, {2: idx})
    assert np.abs(five.params["unlearned_noiseless"] - opt).max() / np.linalg.norm(opt) < 1e-6


@pytest.mark.parametrize("curvature", ["ggn", "diag_fisher", "kfac"])
def test_approximate_curvatures(curvature):
    """GGN equals the Hessian for the logistic model; K-FAC and the diagonal Fisher are approximations
    that still remove most of the forgotten client's influence in one step and converge with more."""
    engine = trained("ring", 8, 0.1)
    opt = remaining_optimum(engine, {3: np.arange(50)})
    one = forget(engine, clients=[3], progress=False, reference=False, curvature=curvature, newton_steps=1,
                 max_newton_steps=1, fallback="none")
    err = relative_errors(engine, one, opt)
    limit = {"ggn": 0.05, "kfac": 0.5, "diag_fisher": 0.8}[curvature]
    assert err.max() < limit, err
    c = one.certificate
    assert c["residual_norm"] <= c["gradient_residual_bound"] and c["residual_bound"] <= c["taylor_bound"]


def test_gossip_rounds_formula():
    from p2pforget import topology

    W = topology.mixing_matrix(topology.build_graph("ring", 10)).toarray()
    lam = 1 / 3 + 2 / 3 * np.cos(2 * np.pi / 10)
    assert topology.gossip_rounds(W, np.arange(10), 1e-8) == int(np.ceil(np.log(1e-8) / np.log(lam)))


def test_noise_matches_sigma():
    cfg = config.from_dict({
        "topology": {"kind": "ring", "n_clients": 8},
        "data": {"n_samples_per_client": 30, "gaussian_logistic": {"n_features": 120, "n_classes": 4}},
        "train": {"algorithm": "gradient_tracking", "lr": 0.1, "dtype": "float64", "weight_decay": 0.1},
        "unlearn": {"certified": {"curvature": "diag_fisher", "epsilon": 5.0, "noise_scope": "per_node",
                                  "noise_seed": 3}},
    })
    engine = Engine(config=cfg)
    engine.train(60, progress=False)
    result = forget(engine, clients=[1], progress=False, reference=False)
    c = result.certificate
    nodes = np.flatnonzero(engine.members)
    single = gaussian.sigma(c["budget"], epsilon=5.0, delta=1e-5)
    assert c["sigma"] == pytest.approx(single * np.sqrt(len(nodes)), rel=1e-12)  # the joint release of 7 nodes
    noise = (result.params["unlearned"] - result.params["unlearned_noiseless"])[nodes]
    assert noise.size > 3000  # independent draws per node
    assert noise.std() == pytest.approx(c["sigma"], rel=0.05)
    assert abs(noise.mean()) < 4 * c["sigma"] / np.sqrt(noise.size)
    assert c["residual_norm"] <= c["residual_bound"]


def test_tree_averaging_is_exact_and_cheaper_than_gossip():
    one_step = {"newton_steps": 1, "max_newton_steps": 1, "fallback": "none", "first_step": "ledger"}
    gossip = forget(trained("ring", 8, 0.1), clients=[3], progress=False, reference=False, averaging="gossip", **one_step)
    tree = forget(trained("ring", 8, 0.1), clients=[3], progress=False, reference=False, averaging="tree", **one_step)
    diff = np.abs(gossip.params["unlearned_noiseless"] - tree.params["unlearned_noiseless"])[np.arange(8) != 3]
    assert diff.max() < 1e-9
    d = 15
    # the forgotten gradient to the 7 remaining nodes, one curvature sum up and down a 7-node tree,
    # then the check of the bound: the mean model, the remaining gradient and objective value
    assert tree.cost["unlearn"].comm_bytes == 7 * d * 8 + 2 * 6 * d * d * 8 + 2 * 6 * (2 * d + 1) * 8
    assert tree.cost["unlearn"].comm_bytes < gossip.cost["unlearn"].comm_bytes / 20


def test_report_holds_the_distance_to_the_remaining_optimum():
    engine = trained("ring", 8, 0.1)
    result = forget(engine, clients=[5], progress=False, newton_steps=2)
    opt = remaining_optimum(engine, {5: np.arange(50)})  # the independent scipy solution
    nodes = np.flatnonzero(engine.members)
    m = result.metrics
    for key, params in (("trained", "trained"), ("retrained", "retrained"), ("unlearned", "unlearned")):
        expected = np.linalg.norm(result.params[params][nodes] - opt, axis=1).max()
        assert m[key]["distance_to_remaining_optimum"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    noiseless = np.linalg.norm(result.params["unlearned_noiseless"][nodes] - opt, axis=1).max()
    assert m["unlearned"]["distance_to_remaining_optimum_noiseless"] == pytest.approx(noiseless, rel=1e-6, abs=1e-12)
    assert noiseless <= result.certificate["residual_bound"]


def test_matrix_free_cg_equals_the_direct_solver():
    engine = trained("ring", 8, 0.1)
    direct = forget(engine, clients=[3], progress=False, reference=False, first_step="none", newton_steps=3,
                    max_newton_steps=3)
    engine = trained("ring", 8, 0.1)
    cg = forget(engine, clients=[3], progress=False, reference=False, solver="cg", newton_steps=3, max_newton_steps=3)
    nodes = np.arange(8) != 3
    a, b = direct.params["unlearned_noiseless"][nodes], cg.params["unlearned_noiseless"][nodes]
    assert np.abs(a - b).max() < 1e-10 * np.abs(a).max()
    # exact arithmetic would need at most d iterations per step
    assert cg.certificate["solver"] == "cg" and all(0 < k <= engine.dim + 5 for k in cg.certificate["cg_iterations"])


@pytest.mark.slow
def test_cg_unlearns_a_30k_parameter_logistic_model_to_the_remaining_optimum():
    """10 classes x 3,072 features (CIFAR-10's shape): d = 30,730, a dense Hessian would take 7.6 GB."""
    from reference import gradient, sum_objective_optimum_cg

    cfg = config.from_dict({
        "run": {"seed": 0}, "topology": {"kind": "ring", "n_clients": 4},
        "data": {"n_samples_per_client": 30, "n_test": 20, "holdout_fraction": 0.0,
                 "gaussian_logistic": {"n_features": 3072, "n_classes": 10}},
        "train": {"algorithm": "gradient_tracking", "dtype": "float64", "weight_decay": 0.1, "lr": 0.05},
        "unlearn": {"mode": "keep_relay", "certified": {"solver": "cg", "noise": False, "budget": 1e-8}},
        "audit": {"after_forget": False},
    })
    engine = Engine(config=cfg)
    engine.train(20, progress=False)
    assert engine.dim == 30730
    r = forget(engine, clients=[1], reference=False, progress=False)
    d, keep = engine.data, [0, 2, 3]
    opt = sum_objective_optimum_cg([d.x[i] for i in keep], [d.y[i] for i in keep], 10, 0.1, np.zeros(engine.dim))
    assert np.linalg.norm(sum(gradient(opt, d.x[i], d.y[i], 10, 0.1) for i in keep)) < 1e-10
    u = r.params["unlearned_noiseless"][keep]
    assert np.linalg.norm(u - opt, axis=1).max() <= 1e-6 * np.linalg.norm(opt)
    assert np.linalg.norm(u - opt, axis=1).max() <= r.certificate["residual_bound"]


def test_retrain_at_equal_quality():
    """The rounds Retrain needs to get as close to the remaining optimum as the unlearned models."""
    from p2pforget.unlearn.retrain import retrain

    engine = trained("ring", 8, 0.1)
    result = forget(engine, clients=[5], progress=False, newton_steps=1, max_newton_steps=1, fallback="none")
    opt = remaining_optimum(engine, {5: np.arange(50)})
    nodes = np.flatnonzero(engine.members)
    target = np.linalg.norm(result.params["unlearned_noiseless"][nodes] - opt, axis=1).max()
    distances = []
    retrain(engine, rounds=engine.round, progress=False,
            observe=lambda p: distances.append(np.linalg.norm(p.numpy()[nodes] - opt, axis=1).max()))
    hit = next(k + 1 for k, d in enumerate(distances) if d <= target * (1 + 1e-9))
    r = result.metrics["retrained"]
    assert r["equal_quality_rounds"] == hit and 1 < hit < engine.round
    assert r["equal_quality_seconds"] == pytest.approx(result.cost["retrain"].seconds * hit / engine.round)


def test_topk_sparsified_curvature():
    from p2pforget.unlearn.certified import sparsify_topk

    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 6, 6))
    A = A + A.transpose(0, 2, 1)
    S = sparsify_topk(torch.as_tensor(A), 4).numpy()
    for n in range(2):
        iu = np.triu_indices(6, 1)
        top = np.sort(np.abs(A[n][iu]))[-4:]
        assert np.allclose(np.diag(S[n]), np.diag(A[n])) and np.allclose(S[n], S[n].T)
        assert np.count_nonzero(np.triu(S[n], 1)) == 4 and np.allclose(np.sort(np.abs(S[n][iu]))[-4:], top)
    full = sparsify_topk(torch.as_tensor(A), 15).numpy()
    assert np.array_equal(full, A)
    # A sparsified curvature (60 of the 105 off-diagonal pairs) still reaches the remaining optimum,
    # with fewer bytes per step but more steps (9 instead of 3 here: more bytes in all).
    dense = forget(trained("ring", 8, 0.1), clients=[3], progress=False, reference=False, newton_steps=4, max_newton_steps=4)
    sparse = forget(trained("ring", 8, 0.1), clients=[3], progress=False, reference=False, topk=60, budget=1e-8)
    opt = remaining_optimum(trained("ring", 8, 0.1), {3: np.arange(50)})
    nodes = np.arange(8) != 3
    err = np.linalg.norm(sparse.params["unlearned_noiseless"][nodes] - opt, axis=1).max()
    c = sparse.certificate
    assert c["fallback"] == "none" and err <= c["residual_bound"] <= 1e-8 and c["newton_steps_taken"] > 1
    curvature_bytes = lambda r: r.cost["unlearn"].comm_bytes / max(r.certificate["newton_steps_taken"], 1)
    assert curvature_bytes(sparse) < curvature_bytes(dense)


@pytest.mark.parametrize("model, options, want", [
    ({"kind": "logistic"}, {}, ("exact", 0.0)),
    ({"kind": "mlp", "mlp": {"hidden": 8}}, {}, ("ggn", certified.NONCONVEX_DAMPING)),
    ({"kind": "mlp", "mlp": {"hidden": 8}}, {"damping": 0.5}, ("ggn", 0.5)),       # a damping that was set stays
    ({"kind": "mlp", "mlp": {"hidden": 8}}, {"curvature": "exact"}, ("exact", 0.0)),  # so does a named curvature
])
def test_auto_curvature_is_exact_for_logistic_and_damped_ggn_otherwise(model, options, want):
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 4}, "model": model, "audit": {"after_forget": False},
                            "data": {"n_samples_per_client": 20, "gaussian_logistic": {"n_features": 4, "n_classes": 3}},
                            "unlearn": {"certified": {"noise": False, **options}}})
    engine = Engine(config=cfg)
    engine.train(2, progress=False)
    opts = cfg.unlearn.options("certified")
    assert (certified.curvature_kind(engine, opts), certified.damping_used(engine, opts)) == want
    result = forget(engine, clients=[1], progress=False, reference=False)
    assert result.certificate["curvature"] == want[0]
