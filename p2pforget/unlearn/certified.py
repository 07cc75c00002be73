"""Certified unlearning on a gossip graph: influence-weighted Newton/Fisher corrections with
calibrated Gaussian noise.

Follows "Certified Unlearning in Decentralized Federated Learning" (Wu, Tao, Zhou, Chen, Dressler,
Yu; arXiv 2601.06436): quantify how the forgotten data spread (the influence ledger), build a
Newton-style correction from the curvature of the remaining objective (exact, or Fisher/GGN
approximations), perturb it with noise calibrated to (epsilon, delta), and spread it through the
network. The certificate follows Guo et al. (ICML 2020, "Certified data removal from machine
learning models") and Sekhari et al. (NeurIPS 2021, "Remember what you want to forget").

Notation. Training minimizes ``Phi(theta) = sum_k a_k f_k(theta)`` (``a_k`` from
:meth:`~p2pforget.Engine.objective_weights`); after the request the target is ``Phi'`` over the
remaining data. At a stationary point of ``Phi``, ``grad Phi'(theta) = -g`` with
``g = sum_j [a_j grad f_j - a'_j grad f'_j](theta)`` over the forgotten clients j.

1. Every forgotten client j computes its ``g_j`` at its own model; the vectors are broadcast.
2. Node i weighs them by its influence ledger, ``omega_ij = n * C_ij / sum_k C_ik`` (DSGD: the
   share of j's updates in i's model relative to the network mean; 1 for gradient tracking and the
   star, where every node holds the minimizer of ``Phi``), so its estimate of ``grad Phi'(theta_i)``
   is ``-sum_j omega_ij g_j``.
3. Every node computes the curvature of its remaining local objective; the network sums it
   (``averaging = "tree"``, the default: exactly, up and down a spanning tree; ``"gossip"``: gossip
   with the remaining graph's Metropolis matrix until the estimates agree to
   ``unlearn.curvature_tol``, times the node count; on a star the hub sums). An inexact sum only slows the Newton iteration,
   and the certificate accounts for it.
4. Newton step ``theta_i <- theta_i - H_i^{-1} grad_i``. Each further step (``newton_steps``)
   first averages the nodes' models (the target, the remaining optimum, is one point), then sums
   the nodes' remaining-data gradients at that model the same way (to ``unlearn.gossip_tol``)
   instead of using the ledger.
5. Gaussian noise is added with ``sigma`` from the analytic Gaussian mechanism (Balle & Wang, ICML
   2018; :mod:`.gaussian`) for the declared sensitivity ``budget`` (so sigma does not depend on
   which data were forgotten). ``noise_scope = "shared"`` (default): the nodes first agree on their
   mean model exactly (a tree sum, charged) and all release it with one noise draw;
   ``"per_node"``: independent draws with sigma scaled by ``sqrt(M)`` so the joint release of the M
   nodes is covered. Noise comes from OS entropy unless ``noise_seed`` is set (then the certificate
   says ``private = false``). ``certified`` is true only when noise was added from OS entropy, the
   objective is strongly convex (logistic, weight decay > 0), the models are float64 and the bound
   is within the budget; ``not_certified_because`` says what is missing otherwise (see
   :func:`certificate` and docs/certified_unlearning.md).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import grad, jvp, vmap

with warnings.catch_warnings():
    # jvp loads these decompositions on first use (a third of a second); load them up front so
    # they do not count as unlearning time. Torch's own module warns about its use of torch.jit.
    warnings.simplefilter("ignore", FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401

from .. import seeding
from . import gaussian
from ..config import ConfigError, bounded, choice
from ..registry import METHODS
from . import ForgetRequest, Outcome
from .curvature import KINDS, is_diagonal, local_curvature

if TYPE_CHECKING:
    from ..engine import Engine

HESSIAN_LIPSCHITZ_SOFTMAX = 6.0
"""||d/dz (diag p - p p^T)|| <= 6 for the softmax p(z): bounds how fast the cross-entropy Hessian changes."""


def noise_scale(sensitivity: float, epsilon: float, delta: float) -> float:
    """The analytic Gaussian mechanism's noise for an L2 ``sensitivity`` (Balle & Wang 2018; valid
    for every epsilon, unlike the classical ``sqrt(2 ln(1.25/delta)) / epsilon``).

    >>> round(noise_scale(1.0, 1.0, 1e-5), 4)
    3.7306
    """
    return gaussian.sigma(sensitivity, epsilon=epsilon, delta=delta)


def influence_weights(engine: "Engine", forgotten: list[int]) -> torch.Tensor:
    """``omega [n_local, len(forgotten)]``: how strongly each local node holds each forgotten client."""
    n_local = engine.hi - engine.lo
    if engine.is_star or engine.config.train.algorithm == "gradient_tracking" or engine.round == 0:
        return torch.ones(n_local, len(forgotten), dtype=torch.float64)
    return int(engine.members.sum()) * engine.ledger_shares(forgotten).cpu()


def remaining_objective(engine: "Engine", dtype: torch.dtype | None = None):
    """``Phi'(theta) = sum_k a'_k f'_k(theta)`` over all remaining data, from the task's loss (used to
    evaluate the certificate), in ``dtype`` (default: the training dtype)."""
    d = engine.data
    dtype = dtype or engine.dtype
    batch = {"x": torch.as_tensor(d.x, dtype=dtype), "y": torch.as_tensor(d.y),
             "mask": torch.as_tensor(engine.retained & engine.members[:, None], dtype=dtype)}
    a = torch.as_tensor(engine.objective_weights(), dtype=dtype)
    wd = engine.config.train.weight_decay
    per_client = vmap(engine.task.data_loss, in_dims=(None, 0))

    def phi(theta: torch.Tensor) -> torch.Tensor:
        return (a * per_client(theta, batch)).sum() + a.sum() * 0.5 * wd * (theta * theta).sum()

    return phi


OPTIMUM_MAX_DIM = 2000
"""The remaining optimum is solved (dense Newton) for models up to this many parameters."""


def remaining_optimum(engine: "Engine", start: np.ndarray) -> np.ndarray | None:
    """``theta'* = argmin Phi'`` in float64 by Newton's method with backtracking, from ``start``:
    the point Retrain converges to, which the simulator can compute with global knowledge of the
    data. ``None`` for a model that is not strongly convex or has more than
    :data:`OPTIMUM_MAX_DIM` parameters."""
    if hessian_lipschitz(engine) is None or engine.config.train.weight_decay <= 0 or engine.dim > OPTIMUM_MAX_DIM:
        return None
    phi = remaining_objective(engine, torch.float64)
    x = torch.as_tensor(start, dtype=torch.float64)
    for _ in range(100):
        g = grad(phi)(x)
        if float(torch.linalg.vector_norm(g)) < 1e-12 * max(1.0, float(torch.linalg.vector_norm(x))):
            break
        step = torch.linalg.solve(torch.func.hessian(phi)(x), g)
        f0, t = float(phi(x)), 1.0
        while float(phi(x - t * step)) > f0 and t > 1e-10:
            t /= 2
        x = x - t * step
    return x.numpy()


def hessian_lipschitz(engine: "Engine") -> float | None:
    """Lipschitz constant of ``theta -> Hessian of Phi'`` for the logistic model: each sample's
    cross-entropy Hessian ``(diag p - p p^T) (x) x~ x~^T`` changes at most ``6 ||x~||^3`` per unit step
    (``x~`` = features with the bias 1). ``None`` for other models (no certificate)."""
    if engine.config.model.kind != "logistic":
        return None
    d = engine.data
    keep = engine.retained & engine.members[:, None]
    x = d.x[keep].reshape(int(keep.sum()), -1)
    norm = np.sqrt((x * x).sum(axis=1) + 1.0).max()
    return HESSIAN_LIPSCHITZ_SOFTMAX * norm ** 3 * float(engine.objective_weights().sum())


def certificate(engine: "Engine", before: np.ndarray, step: np.ndarray, after: np.ndarray, opts: "CertifiedOptions") -> dict:
    """The (epsilon, delta) certificate of the last Newton step, evaluated at the root.

    With ``A = sum_k a'_k`` and ``lambda = weight_decay`` (the strong convexity of ``Phi'/A``):

    - ``residual_norm`` = max over nodes of ``||grad Phi'(theta_i)|| / A`` at the noiseless models;
    - ``gradient_residual_bound`` = max over nodes of ``(||grad Phi'(t_i) + H'(t_i) s_i|| + M/2 ||s_i||^2) / A``,
      with ``t_i`` the model before the last step ``s_i`` and M the Hessian-Lipschitz constant of
      ``Phi'`` (Taylor's theorem; the first term is the error of the approximate Newton system:
      curvature approximation and gossip), plus ``1000 eps (1 + ||theta_i||)`` for rounding;
    - ``residual_bound = gradient_residual_bound / lambda`` bounds ``||theta_i - theta'*||``, the distance
      to the remaining optimum (Retrain's model at convergence), and is the sensitivity of the
      Gaussian mechanism.
    """
    phi = remaining_objective(engine)
    g_phi = grad(phi)
    nodes = np.flatnonzero(engine.members)
    A = float(engine.objective_weights().sum())
    wd = engine.config.train.weight_decay
    M = hessian_lipschitz(engine)
    norms, bounds, sizes = [], [], []
    for i in nodes:
        t, s, u = (torch.as_tensor(v[i]) for v in (before, step, after))
        norms.append(float(torch.linalg.vector_norm(g_phi(u))))
        sizes.append(float(torch.linalg.vector_norm(u)))
        g_t, hs = jvp(g_phi, (t,), (s,))
        linear = float(torch.linalg.vector_norm(g_t + hs))
        bounds.append(linear + 0.5 * (M or 0.0) * float(s @ s))
    residual_norm = max(norms) / A
    certified = M is not None and wd > 0
    # Allowance for floating-point error in evaluating the gradient itself.
    roundoff = 1e3 * torch.finfo(engine.dtype).eps * (1.0 + max(sizes))
    if certified:
        grad_bound = max(bounds) / A + roundoff
    else:
        grad_bound = residual_norm  # measured, not a worst-case bound: no certificate for this model
    # Two bounds on ||u_i - theta'*||, both valid for the lambda-strongly convex Phi'/A: Taylor's
    # (through the last step) and the gradient's, ||grad Phi'(u_i)|| / (A lambda) (evaluated
    # with the remaining data, as the simulator can); the smaller one is used.
    taylor_bound = grad_bound / wd if wd > 0 else float("inf")
    gradient_bound = (residual_norm + roundoff) / wd if certified else float("inf")
    residual_bound = min(taylor_bound, gradient_bound)
    sensitivity = opts.budget if opts.budget > 0 else residual_bound
    single = float(noise_scale(sensitivity, opts.epsilon, opts.delta))
    # Independent noise on M releases: the joint release has sensitivity sqrt(M) * the single one's.
    scale = math.sqrt(len(nodes)) if opts.noise_scope == "per_node" else 1.0
    reasons = []
    if not opts.noise:
        reasons.append("no noise was added (unlearn.certified.noise = false)")
    if opts.noise_seed >= 0:
        reasons.append("the noise comes from a stored seed (unlearn.certified.noise_seed), so it can be regenerated")
    if M is None or wd <= 0:
        reasons.append("the objective is not known to be strongly convex with a bounded Hessian change "
                       "(needs model.kind = \"logistic\" and train.weight_decay > 0)")
    if engine.dtype != torch.float64:
        reasons.append("the models are float32: set train.dtype = \"float64\"")
    if opts.budget <= 0:
        reasons.append("sigma was computed from a bound that depends on the forgotten data: declare "
                       "unlearn.certified.budget")
    elif not residual_bound <= opts.budget:
        reasons.append(f"the bound {residual_bound:.3g} exceeds the declared budget {opts.budget:.3g}: "
                       "take more Newton steps or raise the budget")
    return {
        "method": "certified", "epsilon": opts.epsilon, "delta": opts.delta,
        "sigma": single * scale, "sigma_single_release": single, "sensitivity": float(sensitivity),
        "budget": opts.budget, "noise_scope": opts.noise_scope, "private": opts.noise_seed < 0,
        "residual_bound": float(residual_bound), "gradient_residual_bound": float(grad_bound),
        "taylor_bound": float(taylor_bound), "gradient_norm_bound": float(gradient_bound),
        "residual_norm": float(residual_norm), "strong_convexity": wd,
        "hessian_lipschitz": float(M) if M is not None else float("nan"),
        "certified": certified and not reasons, "not_certified_because": "; ".join(reasons),
        "curvature": opts.curvature, "newton_steps": opts.newton_steps,
    }


@dataclass(frozen=True)
class CertifiedOptions:
    """Keys of ``[unlearn.certified]``."""

    epsilon: float = bounded(1.0, 1e-12)
    delta: float = bounded(1e-5, 1e-300, 1.0)
    curvature: str = choice("exact", *KINDS)
    newton_steps: int = bounded(5, 1)
    noise: bool = True
    damping: float = bounded(0.0, 0.0)
    finetune_rounds: int = bounded(0, 0)
    noise_scope: str = choice("shared", "shared", "per_node")
    noise_seed: int = bounded(-1, -1)
    budget: float = bounded(1e-6, 0.0)
    averaging: str = choice("tree", "tree", "gossip")
    gossip_tol: float = bounded(1e-10, 1e-16, 1e-1)
    curvature_tol: float = bounded(1e-4, 1e-16, 1e-1)


@METHODS.register("certified", options=CertifiedOptions,
                  help="influence-weighted Newton/Fisher corrections with calibrated Gaussian noise")
class CertifiedNewton:
    """Decentralized certified unlearning (see the module docstring)."""

    def check(self, engine: "Engine", request: ForgetRequest, options: CertifiedOptions) -> None:
        if engine.ledger is None and not engine.is_star and engine.config.train.algorithm != "gradient_tracking":
            raise ConfigError("certified unlearning after DSGD weighs every node's correction by the influence ledger, "
                              "which is off: set [ledger] kind = \"full\" (or \"sparse\") and rerun the training")
        n = int(engine.retained[engine.members].sum())
        if not options.delta < 1.0 / n:
            raise ConfigError(f"unlearn.certified.delta = {options.delta:g} must lie in (0, 1/n) with n = {n} training "
                              f"samples (a larger delta allows releasing a sample outright); e.g. set it to {0.1 / n:.1g}")

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: CertifiedOptions) -> Outcome:
        lo, hi = engine.lo, engine.hi
        itemsize = torch.finfo(engine.dtype).bits // 8
        theta = engine.params.clone()
        forgotten = sorted(request.samples)
        omega = influence_weights(engine, forgotten).to(engine.dtype)

        # 1. g_j = a_j grad f_j - a'_j grad f'_j at client j's own model, before and after the exclusion.
        a_before = torch.as_tensor(engine.objective_weights()[lo:hi, None], dtype=engine.dtype)
        g_before = engine.gradients(theta, engine.full_batch())[0] * a_before
        engine.exclude(samples=request.samples, removed=request.removed)
        a_after = torch.as_tensor(engine.objective_weights()[lo:hi, None], dtype=engine.dtype)
        g_after = engine.gradients(theta, engine.full_batch())[0] * a_after
        full = engine.transport.gather(g_before - g_after)
        G = full[torch.as_tensor(forgotten)] if engine.transport.is_root else None
        G = engine.transport.broadcast(G, like=torch.zeros(len(forgotten), engine.dim, dtype=engine.dtype))
        n_nodes = int(engine.members.sum())
        member_rows = torch.as_tensor(engine.members[lo:hi])[:, None]
        comm = float(len(forgotten) * n_nodes * engine.dim * itemsize)

        # 2-4. Newton steps on the remaining objective.
        # Elementwise, one forgotten client at a time: a matrix product's rounding could depend on
        # how many nodes this process hosts.
        rhs = torch.zeros_like(theta)
        for k in range(len(forgotten)):
            rhs = rhs - omega[:, k:k + 1] * G[k]
        extra_flops = 0.0
        rounds = []
        for step in range(options.newton_steps):
            if step > 0:
                # The target is one point, the remaining optimum: nodes first agree on their mean
                # model, so every node's gradient sum is evaluated at the point it steps from.
                total, sent, _ = engine.network_sum(theta, tol=options.gossip_tol, averaging=options.averaging,
                                                   progress=request.progress)
                theta = torch.where(member_rows, total / n_nodes, theta)  # nodes that left keep their model
                local_grad = engine.gradients(theta, engine.full_batch())[0] * a_after
                rhs, sent2, _ = engine.network_sum(local_grad, tol=options.gossip_tol, averaging=options.averaging,
                                                   progress=request.progress)
                comm += sent + sent2
            curv = local_curvature(engine, theta, options.curvature)
            curv = curv * (a_after if is_diagonal(options.curvature) else a_after[:, :, None])
            H, sent, r = engine.network_sum(curv, tol=options.curvature_tol, averaging=options.averaging,
                                            progress=request.progress)
            comm += sent
            rounds.append(r)
            before = theta
            delta, flops = _solve(H, rhs, options.damping, active=engine.members[lo:hi])
            extra_flops += flops
            theta = theta + delta

        per_node = theta
        if options.noise and options.noise_scope == "shared":
            # "Perturb, then broadcast": the nodes agree on one model exactly (a sum up and down a
            # spanning tree, charged), and one noise draw is released by every node.
            total, sent, _ = engine.network_sum(theta, averaging="tree", progress=request.progress)
            theta = torch.where(member_rows, total / n_nodes, theta)
            comm += sent
        noiseless = theta

        def release() -> tuple[torch.Tensor, dict]:
            gathered = [engine.gather_params(v) for v in (before, delta, per_node)]
            cert = certificate(engine, *gathered, options) if engine.transport.is_root else None
            cert = engine.transport.bcast_object(cert)
            cert["gossip_rounds_per_average"] = rounds[0]
            if not options.noise:
                return noiseless, cert
            z = self._noise(engine, noiseless, options)
            _warn_if_noise_dominates(engine, noiseless, cert["sigma"])
            return noiseless + cert["sigma"] * z, cert

        return Outcome(noiseless=noiseless, release=release, comm_bytes=comm, extra_flops=extra_flops)

    @staticmethod
    def _noise(engine: "Engine", like: torch.Tensor, options: "CertifiedOptions") -> torch.Tensor:
        """Standard normal noise for the local rows (zero for nodes that left): one vector for every
        node (``shared``, drawn at the root and broadcast) or one per node (``per_node``). From OS
        entropy, or reproducibly from ``noise_seed`` (keyed by client and request, never by rank)."""
        d = like.shape[1]
        request = int((~engine.retained).sum())

        def draw(client: int) -> torch.Tensor:
            gen = torch.Generator()
            if options.noise_seed >= 0:
                gen = seeding.torch_generator(options.noise_seed, client=client, purpose="unlearn/noise", counters=(request,))
            else:
                gen.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
            return torch.randn(d, generator=gen, dtype=torch.float64).to(like.dtype)

        members = torch.as_tensor(engine.members[engine.lo:engine.hi], device=like.device)[:, None]
        if options.noise_scope == "shared":
            z = engine.transport.broadcast(draw(seeding.SHARED) if engine.transport.is_root else None, like=like[0])
            rows = z.to(like.device).expand_as(like)
        else:
            rows = torch.stack([draw(i) for i in range(engine.lo, engine.hi)]).to(like.device)
        return torch.where(members, rows, torch.zeros_like(rows))


def _warn_if_noise_dominates(engine: "Engine", noiseless: torch.Tensor, sigma: float) -> None:
    """A release whose noise is larger than the model itself carries little of the model."""
    if not engine.transport.is_root:
        return
    size = float(torch.linalg.vector_norm(noiseless[0]))
    noise = sigma * math.sqrt(noiseless.shape[1])
    if noise > size:
        warnings.warn(f"the certified release is mostly noise: the noise vector's expected norm {noise:.3g} exceeds "
                      f"the model's norm {size:.3g}; raise unlearn.certified.newton_steps or epsilon, or lower the "
                      "budget if the bound allows it", stacklevel=3)


def _solve(H: torch.Tensor, rhs: torch.Tensor, damping: float, *, active: np.ndarray) -> tuple[torch.Tensor, float]:
    """``-H_i^{-1} rhs_i`` for every local node still in the graph (zero for nodes that left), with
    H diagonal ``[n, d]`` or dense ``[n, d, d]``; returns the step and the FLOPs every node spends.

    Dense systems use a Cholesky factorization (LU if H is not positive definite). Nodes whose H
    is the same matrix (an exact sum hands every node the same one) share one factorization here;
    the FLOPs still count one factorization per node, as each node does its own."""
    out = torch.zeros_like(rhs)
    rows = np.flatnonzero(active)
    d = rhs.shape[1]
    if H.dim() == 2:
        out[rows] = -rhs[rows] / (H[rows] + damping)
        return out, float(len(rows) * d)
    eye = damping * torch.eye(d, dtype=H.dtype)
    groups: list[list[int]] = []
    for r in rows:
        for g in groups:
            if torch.equal(H[g[0]], H[r]):
                g.append(int(r))
                break
        else:
            groups.append([int(r)])
    for g in groups:
        A = H[g[0]] + eye
        L, info = torch.linalg.cholesky_ex(A)
        for r in g:  # one right-hand side at a time, so no result depends on the group's size
            b = rhs[r][:, None]
            out[r] = -(torch.cholesky_solve(b, L) if int(info) == 0 else torch.linalg.solve(A, b))[:, 0]
    return out, float(len(rows) * (d ** 3 / 3 + 2 * d ** 2))
