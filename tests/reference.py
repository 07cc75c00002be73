"""Independent numpy/scipy versions of the objectives the engine optimizes."""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize


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
