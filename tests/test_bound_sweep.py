"""The certificate's bound against the distance to the remaining optimum measured with scipy, across
training settings; and the softmax constant it uses against finite differences."""
import math

import numpy as np
import pytest
import torch

from p2pforget import Engine, config, forget
from p2pforget.unlearn import certified

from reference import sum_objective_optimum

pytestmark = pytest.mark.filterwarnings("ignore:the mixing matrix has eigenvalue", "ignore:the certified release")

N, M, F, C = 8, 20, 5, 3

# (algorithm, training dtype, weight decay, partition, edge dropout, topology)
SWEEP = [
    ("dsgd", "float64", 0.1, "iid", 0.0, "ring"),
    ("dsgd", "float32", 0.1, "iid", 0.0, "ring"),
    ("dsgd", "float64", 1e-4, "iid", 0.0, "ring"),
    ("dsgd", "float64", 1.0, "iid", 0.0, "ring"),
    ("dsgd", "float64", 0.1, "dirichlet", 0.0, "ring"),
    ("dsgd", "float64", 0.1, "iid", 0.3, "ring"),
    ("dsgd", "float32", 0.01, "dirichlet", 0.3, "ring"),
    ("gradient_tracking", "float64", 0.1, "iid", 0.0, "ring"),
    ("gradient_tracking", "float32", 1e-4, "dirichlet", 0.0, "ring"),
    ("gradient_tracking", "float64", 1.0, "iid", 0.3, "ring"),
    ("dsgd", "float64", 0.1, "dirichlet", 0.0, "star"),
    ("dsgd", "float32", 1e-4, "iid", 0.0, "star"),
]


def _engine(algorithm, dtype, wd, partition, dropout, kind, **certified_opts):
    cfg = config.from_dict({
        "run": {"seed": 3},
        "topology": {"kind": kind, "n_clients": N, "dropout": dropout},
        "data": {"n_samples_per_client": M, "partition": partition, "alpha": 0.1, "gaussian_logistic": {"n_features": F, "n_classes": C}},
        "train": {"algorithm": algorithm, "lr": 0.1, "dtype": dtype, "weight_decay": wd},
        "unlearn": {"mode": "keep_relay", "certified": {"noise": False} | certified_opts},
    })
    engine = Engine(config=cfg)
    engine.train(30, progress=False)
    return engine


def _optimum(engine, forgotten):
    d = engine.data
    keep = [i for i in range(N) if i != forgotten]
    return sum_objective_optimum([d.x[i].astype(np.float64) for i in keep], [d.y[i] for i in keep], C,
                                 engine.config.train.weight_decay, np.zeros(engine.dim))


@pytest.mark.parametrize("algorithm,dtype,wd,partition,dropout,kind", SWEEP)
@pytest.mark.parametrize("steps", [1, 3])
def test_the_bound_covers_the_distance_to_the_remaining_optimum(algorithm, dtype, wd, partition, dropout, kind, steps):
    engine = _engine(algorithm, dtype, wd, partition, dropout, kind)
    # A fixed number of steps and no fallback: the bound is tested where it is not tiny.
    r = forget(engine, clients=[2], reference=False, progress=False, newton_steps=steps, max_newton_steps=steps,
               fallback="none", first_step="ledger" if algorithm == "dsgd" else "uniform")
    c = r.certificate
    opt = _optimum(engine, 2)
    nodes = np.arange(N) != 2
    dist = np.linalg.norm(r.params["unlearned_noiseless"][nodes].astype(np.float64) - opt, axis=1).max()
    # The bound is about the float64 models the nodes computed; the nodes keep them rounded to the
    # training dtype, which adds at most that rounding.
    rounding = np.finfo(dtype).eps * np.linalg.norm(opt) if dtype == "float32" else 0.0
    assert dist <= c["residual_bound"] + rounding, (dist, c["residual_bound"])
    assert c["residual_bound"] == min(c["taylor_bound"], c["gradient_norm_bound"])
    assert math.isfinite(c["residual_bound"])


def _softmax_curvature(z):
    p = torch.softmax(z, dim=0)
    return torch.diag(p) - torch.outer(p, p)


@pytest.mark.parametrize("n_classes", [2, 3, 5, 10])
def test_softmax_constant_against_finite_differences(n_classes):
    """||d/dz (diag p - p p^T)[v]||_2 <= c ||v|| for the proven c; for two classes c is attained."""
    gen = torch.Generator().manual_seed(n_classes)
    c = certified.softmax_curvature_lipschitz(n_classes)
    worst, h = 0.0, 1e-5
    for _ in range(3000):
        z = 4 * torch.randn(n_classes, generator=gen, dtype=torch.float64)
        v = torch.randn(n_classes, generator=gen, dtype=torch.float64)
        v /= torch.linalg.vector_norm(v)
        dS = (_softmax_curvature(z + h * v) - _softmax_curvature(z - h * v)) / (2 * h)
        worst = max(worst, float(torch.linalg.matrix_norm(dS, ord=2)))
    assert worst <= c * (1 + 1e-6)
    if n_classes == 2:
        # the extremum: p = 1/2 - 1/(2 sqrt 3), v = (1, -1)/sqrt 2
        t = math.log((1 - 1 / math.sqrt(3)) / (1 + 1 / math.sqrt(3)))
        z, v = torch.tensor([t, 0.0], dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2)
        dS = (_softmax_curvature(z + h * v) - _softmax_curvature(z - h * v)) / (2 * h)
        assert float(torch.linalg.matrix_norm(dS, ord=2)) == pytest.approx(c, rel=1e-8)


def test_hessian_lipschitz_constant_of_the_remaining_objective():
    """||H(a) - H(b)||_2 <= M ||a - b|| for the logistic model's remaining objective, with H from autograd."""
    engine = _engine("dsgd", "float64", 0.1, "iid", 0.0, "ring")
    engine.exclude(samples={2: np.arange(M)})
    phi = certified.remaining_objective(engine, engine.batches.inputs(), torch.float64)
    M_bound = certified.hessian_lipschitz(engine, engine.batches.inputs())
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(20):
        a = torch.randn(engine.dim, generator=gen, dtype=torch.float64)
        b = a + 0.01 * torch.randn(engine.dim, generator=gen, dtype=torch.float64)
        diff = torch.func.hessian(phi)(a) - torch.func.hessian(phi)(b)
        ratios.append(float(torch.linalg.matrix_norm(diff, ord=2) / torch.linalg.vector_norm(a - b)))
    assert max(ratios) <= M_bound
    assert max(ratios) > 1e-3 * M_bound  # the constant is not vacuous
