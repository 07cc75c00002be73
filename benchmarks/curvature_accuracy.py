"""How close one certified Newton step lands to the remaining optimum, per curvature approximation.

    .venv/bin/python benchmarks/curvature_accuracy.py

L2-logistic (weight decay 0.1), gradient tracking to consensus, 50 samples per client; client 3 is
forgotten. The error of node i is ||unlearned_i - opt|| / ||trained_i - opt||, with opt the optimum of
the remaining objective found by scipy (trust-exact). Also reports the certificate's noise scale.
The table goes to docs/benchmarks.md.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch
from torch.func import grad, hessian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpi_scaling import ROOT, _write_section  # noqa: E402

from p2pforget import Engine, config, forget  # noqa: E402
from p2pforget.unlearn.certified import remaining_objective  # noqa: E402

GRAPHS = [("ring", 8, 0.15), ("torus", 16, 0.07), ("erdos_renyi", 16, 0.15)]
CURVATURES = ["exact", "ggn", "kfac", "diag_fisher"]


def main() -> int:
    rows = []
    for kind, n, lr in GRAPHS:
        cfg = config.from_dict({
            "topology": {"kind": kind, "n_clients": n, "erdos_renyi": {"p": 0.3}},
            "data": {"n_samples_per_client": 50, "partition": "dirichlet", "alpha": 1.0,
                     "gaussian_logistic": {"n_features": 4, "n_classes": 3}},
            "train": {"algorithm": "gradient_tracking", "lr": lr, "dtype": "float64", "weight_decay": 0.1},
            "unlearn": {"certified": {"noise": False, "averaging": "tree"}},
        })
        trained = Engine(config=cfg)
        trained.train(1200, progress=False)
        state = trained.state()
        for curvature in CURVATURES:
            for steps in (1, 3):
                engine = Engine(config=cfg)
                engine.load_state(state)
                r = forget(engine, clients=[3], reference=False, progress=False, curvature=curvature, newton_steps=steps)
                phi = remaining_objective(engine, engine.batches.inputs())
                opt = scipy.optimize.minimize(
                    lambda t: float(phi(torch.as_tensor(t))), r.params["trained"][0],
                    jac=lambda t: grad(phi)(torch.as_tensor(t)).numpy(),
                    hess=lambda t: hessian(phi)(torch.as_tensor(t)).numpy(),
                    method="trust-exact", options={"gtol": 1e-12}).x
                nodes = np.flatnonzero(engine.members)
                err = (np.linalg.norm(r.params["unlearned_noiseless"][nodes] - opt, axis=1)
                       / np.linalg.norm(r.params["trained"][nodes] - opt, axis=1))
                with_noise = r.certificate
                rows.append([kind, n, curvature, steps, err.max(), with_noise["residual_bound"], with_noise["sigma"]])
                print(rows[-1], flush=True)
    lines = [
        f"### Curvature approximations: one and three Newton steps (L2-logistic, weight decay 0.1; measured {time.strftime('%Y-%m-%d')})",
        "",
        "`error` = max over nodes of ||unlearned - opt|| / ||trained - opt|| (opt: scipy optimum of the remaining "
        "objective); `sigma` = the certificate's noise scale at epsilon = 1, delta = 1e-5.",
        "",
        "| graph | clients | curvature | Newton steps | error | residual bound | sigma |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {n} | {c} | {s} | {e:.2e} | {b:.2e} | {sg:.2e} |" for k, n, c, s, e, b, sg in rows]
    table = "\n".join(lines)
    print(table)
    _write_section(ROOT / "docs" / "benchmarks.md", "Curvature approximations", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
