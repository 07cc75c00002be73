"""Subspace excision and the Forget Lock against scipy and direct computations."""
import numpy as np
import pytest
import scipy.linalg
import torch

from p2pforget import subspace


def _basis(d, r, seed):
    return subspace.orthonormal(torch.as_tensor(np.random.default_rng(seed).standard_normal((d, r))))


@pytest.mark.parametrize("d,p,q", [(10, 3, 4), (20, 5, 2), (8, 4, 4)])
def test_principal_angles_match_scipy(d, p, q):
    U_f, U_r = _basis(d, p, 1), _basis(d, q, 2)
    angles, P_f, P_r = subspace.principal_angles(U_f, U_r)
    ref = np.sort(scipy.linalg.subspace_angles(U_f.numpy(), U_r.numpy()))
    np.testing.assert_allclose(angles.numpy(), ref, atol=1e-10)
    # principal vectors: orthonormal, in their subspaces, and cos(angle) apart
    k = min(p, q)
    np.testing.assert_allclose((P_f.T @ P_f).numpy(), np.eye(k), atol=1e-12)
    np.testing.assert_allclose((P_f.T @ P_r).numpy(), np.diag(np.cos(angles.numpy())), atol=1e-10)
    np.testing.assert_allclose((U_f @ U_f.T @ P_f).numpy(), P_f.numpy(), atol=1e-12)


def test_cs_decomposition_gives_the_same_cosines():
    """scipy's cossin of an orthogonal matrix whose first columns span U_f: the cosines of the CS
    decomposition of the block that pairs U_f with U_r's complement are the sines of the principal
    angles; checked through the singular values of the blocks."""
    d, p = 8, 3
    Q = subspace.orthonormal(torch.as_tensor(np.random.default_rng(3).standard_normal((d, d)))).numpy()
    U_f = Q[:, :p]
    U_r = subspace.orthonormal(torch.as_tensor(np.random.default_rng(4).standard_normal((d, p)))).numpy()
    W = np.linalg.qr(np.hstack([U_r, np.random.default_rng(5).standard_normal((d, d - p))]))[0]  # [U_r, U_r^perp]
    X = W.T @ np.hstack([U_f, np.linalg.qr(np.hstack([U_f, np.eye(d)]))[0][:, p:]])
    u, cs, vdh = scipy.linalg.cossin(X, p=p, q=p)
    theta = np.sort(np.arccos(np.clip(np.diag(cs)[:p], -1, 1)))
    angles, _, _ = subspace.principal_angles(torch.as_tensor(U_f), torch.as_tensor(U_r))
    np.testing.assert_allclose(angles.numpy(), theta, atol=1e-8)


def test_exclusive_directions_are_those_past_the_threshold():
    e = torch.eye(6, dtype=torch.float64)
    shared = e[:, 0]
    tilted = torch.cos(torch.tensor(0.3)) * e[:, 1] + torch.sin(torch.tensor(0.3)) * e[:, 2]
    U_f = torch.stack([shared, e[:, 1], e[:, 3]], dim=1)           # forget updates
    U_r = torch.stack([shared, tilted], dim=1)                      # retained updates
    B = subspace.exclusive_directions(U_f, U_r, threshold=0.5)
    # e0 is shared (angle 0), e1 is 0.3 rad from the retained span, e3 is orthogonal to it
    assert B.shape[1] == 1
    np.testing.assert_allclose(np.abs((B.T @ e[:, 3]).numpy()), [1.0], atol=1e-12)
    B2 = subspace.exclusive_directions(U_f, U_r, threshold=0.2)
    assert B2.shape[1] == 2
    P = subspace.projector(B2)
    np.testing.assert_allclose((P @ P).numpy(), P.numpy(), atol=1e-12)
    np.testing.assert_allclose(P.numpy(), P.numpy().T, atol=1e-12)


def test_entangled_directions_on_a_constructed_example():
    e = torch.eye(6, dtype=torch.float64)
    tilted = torch.cos(torch.tensor(0.3)) * e[:, 1] + torch.sin(torch.tensor(0.3)) * e[:, 2]
    U_f = torch.stack([e[:, 0], e[:, 1], e[:, 3]], dim=1)
    U_r = subspace.orthonormal(torch.stack([e[:, 0], tilted], dim=1))
    E = subspace.entangled_directions(U_f, U_r, threshold=0.5)  # e0 (angle 0) once, e1 and tilted (0.3)
    np.testing.assert_allclose(subspace.projector(E).numpy(), np.diag([1.0, 1, 1, 0, 0, 0]), atol=1e-12)
    E2 = subspace.entangled_directions(U_f, U_r, threshold=0.2)
    np.testing.assert_allclose(subspace.projector(E2).numpy(), np.diag([1.0, 0, 0, 0, 0, 0]), atol=1e-12)
    assert subspace.entangled_directions(U_f, U_r[:, :0], threshold=0.5).shape[1] == 0


def test_entangled_directions_against_scipy_on_random_subspaces():
    r = np.random.default_rng(7)
    U_f = scipy.linalg.orth(r.standard_normal((20, 4)))
    U_r = scipy.linalg.orth(r.standard_normal((20, 3)) + 0.7 * U_f[:, :3] @ r.standard_normal((3, 3)))
    angles = np.sort(scipy.linalg.subspace_angles(U_f, U_r))
    threshold = float(angles[1] + angles[2]) / 2  # two pairs are entangled
    Y, _, Zt = np.linalg.svd(U_f.T @ U_r)
    ref = scipy.linalg.orth(np.hstack([U_f @ Y[:, :2], U_r @ Zt.T[:, :2]]))
    E = subspace.entangled_directions(torch.as_tensor(U_f), torch.as_tensor(U_r), threshold)
    assert E.shape[1] == 4
    np.testing.assert_allclose(subspace.projector(E).numpy(), ref @ ref.T, atol=1e-10)
    # removing them leaves every forget-exclusive direction untouched
    B = subspace.exclusive_directions(torch.as_tensor(U_f), torch.as_tensor(U_r), threshold)
    assert B.shape[1] == 2
    np.testing.assert_allclose((E.T @ B).numpy(), 0.0, atol=1e-10)


def test_lock_removes_exactly_the_components_that_point_back():
    B = _basis(7, 3, 6)
    back = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    coeff = torch.tensor([0.5, 0.7, -0.2], dtype=torch.float64)   # back along b0 only: b1 and b2 move away
    other = torch.as_tensor(np.random.default_rng(7).standard_normal(7))
    other = other - B @ (B.T @ other)                              # outside the locked span
    update = B @ coeff + other
    out = subspace.lock(update, B, back)
    np.testing.assert_allclose((out @ B).numpy(), [0.0, 0.7, -0.2], atol=1e-12)
    np.testing.assert_allclose((out - B @ (B.T @ out)).numpy(), other.numpy(), atol=1e-12)
    rows = subspace.lock(torch.stack([update, -update]), B, back)  # row-wise; the mirrored update keeps b0
    np.testing.assert_allclose((rows[1] @ B).numpy(), [-0.5, 0.0, 0.0], atol=1e-12)


def test_lock_penalty_gradient_and_bounded_drift():
    B = _basis(5, 2, 8)
    anchor = torch.zeros(5, dtype=torch.float64)
    theta = torch.as_tensor(np.random.default_rng(9).standard_normal(5)).requires_grad_(True)
    value, g = subspace.lock_penalty(theta, anchor, B, mu=3.0)
    auto, = torch.autograd.grad(value, theta)
    np.testing.assert_allclose(g.detach().numpy(), auto.numpy(), atol=1e-12)
    # a constant push along a locked direction settles at drift |<push, b>| / mu
    push, mu, x = 0.4 * B[:, 0], 5.0, anchor.clone()
    for _ in range(2000):
        x = x - 0.05 * (-push + subspace.lock_penalty(x, anchor, B, mu)[1])
    assert float(x @ B[:, 0]) == pytest.approx(0.4 / mu, rel=1e-6)
