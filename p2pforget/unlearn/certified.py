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
   is ``-sum_j omega_ij g_j`` (``first_step = "ledger"``, the paper's step; ``"uniform"``; or
   ``"none"``, which skips it; ``"auto"``, the default: ``none`` for strongly convex models, where
   a step at the nodes' mean model was measured 30-100x more accurate, ``ledger`` otherwise,
   where averaging non-convex models hurts; see docs/certified_unlearning.md).
3. Every node computes the curvature of its remaining local objective (``curvature = "auto"``,
   the default: the exact Hessian for the logistic model, the GGN damped by
   :data:`NONCONVEX_DAMPING` for the others); the network sums it
   (``averaging = "tree"``, the default: exactly, up and down a spanning tree; ``"gossip"``: gossip
   with the remaining graph's Metropolis matrix until the estimates agree to
   ``unlearn.curvature_tol``, times the node count; on a star the hub sums). Newton step
   ``theta_i <- theta_i - H_i^{-1} grad_i``.
4. The nodes agree on their mean model and sum their remaining gradients and objective values at
   it; further Newton steps, each with backtracking on the summed remaining objective, follow
   until ``newton_steps`` are done and the strong-convexity bound ``||grad Phi'|| / (A lambda)`` is
   within ``budget``. The certificate's own bound decides whether that worked; if not, the
   ``fallback = "exact"`` (default) takes up to ``max_fallback_steps`` more exact Newton steps
   (exact curvature, exact sums) until it holds. Every branch is certified against the same
   reference, the remaining optimum. Everything runs in float64, whatever the training dtype, on
   the inputs as trained on (:func:`trained_inputs`).
5. Gaussian noise is added with ``sigma`` from the analytic Gaussian mechanism (Balle & Wang, ICML
   2018; :mod:`.gaussian`) for the declared sensitivity ``budget`` (so sigma does not depend on
   which data were forgotten). ``noise_scope = "shared"`` (default): the nodes first agree on their
   mean model exactly (a tree sum, charged) and all release it with one noise draw;
   ``"per_node"``: independent draws with sigma scaled by ``sqrt(M)`` so the joint release of the M
   nodes is covered. Noise comes from OS entropy unless ``noise_seed`` is set (then the certificate
   says ``private = false``). ``certified`` is true only when noise was added from OS entropy, the
   objective is strongly convex (logistic, weight decay > 0) and the bound is within the budget
   (or the request fell back to Retrain); ``not_certified_because`` says what is missing otherwise (see
   :func:`certificate` and docs/certified_unlearning.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import grad, jvp, vmap

with warnings.catch_warnings():
    # jvp loads these decompositions on first use (a third of a second); load them up front so
    # they do not count as unlearning time. Torch's own module warns about its use of torch.jit.
    warnings.simplefilter("ignore", FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401

from .. import seeding, topology
from . import gaussian
from ..config import ConfigError, bounded, choice
from ..registry import METHODS
from . import ForgetRequest, Outcome
from .curvature import KINDS, is_diagonal, local_curvature

if TYPE_CHECKING:
    from ..engine import Engine

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
        return torch.ones(n_local, len(forgotten), dtype=torch.float64, device=engine.device)
    return int(engine.members.sum()) * engine.ledger.shares(forgotten).to(engine.device)


def ledger_bytes(engine: "Engine") -> float:
    """What keeping the influence ledger cost in messages, charged to the unlearning that reads it:
    every round each node sends its ledger row (``n`` float64 entries; ``keep`` values and indices
    for a sparse ledger) along each edge of the graph. Zero where the ledger is not read (the star,
    gradient tracking)."""
    if engine.ledger is None or engine.is_star or engine.config.train.algorithm == "gradient_tracking":
        return 0.0
    entries = engine.n_clients if engine.config.ledger.kind_for(engine.n_clients) == "full" else 2 * engine.config.ledger.keep
    return float(engine.round * topology.message_count(engine.network.base_mixing) * entries * 8)


def trained_inputs(engine: "Engine", inputs: np.ndarray) -> np.ndarray:
    """Every client's ``inputs`` (:meth:`~p2pforget.engine.batches.Batches.inputs`) as the engine trains on
    them: rounded to the training dtype, then held in float64. The Newton steps, Retrain and the
    certificate all see these values, so that the optimum the certificate measures against is the
    one the steps converge to (a float32 run's optimum on the unrounded float64 inputs lies ~1e-8
    away, which the bound would divide by lambda)."""
    if engine.dtype == torch.float64:
        return inputs
    return torch.as_tensor(inputs, dtype=engine.dtype).to(torch.float64).numpy()


def remaining_objective(engine: "Engine", inputs: np.ndarray, dtype: torch.dtype | None = None):
    """``Phi'(theta) = sum_k a'_k f'_k(theta)`` over all remaining data (every client's ``inputs``
    as trained on, :func:`trained_inputs`), from the task's loss (used to evaluate the
    certificate), in ``dtype`` (default: the training dtype)."""
    d = engine.data
    dtype = dtype or engine.dtype
    dev = engine.device
    batch = {"x": torch.as_tensor(trained_inputs(engine, inputs), dtype=dtype, device=dev), "y": torch.as_tensor(d.y, device=dev),
             "mask": torch.as_tensor(engine.retained & engine.members[:, None], dtype=dtype, device=dev)}
    a = torch.as_tensor(engine.objective_weights(), dtype=dtype, device=dev)
    wd = engine.config.train.weight_decay
    per_client = vmap(engine.task.data_loss, in_dims=(None, 0))

    def phi(theta: torch.Tensor) -> torch.Tensor:
        return (a * per_client(theta, batch)).sum() + a.sum() * 0.5 * wd * (theta * theta).sum()

    return phi


OPTIMUM_MAX_DIM = 2000
"""The remaining optimum is solved (dense Newton) for models up to this many parameters."""


def optimum_solvable(engine: "Engine") -> bool:
    """Whether :func:`remaining_optimum` solves for the optimum: a strongly convex model (logistic,
    with weight decay) of at most :data:`OPTIMUM_MAX_DIM` parameters; decided before any data are
    gathered."""
    return (engine.config.model.kind == "logistic" and engine.config.train.weight_decay > 0
            and engine.dim <= OPTIMUM_MAX_DIM)


def remaining_optimum(engine: "Engine", start: np.ndarray, inputs: np.ndarray) -> np.ndarray | None:
    """``theta'* = argmin Phi'`` in float64 by Newton's method with backtracking, from ``start``:
    the point Retrain converges to, which the simulator can compute with global knowledge of the
    data. ``None`` for a model that is not strongly convex or has more than
    :data:`OPTIMUM_MAX_DIM` parameters."""
    if not optimum_solvable(engine):
        return None
    phi = remaining_objective(engine, inputs, torch.float64)
    x = torch.as_tensor(start, dtype=torch.float64, device=engine.device)
    for _ in range(100):
        g = grad(phi)(x)
        if float(torch.linalg.vector_norm(g)) < 1e-12 * max(1.0, float(torch.linalg.vector_norm(x))):
            break
        step = torch.linalg.solve(torch.func.hessian(phi)(x), g)
        f0, t = float(phi(x)), 1.0
        while float(phi(x - t * step)) > f0 and t > 1e-10:
            t /= 2
        x = x - t * step
    return x.cpu().numpy()


def softmax_curvature_lipschitz(n_classes: int) -> float:
    """A proven Lipschitz constant of the logits ``z -> diag p - p p^T`` (``p = softmax(z)``) in the
    spectral norm: ``sqrt(2) / (3 sqrt(3)) ~ 0.272`` for two classes (attained), ``1/sqrt(2)`` for
    more (see docs/certified_unlearning.md, "Hessian-Lipschitz constant", for the proofs).

    >>> round(softmax_curvature_lipschitz(2), 4), round(softmax_curvature_lipschitz(10), 4)
    (0.2722, 0.7071)
    """
    return math.sqrt(2.0) / (3.0 * math.sqrt(3.0)) if n_classes <= 2 else 1.0 / math.sqrt(2.0)


def hessian_lipschitz(engine: "Engine", inputs: np.ndarray) -> float | None:
    """Lipschitz constant of ``theta -> Hessian of Phi'`` for the logistic model: each sample's
    cross-entropy Hessian ``(diag p - p p^T) (x) x~ x~^T`` changes at most ``c ||x~||^3`` per unit step
    (``x~`` = features with the bias 1, ``c`` from :func:`softmax_curvature_lipschitz`). ``None`` for
    other models (no certificate)."""
    if engine.config.model.kind != "logistic":
        return None
    d = engine.data
    keep = engine.retained & engine.members[:, None]
    x = trained_inputs(engine, inputs)[keep].reshape(int(keep.sum()), -1)
    norm = np.sqrt((x * x).sum(axis=1) + 1.0).max()
    return softmax_curvature_lipschitz(d.n_classes) * norm ** 3 * float(engine.objective_weights().sum())


def certificate(engine: "Engine", before: np.ndarray, step: np.ndarray, per_node: np.ndarray, released: np.ndarray,
                opts: "CertifiedOptions", *, inputs: np.ndarray, steps: int, fallback_from: int | None = None) -> dict:
    """The (epsilon, delta) certificate of the noiseless ``released`` models, evaluated at the root
    in float64 (``per_node = before + step`` are the models the last Newton step produced).

    With ``A = sum_k a'_k`` and ``lambda = weight_decay`` (the strong convexity of ``Phi'/A``):

    - ``residual_norm`` = max over nodes of ``||grad Phi'(u_i)|| / A`` at the released models ``u_i``;
    - ``gradient_residual_bound`` = max over nodes of ``(||grad Phi'(t_i) + H'(t_i) s_i|| + M/2 ||s_i||^2) / A``,
      with ``t_i`` the model before the last step ``s_i`` and M the Hessian-Lipschitz constant of
      ``Phi'`` (Taylor's theorem; the first term is the error of the approximate Newton system:
      curvature approximation and gossip), plus ``1000 eps (1 + ||u_i||)`` for rounding; valid only
      where the released model is that step's result (infinite where the nodes averaged after it);
    - ``residual_bound`` = the smaller of ``gradient_residual_bound / lambda`` (Taylor) and
      ``(residual_norm + rounding) / lambda`` (strong convexity) bounds ``||u_i - theta'*||``, the
      distance to the remaining optimum (Retrain's model at convergence).

    ``steps`` Newton steps were taken, the last ``steps - fallback_from`` of them exact fallback
    steps (``fallback_from = None``: no fallback). Every branch is certified against the same
    reference, the remaining optimum ``theta'*``.
    """
    phi = remaining_objective(engine, inputs, torch.float64)
    g_phi = grad(phi)
    nodes = np.flatnonzero(engine.members)
    A = float(engine.objective_weights().sum())
    wd = engine.config.train.weight_decay
    M = hessian_lipschitz(engine, inputs)
    norms, bounds, sizes = [], [], []
    for i in nodes:
        t, s, p, u = (torch.as_tensor(v[i], dtype=torch.float64, device=engine.device)
                      for v in (before, step, per_node, released))
        norms.append(float(torch.linalg.vector_norm(g_phi(u))))
        sizes.append(float(torch.linalg.vector_norm(u)))
        if torch.equal(p, u):
            g_t, hs = jvp(g_phi, (t,), (s,))
            bounds.append(float(torch.linalg.vector_norm(g_t + hs)) + 0.5 * (M or 0.0) * float(s @ s))
        else:
            bounds.append(math.inf)
    residual_norm = max(norms) / A
    convex = M is not None and wd > 0
    roundoff = ROUNDOFF * (1.0 + max(sizes))
    # Measured, not a worst-case bound, for a model without a certificate.
    grad_bound = max(bounds) / A + roundoff if convex else residual_norm
    taylor_bound = grad_bound / wd if wd > 0 else math.inf
    gradient_bound = (residual_norm + roundoff) / wd if convex else math.inf
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
    if not convex:
        reasons.append("the objective is not known to be strongly convex with a bounded Hessian change "
                       "(needs model.kind = \"logistic\" and train.weight_decay > 0)")
    if opts.budget <= 0:
        reasons.append("sigma was computed from a bound that depends on the forgotten data: declare "
                       "unlearn.certified.budget")
    elif not residual_bound <= opts.budget:
        floor = roundoff / wd if wd > 0 else math.inf
        taken = f"{steps} Newton steps" + ("" if fallback_from is None else
                                           f" ({steps - fallback_from} of them exact fallback steps)")
        if floor > opts.budget:
            reasons.append(f"the bound {residual_bound:.3g} exceeds the declared budget {opts.budget:.3g} after {taken}; "
                           f"float64 rounding alone allows {floor:.3g} at weight decay {wd:g}: raise the budget "
                           "or train.weight_decay")
        else:
            hint = ("raise max_fallback_steps or the budget" if fallback_from is not None
                    else "raise max_newton_steps or the budget, or set fallback = \"exact\"")
            reasons.append(f"the bound {residual_bound:.3g} exceeds the declared budget {opts.budget:.3g} after {taken}: "
                           + hint)
    return {
        "method": "certified", "epsilon": opts.epsilon, "delta": opts.delta, "noise": opts.noise,
        "sigma": single * scale, "sigma_single_release": single, "sensitivity": float(sensitivity),
        "budget": opts.budget, "noise_scope": opts.noise_scope, "private": opts.noise_seed < 0,
        "residual_bound": float(residual_bound), "gradient_residual_bound": float(grad_bound),
        "taylor_bound": float(taylor_bound), "gradient_norm_bound": float(gradient_bound),
        "residual_norm": float(residual_norm), "strong_convexity": wd,
        "hessian_lipschitz": float(M) if M is not None else float("nan"),
        "certified": convex and not reasons, "not_certified_because": "; ".join(reasons),
        "fallback": "none" if fallback_from is None else "exact", "reference": "remaining optimum",
        "curvature": opts.curvature, "newton_steps": opts.newton_steps, "first_step": first_step(engine, opts),
    }


@dataclass(frozen=True)
class CertifiedOptions:
    """Keys of ``[unlearn.certified]``."""

    epsilon: float = bounded(1.0, 1e-12)
    delta: float = bounded(1e-5, 1e-300, 1.0)
    curvature: str = choice("auto", "auto", *KINDS)
    newton_steps: int = bounded(1, 1)
    max_newton_steps: int = bounded(20, 1)
    first_step: str = choice("auto", "auto", "ledger", "uniform", "none")
    fallback: str = choice("exact", "exact", "none")
    max_fallback_steps: int = bounded(20, 1)
    noise: bool = True
    damping: float = bounded(0.0, 0.0)
    finetune_rounds: int = bounded(0, 0)
    noise_scope: str = choice("shared", "shared", "per_node")
    noise_seed: int = bounded(-1, -1)
    budget: float = bounded(1e-6, 0.0)
    averaging: str = choice("tree", "tree", "gossip")
    solver: str = choice("auto", "auto", "direct", "cg")
    topk: int = bounded(0, 0)
    cg_tol: float = bounded(1e-12, 1e-16, 1e-1)
    cg_max_iter: int = bounded(500, 1)
    gossip_tol: float = bounded(1e-10, 1e-16, 1e-1)
    curvature_tol: float = bounded(1e-4, 1e-16, 1e-1)


class UnlearningDiverged(ValueError):
    """The Newton iteration produced non-finite models: no certificate can be issued (a value
    error: the command line prints it as one line, with the fix)."""


LINE_SEARCH_HALVINGS = 30


@METHODS.register("certified", options=CertifiedOptions,
                  help="influence-weighted Newton/Fisher corrections with calibrated Gaussian noise")
class CertifiedNewton:
    """Decentralized certified unlearning (see the module docstring)."""

    def check(self, engine: "Engine", request: ForgetRequest, options: CertifiedOptions) -> None:
        if (first_step(engine, options) == "ledger" and engine.ledger is None and not engine.is_star
                and engine.config.train.algorithm != "gradient_tracking"):
            raise ConfigError("certified unlearning after DSGD weighs every node's correction by the influence ledger, "
                              "which is off: set [ledger] kind = \"full\" (or \"sparse\") and rerun the training, "
                              "or set unlearn.certified.first_step = \"uniform\" or \"none\"")
        n = int(engine.retained[engine.members].sum())
        if not options.delta < 1.0 / n:
            raise ConfigError(f"unlearn.certified.delta = {options.delta:g} must lie in (0, 1/n) with n = {n} training "
                              f"samples (a larger delta allows releasing a sample outright); e.g. set it to {0.1 / n:.1g}")
        if options.solver == "cg" and curvature_kind(engine, options) != "exact":
            raise ConfigError(f"unlearn.certified.solver = \"cg\" multiplies by the exact Hessian (one network sum of "
                              f"a d-vector per iteration); curvature = {options.curvature!r} needs solver = \"direct\"")
        if options.max_newton_steps < options.newton_steps:
            raise ConfigError(f"unlearn.certified.max_newton_steps = {options.max_newton_steps} is below newton_steps = "
                              f"{options.newton_steps}; set it to at least {options.newton_steps}")

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: CertifiedOptions) -> Outcome:
        options = dataclasses.replace(options, curvature=curvature_kind(engine, options), damping=damping_used(engine, options),
                                      solver=solver(engine, options))
        # Curvature, steps and certificate run in float64 whatever the training dtype: float32
        # rounding alone would dwarf any useful sensitivity.
        f64 = torch.float64
        lo, hi = engine.lo, engine.hi
        theta = engine.params.to(f64)
        forgotten = sorted(request.samples)

        first = first_step(engine, options)
        # 1. g_j = a_j grad f_j - a'_j grad f'_j at client j's own model, before and after the exclusion.
        if first != "none":
            a_before = torch.as_tensor(engine.objective_weights()[lo:hi, None], dtype=f64, device=engine.device)
            g_before = engine.compute.gradients(theta, engine.batches.full(f64))[0] * a_before
        engine.exclude(samples=request.samples, removed=request.removed)
        batch = engine.batches.full(f64)
        a_after = torch.as_tensor(engine.objective_weights()[lo:hi, None], dtype=f64, device=engine.device)
        n_nodes = int(engine.members.sum())
        member_rows = torch.as_tensor(engine.members[lo:hi], device=engine.device)[:, None]
        state = _NewtonState(engine=engine, request=request, options=options, batch=batch, a=a_after,
                             member_rows=member_rows, n_nodes=n_nodes)

        # 2. A first step at each node's own model, with the forgotten clients' gradients weighted by
        # the node's influence ledger (or uniformly); first_step() says when it is taken.
        last = None
        if first != "none":
            g_after = engine.compute.gradients(theta, batch)[0] * a_after
            full = engine.transport.gather(g_before - g_after)
            G = full[torch.as_tensor(forgotten)] if engine.transport.is_root else None
            G = engine.transport.broadcast(G, like=torch.zeros(len(forgotten), engine.dim, dtype=f64, device=engine.device))
            state.comm += float(len(forgotten) * n_nodes * engine.dim * 8)
            omega = (influence_weights(engine, forgotten) if first == "ledger"
                     else torch.ones(hi - lo, len(forgotten), dtype=f64, device=engine.device))
            if first == "ledger":
                state.comm += ledger_bytes(engine)
            # Elementwise, one forgotten client at a time: a matrix product's rounding could depend
            # on how many nodes this process hosts.
            rhs = torch.zeros_like(theta)
            for k in range(len(forgotten)):
                rhs = rhs - omega[:, k:k + 1] * G[k]
            step = state.newton_step(theta, rhs)
            last = (theta, step)
            theta = theta + step
            state.steps = 1

        # 3-4. Newton steps at the nodes' common model with backtracking on the remaining objective,
        # until newton_steps are done and the network-summed gradient bound is within the budget.
        theta, last = state.iterate(theta, last)
        theta, per_node, cert = self._finish(engine, state, theta, last)
        if (options.fallback == "exact" and strongly_convex(engine) and options.budget > 0
                and not cert["residual_bound"] <= options.budget):
            # The certificate's own bound decides: exact Newton steps (exact curvature, exact sums)
            # from the nodes' common model until the bound holds, charged to the request.
            state.fallback_from = state.steps
            exact = dataclasses.replace(options, curvature="exact", averaging="tree", topk=0, first_step="none",
                                        solver="auto", newton_steps=state.steps + 1,
                                        max_newton_steps=state.steps + options.max_fallback_steps)
            state.options = dataclasses.replace(exact, solver=solver(engine, exact))
            theta, last = state.iterate(theta, last)
            theta, per_node, cert = self._finish(engine, state, theta, last)
        noiseless = theta

        def release() -> tuple[torch.Tensor, dict]:
            if not options.noise:
                return noiseless.to(engine.dtype), cert
            z = self._noise(engine, noiseless, options)
            _warn_if_noise_dominates(engine, noiseless, cert["sigma"])
            # Rounding the release to the training dtype is post-processing: it keeps the guarantee.
            return (noiseless + cert["sigma"] * z).to(engine.dtype), cert

        return Outcome(noiseless=noiseless.to(engine.dtype), release=release, comm_bytes=state.comm,
                       extra_flops=state.flops, rounds=state.steps)

    @staticmethod
    def _finish(engine: "Engine", state: "_NewtonState", theta: torch.Tensor, last) -> tuple:
        """The models to release and their certificate: with shared noise the nodes first agree on
        their mean model exactly ("perturb, then broadcast", charged), so that one noise draw is
        released by every node. Returns ``(released, per_node, certificate)``; ``per_node`` are the
        models the last Newton step produced. The certificate is the simulator's check with global
        knowledge of the data: its seconds and FLOPs are not the method's (``request.excluded``)."""
        from . import measured

        options, request = state.options, state.request
        if not bool(torch.isfinite(theta).all()):
            raise UnlearningDiverged("certified unlearning diverged (non-finite models after "
                                     f"{state.steps} Newton steps): raise unlearn.certified.damping or weight decay")
        per_node = theta
        if options.noise and options.noise_scope == "shared" and not state.agreed:
            total, sent, _ = engine.network.sum(theta, averaging="tree", progress=request.progress)
            theta = torch.where(state.member_rows, total / state.n_nodes, theta)
            state.comm += sent
            state.agreed = True
        before, step = last if last is not None else (theta, torch.zeros_like(theta))

        def evaluate() -> dict:
            gathered = [engine.network.gather(v) for v in (before, step, per_node, theta)]
            inputs = engine.batches.inputs()  # every process takes part; only the root uses them
            cert = (certificate(engine, *gathered, options, inputs=inputs, steps=state.steps,
                                fallback_from=state.fallback_from) if engine.transport.is_root else None)
            return engine.transport.bcast_object(cert)

        cert, seconds, flops = measured(evaluate)
        request.excluded["seconds"] += seconds
        request.excluded["flops"] += flops
        cert |= {"gossip_rounds_per_average": state.rounds[0] if state.rounds else 0,
                 "newton_steps_taken": state.steps, "network_gradient_bound": state.bound,
                 "solver": options.solver, "cg_iterations": state.cg_iterations}
        return theta, per_node, cert

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
            return torch.randn(d, generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)

        members = torch.as_tensor(engine.members[engine.lo:engine.hi], device=like.device)[:, None]
        if options.noise_scope == "shared":
            z = engine.transport.broadcast(draw(seeding.SHARED) if engine.transport.is_root else None, like=like[0])
            rows = z.to(like.device).expand_as(like)
        else:
            rows = torch.stack([draw(i) for i in range(engine.lo, engine.hi)]).to(like.device)
        return torch.where(members, rows, torch.zeros_like(rows))


def sparsify_topk(curv: torch.Tensor, k: int) -> torch.Tensor:
    """Each node's symmetric curvature ``[n, d, d]`` reduced to its diagonal and the ``k`` largest
    off-diagonal pairs by magnitude (the sparsified Fisher of the decentralized certified
    unlearning paper): the message shrinks from d^2 to about d + 2k numbers. The error this makes
    in the Newton step is covered by the bound, which is evaluated at the result."""
    d = curv.shape[-1]
    iu = torch.triu_indices(d, d, 1)
    upper = curv[:, iu[0], iu[1]]
    k = min(k, upper.shape[1])
    keep = torch.zeros_like(upper, dtype=torch.bool)
    keep.scatter_(1, upper.abs().topk(k, dim=1).indices, True)
    out = torch.diag_embed(torch.diagonal(curv, dim1=1, dim2=2))
    kept = torch.where(keep, upper, torch.zeros_like(upper))
    out[:, iu[0], iu[1]] = kept
    out[:, iu[1], iu[0]] = kept
    return out


ROUNDOFF = 1e3 * torch.finfo(torch.float64).eps
"""Allowance per unit of ``1 + ||theta||`` for rounding in evaluating a float64 gradient."""


def first_step(engine: "Engine", options: "CertifiedOptions") -> str:
    """The first step actually taken: ``auto`` is ``none`` for a strongly convex model and
    ``ledger`` otherwise. Matrix-free steps (``solver = "cg"``) always start at the nodes' mean
    model: a step at their different models would need every node's curvature at every other
    node's model."""
    if solver(engine, options) == "cg":
        return "none"
    if options.first_step == "auto":
        return "none" if strongly_convex(engine) else "ledger"
    return options.first_step


CG_ABOVE_DIM = 200
"""``solver = "auto"`` multiplies by the Hessian matrix-free (CG) above this many parameters.
A dense step costs every node a d x d curvature message and ``d^3 / 3`` FLOPs for its
factorization; a CG iteration one d-vector sum and one Hessian-vector product (``~4 m d`` FLOPs
for m samples), 20-60 iterations per step on the benchmarks. With m = 20 the FLOPs cross near
d = 100 and the bytes near d = 40; the cost table (docs/results/certified_cost.md) showed the
dense solver at d = 1,000 spending 44x the FLOPs CG spends at d = 10,000."""


def solver(engine: "Engine", options: "CertifiedOptions") -> str:
    """The Newton system's solver actually used: ``auto`` is ``cg`` (matrix-free) for a strongly
    convex model with more than :data:`CG_ABOVE_DIM` parameters, exact curvature and no first step
    at the nodes' own models (CG needs a positive definite Hessian at one common model), and
    ``direct`` otherwise."""
    if options.solver != "auto":
        return options.solver
    matrix_free = (engine.dim > CG_ABOVE_DIM and curvature_kind(engine, options) == "exact" and strongly_convex(engine)
                   and options.first_step in ("auto", "none"))
    return "cg" if matrix_free else "direct"


def curvature_kind(engine: "Engine", options: "CertifiedOptions") -> str:
    """The curvature actually used: ``auto`` is ``exact`` for the logistic model (convex; its
    Hessian is the GGN) and ``ggn`` for the others (with :func:`damping_used`)."""
    if options.curvature != "auto":
        return options.curvature
    return "exact" if engine.config.model.kind == "logistic" else "ggn"


NONCONVEX_DAMPING = 3.0
"""The damping ``curvature = "auto"`` adds on a non-convex model unless ``damping`` is set. An
undamped Newton step there (exact Hessian, or the GGN, which is only positive semi-definite)
released models more than 5 points below the trained ones' validation accuracy on 9-11 of 18
calibration runs; damping 3.0 on none of them, closest to Retrain's FA_heldout of the candidates
(docs/results/calibration_defaults.md). The models there are not at a stationary point, which
the removal step assumes: no certificate is issued for them either way."""


def damping_used(engine: "Engine", options: "CertifiedOptions") -> float:
    """``damping``, or :data:`NONCONVEX_DAMPING` where ``curvature = "auto"`` meets a non-convex
    model and no damping was set."""
    if options.curvature == "auto" and options.damping == 0.0 and curvature_kind(engine, options) == "ggn":
        return NONCONVEX_DAMPING
    return options.damping


def strongly_convex(engine: "Engine") -> bool:
    """Whether the remaining objective is known to be strongly convex (logistic, weight decay > 0)."""
    return engine.config.model.kind == "logistic" and engine.config.train.weight_decay > 0


@dataclass
class _NewtonState:
    """The Newton iteration's shared state and what it has spent (bytes, FLOPs, steps)."""

    engine: "Engine"
    request: ForgetRequest
    options: CertifiedOptions
    batch: dict
    a: torch.Tensor            # [n_local, 1] objective weights after the exclusion
    member_rows: torch.Tensor  # [n_local, 1] nodes still in the graph
    n_nodes: int
    comm: float = 0.0
    flops: float = 0.0
    steps: int = 0
    rounds: list = field(default_factory=list)          # gossip rounds of each curvature sum
    cg_iterations: list = field(default_factory=list)   # conjugate-gradient iterations of each step
    agreed: bool = False       # every node holds the same model
    bound: float = math.inf    # the last network-summed gradient bound on the distance to the optimum
    fallback_from: int | None = None  # the step count when exact fallback steps began

    def net_sum(self, rows: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        total, sent, _ = self.engine.network.sum(rows, tol=self.options.gossip_tol, progress=self.request.progress,
                                                 averaging="tree" if exact else self.options.averaging)
        self.comm += sent
        return total

    def newton_step(self, theta: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``-H^{-1} rhs`` with H the network sum of the nodes' remaining curvature at ``theta``."""
        o, engine = self.options, self.engine
        curv = local_curvature(engine, theta, o.curvature)
        curv = curv * (self.a if is_diagonal(o.curvature) else self.a[:, :, None])
        if o.topk and not is_diagonal(o.curvature):
            curv = sparsify_topk(curv, o.topk)
        H, sent, r = engine.network.sum(curv, tol=o.curvature_tol, averaging=o.averaging, progress=self.request.progress)
        if o.topk and not is_diagonal(o.curvature):
            # Sent as the diagonal plus (index, value) pairs of the upper triangle; every partial sum's
            # support lies within the total's, so its size bounds each message.
            d = H.shape[-1]
            rows = np.flatnonzero(engine.members[engine.lo:engine.hi])
            support = int(torch.count_nonzero(torch.triu(H[int(rows[0]) if len(rows) else 0], 1)))
            sent = sent / (d * d * 8) * (d * 8 + support * 16)
        self.comm += sent
        self.rounds.append(r)
        step, flops = _solve(H, rhs, o.damping, active=engine.members[engine.lo:engine.hi])
        self.flops += flops
        return step

    def cg_step(self, theta: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``-H^{-1} rhs`` by conjugate gradients at the nodes' common model ``theta``: each
        iteration is one network sum of the nodes' Hessian-vector products (a d-vector per node),
        never a d x d matrix. Stops at ``||residual|| <= cg_tol ||rhs||`` or ``cg_max_iter``."""
        engine, o = self.engine, self.options
        active = engine.active.to(theta.dtype)

        def hvp(flat, batch, act, vec):
            return jvp(lambda t: grad(engine.compute.objective)(t, batch, act), (flat,), (vec,))[1]

        def H(v: torch.Tensor) -> torch.Tensor:
            local = engine.compute.per_client(hvp, theta, self.batch, active, v) * self.a
            total, sent, _ = engine.network.sum(local, tol=o.gossip_tol, averaging=o.averaging, progress=False)
            self.comm += sent
            return total

        b = -rhs
        x = torch.zeros_like(b)
        r, p = b.clone(), b.clone()
        rr = (r * r).sum(dim=1, keepdim=True)
        stop = (o.cg_tol ** 2) * rr
        iterations = 0
        for iterations in range(1, o.cg_max_iter + 1):
            Hp = H(p)
            alpha = rr / (p * Hp).sum(dim=1, keepdim=True).clamp(min=torch.finfo(b.dtype).tiny)
            x = x + alpha * p
            r = r - alpha * Hp
            rr_new = (r * r).sum(dim=1, keepdim=True)
            if bool((rr_new <= stop).all()):
                break
            p = r + (rr_new / rr) * p
            rr = rr_new
        self.cg_iterations.append(iterations)
        return torch.where(self.member_rows, x, torch.zeros_like(x))

    def local(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each node's weighted remaining gradient ``[n_local, d]`` and objective ``[n_local, 1]``."""
        g, f = self.engine.compute.gradients(theta, self.batch)
        return g * self.a, f[:, None] * self.a

    def gradient_bound(self, theta: torch.Tensor, g: torch.Tensor) -> float:
        """``(max_i ||grad Phi'(theta_i)|| / A + rounding) / lambda`` over the nodes in the graph."""
        engine = self.engine
        A = float(engine.objective_weights().sum())
        rows = torch.stack([torch.linalg.vector_norm(g, dim=1), torch.linalg.vector_norm(theta, dim=1)], dim=1)
        full = engine.transport.gather(rows)
        bound = None
        if engine.transport.is_root:
            nodes = torch.as_tensor(np.flatnonzero(engine.members))
            g_max, size = float(full[nodes, 0].max()), float(full[nodes, 1].max())
            bound = (g_max / A + ROUNDOFF * (1.0 + size)) / engine.config.train.weight_decay
        return engine.transport.bcast_object(bound)

    def iterate(self, theta: torch.Tensor, last):
        """Newton steps at the nodes' common model, each with backtracking so that the remaining
        objective never increases, until ``newton_steps`` are done and the gradient bound is within
        the budget (or ``max_newton_steps``). Returns the models and the last step ``(from, step)``."""
        o = self.options
        check_budget = strongly_convex(self.engine) and o.budget > 0
        g = f = None
        while True:
            if not check_budget and self.steps >= o.newton_steps:
                return theta, last  # nothing to check: each node keeps its own model (no averaging)
            if not self.agreed:
                total = self.net_sum(theta)
                theta = torch.where(self.member_rows, total / self.n_nodes, theta)  # nodes that left keep theirs
                self.agreed = self.engine.is_star or o.averaging == "tree"
                g = None
            if g is None:
                g_loc, f_loc = self.local(theta)
                g, f = self.net_sum(g_loc), self.net_sum(f_loc, exact=True)
            if strongly_convex(self.engine):
                self.bound = self.gradient_bound(theta, g)
            done = self.steps >= o.newton_steps and (not check_budget or self.bound <= o.budget)
            if done or self.steps >= o.max_newton_steps:
                return theta, last
            step = self.cg_step(theta, g) if o.solver == "cg" else self.newton_step(theta, g)
            f0, t = float(f[0, 0]), 1.0
            for _ in range(LINE_SEARCH_HALVINGS):
                trial = theta + t * step
                g_loc, f_loc = self.local(trial)
                f_trial = self.net_sum(f_loc, exact=True)
                # The tree sum hands every node the same value, so all take the same decision.
                if float(f_trial[0, 0]) <= f0 + 1e-13 * abs(f0):
                    break
                t /= 2
            else:
                return theta, last  # no decrease at the rounding floor: converged as far as float64 can tell
            last = (theta, t * step)
            theta, f = trial, f_trial
            self.steps += 1
            g = self.net_sum(g_loc) if self.agreed else None


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
    eye = damping * torch.eye(d, dtype=H.dtype, device=H.device)
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
