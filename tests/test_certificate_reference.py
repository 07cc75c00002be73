"""Every certified release lies within its stated bound of one stated reference, the remaining
optimum, solved here independently (scipy, float64) on the inputs as the engine trained on them."""
import numpy as np
import pytest

from p2pforget import Engine, config, forget

from reference import sum_objective_optimum


def _optimum(engine: Engine, forgotten: int) -> np.ndarray:
    d = engine.data
    x = d.x.astype(np.float32).astype(np.float64) if engine.config.train.dtype == "float32" else d.x
    keep = [k for k in range(engine.n_clients) if k != forgotten]
    assert len(set(d.counts[keep].tolist())) == 1  # equal shards: every client weighs 1, star included
    xs = [x[k, :d.counts[k]].reshape(int(d.counts[k]), -1) for k in keep]
    ys = [d.y[k, :d.counts[k]] for k in keep]
    return sum_objective_optimum(xs, ys, d.n_classes, engine.config.train.weight_decay, np.zeros(engine.dim))


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-4])
@pytest.mark.parametrize("algorithm,kind", [("dsgd", "ring"), ("gradient_tracking", "ring"), ("dsgd", "star")])
def test_float32_defaults_are_certified_within_the_bound_of_the_optimum(algorithm, kind, weight_decay):
    cfg = config.from_dict({"topology": {"kind": kind, "n_clients": 6}, "data": {"n_samples_per_client": 20},
                            "train": {"algorithm": algorithm, "weight_decay": weight_decay, "dtype": "float32"}})
    engine = Engine(config=cfg)
    engine.train(20, progress=False)
    r = forget(engine, clients=[2], reference=False, progress=False)
    c = r.certificate
    assert c["certified"], c["not_certified_because"]
    assert c["reference"] == "remaining optimum" and c["residual_bound"] <= c["budget"] == 1e-6
    theta = _optimum(engine, 2)
    nodes = np.flatnonzero(engine.members)
    # The noiseless release is float32 (the engine's state); the bound covers the float64 model it
    # was rounded from, so allow float32 rounding of the stored copy on top.
    gap = np.linalg.norm(r.params["unlearned_noiseless"][nodes].astype(np.float64) - theta, axis=1).max()
    assert gap <= c["residual_bound"] + 2 * np.finfo(np.float32).eps * np.linalg.norm(theta)


def test_the_exact_fallback_is_certified_against_the_same_optimum():
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 6}, "data": {"n_samples_per_client": 20},
                            "train": {"dtype": "float64", "weight_decay": 1e-3},
                            "unlearn": {"certified": {"curvature": "diag_fisher", "max_newton_steps": 2}}})
    engine = Engine(config=cfg)
    engine.train(20, progress=False)
    r = forget(engine, clients=[2], reference=False, progress=False)
    c = r.certificate
    assert c["fallback"] == "exact" and c["certified"], c["not_certified_because"]
    theta = _optimum(engine, 2)
    nodes = np.flatnonzero(engine.members)
    gap = np.linalg.norm(r.params["unlearned_noiseless"][nodes] - theta, axis=1).max()
    assert gap <= c["residual_bound"] <= 1e-6
    # The stated bound is not vacuous: the step count made a real difference to the distance.
    trained_gap = np.linalg.norm(r.params["trained"][nodes] - theta, axis=1).max()
    assert trained_gap > 1e3 * c["residual_bound"]


def test_auto_solver_is_matrix_free_above_the_size_and_certified():
    from p2pforget.unlearn.certified import CG_ABOVE_DIM, CertifiedOptions, solver

    def engine(features, model="logistic"):
        return Engine(config=config.from_dict({"topology": {"n_clients": 6}, "model": {"kind": model},
                                               "data": {"n_samples_per_client": 20,
                                                        "gaussian_logistic": {"n_features": features, "n_classes": 10}}}))

    small, large = engine(19), engine(20)
    assert small.dim == CG_ABOVE_DIM < large.dim
    auto = CertifiedOptions()
    assert solver(small, auto) == "direct" and solver(large, auto) == "cg"
    assert solver(large, CertifiedOptions(curvature="ggn")) == "direct"  # CG multiplies by the exact Hessian
    assert solver(large, CertifiedOptions(first_step="ledger")) == "direct"
    assert solver(large, CertifiedOptions(solver="direct")) == "direct"
    large.train(10, progress=False)
    c = forget(large, clients=[2], reference=False, progress=False).certificate
    assert c["solver"] == "cg" and c["certified"] and len(c["cg_iterations"]) == c["newton_steps_taken"]
