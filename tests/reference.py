"""Independent numpy/scipy versions of the objectives the engine optimizes."""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse.linalg


def split(theta: np.ndarray, n_features: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat logistic parameters: weight (n_classes, n_features) row-major, then bias."""
    return theta[:n_classes * n_features].reshape(n_classes, n_features), theta[n_classes * n_features:]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def objective(theta, x, y, n_classes, wd):
    W, b = split(theta, x.shape[1], n_classes)
    z = x @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + 0.5 * wd * theta @ theta


def gradient(theta, x, y, n_classes, wd):
    W, b = split(theta, x.shape[1], n_classes)
    r = softmax(x @ W.T + b)
    r[np.arange(len(y)), y] -= 1
    r /= len(y)
    return np.concatenate([(r.T @ x).ravel(), r.sum(axis=0)]) + wd * theta


def hessian(theta, x, y, n_classes, wd):
    W, b = split(theta, x.shape[1], n_classes)
    p = softmax(x @ W.T + b)
    xa = np.hstack([x, np.ones((len(x), 1))])  # features with a constant for the bias
    f = x.shape[1]
    H = np.zeros((len(theta), len(theta)))
    for c in range(n_classes):
        for e in range(n_classes):
            w = p[:, c] * ((c == e) - p[:, e]) / len(y)
            block = (xa * w[:, None]).T @ xa
            rows = list(range(c * f, (c + 1) * f)) + [n_classes * f + c]
            cols = list(range(e * f, (e + 1) * f)) + [n_classes * f + e]
            H[np.ix_(rows, cols)] += block
    return H + wd * np.eye(len(theta))


def sum_objective_optimum(xs, ys, n_classes, wd, theta0):
    """argmin of sum_i f_i over client datasets, by scipy trust-exact with analytic derivatives."""
    def f(t):
        return sum(objective(t, x, y, n_classes, wd) for x, y in zip(xs, ys))

    def g(t):
        return sum(gradient(t, x, y, n_classes, wd) for x, y in zip(xs, ys))

    def h(t):
        return sum(hessian(t, x, y, n_classes, wd) for x, y in zip(xs, ys))

    x = scipy.optimize.minimize(f, theta0, jac=g, hess=h, method="trust-exact", options={"gtol": 1e-10, "maxiter": 500}).x
    for _ in range(3):  # Newton polish to machine precision
        x = x - scipy.linalg.solve(h(x), g(x), assume_a="pos")
    assert np.linalg.norm(g(x)) < 1e-12
    return x


def hessian_vector(theta, v, x, y, n_classes, wd):
    """``H v`` of :func:`objective` without forming H: ``X~^T [(diag p - p p^T) (X~ V^T)] / m + wd v``."""
    W, b = split(theta, x.shape[1], n_classes)
    V, c = split(v, x.shape[1], n_classes)
    p = softmax(x @ W.T + b)
    u = x @ V.T + c                                  # logit change per sample
    s = p * (u - (p * u).sum(axis=1, keepdims=True))  # (diag p - p p^T) u, per sample
    s /= len(y)
    return np.concatenate([(s.T @ x).ravel(), s.sum(axis=0)]) + wd * v


def sum_objective_optimum_cg(xs, ys, n_classes, wd, theta0, *, gtol=1e-11):
    """argmin of sum_i f_i for models too large for a dense Hessian: scipy Newton-CG with
    Hessian-vector products, then Newton-CG polish steps."""
    def f(t):
        return sum(objective(t, x, y, n_classes, wd) for x, y in zip(xs, ys))

    def g(t):
        return sum(gradient(t, x, y, n_classes, wd) for x, y in zip(xs, ys))

    def hp(t, v):
        return sum(hessian_vector(t, v, x, y, n_classes, wd) for x, y in zip(xs, ys))

    x = scipy.optimize.minimize(f, theta0, jac=g, hessp=hp, method="trust-krylov", options={"gtol": gtol, "maxiter": 200}).x
    for _ in range(3):  # Newton polish: H dx = -g by scipy's CG on the Hessian-vector product
        H = scipy.sparse.linalg.LinearOperator((len(x), len(x)), matvec=lambda v, x=x: hp(x, v), dtype=np.float64)
        dx, _ = scipy.sparse.linalg.cg(H, -g(x), rtol=1e-14, atol=0.0, maxiter=1000)
        x = x + dx
    return x
