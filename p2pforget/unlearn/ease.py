"""EASE: federated multimodal (CLIP) unlearning by dual-modal displacement, subspace excision and
a Forget Lock.

"Federated Multimodal Unlearning via Entanglement-Aware Anchor Closure" (EASE, 2026). Only the
abstract and secondary descriptions of the paper are available; what follows is this project's
reading of its three mechanisms, written out in ``docs/methods/ease.md``:

(a) **Dual-modal displacement.** On the forget pairs, the matched image and caption embeddings are
    moved apart, each towards a non-matching partner: with scaled similarities ``S`` (images as
    rows) the displacement loss is ``L_d = 1/2 [CE(S, pi) + CE(S^T, pi)]`` over the forget pairs,
    where ``pi`` pairs every forget image with another pair's caption and every forget caption
    with another pair's image. ``partners = "retained"`` takes that other pair from *anchors*, the
    client's own retained pairs, which join ``S`` but are not displaced (a client with none, and
    ``partners = "forget"``, use ``pi(i) = i + 1 mod n``, another forget pair).
    ``displacement = "dual"`` updates both towers; ``"image"`` only the image tower (the
    one-branch ablation). The retained clients keep training on their contrastive loss in
    between, which holds the rest.
(b) **Subspace excision.** Per parameter block (each LoRA factor, each weight), ``U_f`` is the
    top-``rank`` left singular basis of ``rank`` displacement gradients of the forget pairs (one
    per disjoint chunk) and ``U_r`` that of the retained clients' contrastive gradients. The
    principal angles between them (``scipy.linalg.subspace_angles``' definition, from the SVD of
    ``U_f^T U_r``) split ``U_f`` into forget-exclusive directions ``B`` (angle above
    ``angle_threshold``) and entangled ones; ``E`` holds the entangled principal vectors of both
    sides. ``excision = "exclusive"`` keeps only the displacement's component in ``B``, so it
    moves the model only along what the forgotten data alone pulled on; ``"entangled"`` (another
    reading) removes ``E`` from it instead and lets the rest pass; ``"none"`` is the ablation.
(c) **Forget Lock.** The exclusive directions are locked: in every later round each node's update
    loses its component along a locked direction when that component points back towards the
    trained (pre-unlearning) model, and local steps add ``(mu/2) ||B^T (theta - theta_u)||^2``
    (:class:`~p2pforget.subspace.ForgetLock`, installed on the engine and kept in its state).

On the star the hub relays the displacement (the forget clients' projected gradients, summed) and
aggregates as in training; on a gossip graph the same sum travels a spanning tree
(:meth:`~p2pforget.engine.network.Network.sum`) and the nodes gossip in between.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from torch.func import grad

from .. import subspace
from ..config import bounded, choice
from ..registry import METHODS
from . import ForgetRequest, Outcome, continue_training, forget_batch

if TYPE_CHECKING:
    from ..engine import Engine

_FAR = -1e4  # the similarity of a padded pair: never a target, never a competitor


@dataclass(frozen=True)
class EASEOptions:
    """Keys of ``[unlearn.ease]``; ``lr = 0`` uses ``train.lr``."""

    rounds: int = bounded(5, 1)
    lr: float = bounded(0.0, 0.0)
    displacement: str = choice("dual", "dual", "image")
    excision: str = choice("exclusive", "exclusive", "entangled", "none")
    rank: int = bounded(4, 1)
    angle_threshold: float = bounded(45.0, 0.0, 90.0)  # degrees
    lock: bool = True
    lock_mu: float = bounded(1.0, 0.0)
    clip: float = bounded(5.0, 0.0)
    partners: str = choice("retained", "retained", "forget")


def partners(n_valid: int, width: int) -> torch.Tensor:
    """``pi [width]``: ``i -> i + 1 mod n_valid`` for the first ``n_valid`` rows (a derangement when
    ``n_valid > 1``), padding rows map to themselves.

    >>> partners(3, 5).tolist()
    [1, 2, 0, 3, 4]
    """
    idx = torch.arange(width)
    if n_valid > 0:
        idx[:n_valid] = (idx[:n_valid] + 1) % n_valid
    return idx


def displacement_loss(sim: torch.Tensor, partner: torch.Tensor, mask: torch.Tensor,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """``1/2 [CE(S, pi) + CE(S^T, pi)]`` over the rows with ``mask = 1`` (see the module docstring);
    rows and columns outside ``valid`` (default: ``mask > 0``; padding) take no part, so anchor
    pairs (``valid`` but ``mask = 0``) are partners and competitors but not displaced."""
    keep = mask > 0 if valid is None else valid > 0
    logits = torch.where(keep[:, None] & keep[None, :], sim, torch.full_like(sim, _FAR))
    i2t = torch.nn.functional.cross_entropy(logits, partner, reduction="none")
    t2i = torch.nn.functional.cross_entropy(logits.T, partner, reduction="none")
    w = mask.to(sim.dtype)
    return 0.5 * ((w * i2t).sum() + (w * t2i).sum()) / w.sum().clamp(min=1)


def excision_bases(G_f: torch.Tensor, G_r: torch.Tensor, sizes: list[int], *, rank: int, threshold: float,
                   entangled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The forget-exclusive and the entangled directions, each ``[d, s]`` (orthonormal, block by
    block): per block of ``sizes`` entries, with each basis the top-``rank`` singular directions of
    its gradients, the principal vectors of ``span G_f`` (forget gradients, columns) at an angle
    above ``threshold`` (radians) to ``span G_r`` (retained gradients), and the principal vectors
    of both sides at or below it (:func:`~p2pforget.subspace.split_directions`).
    ``entangled = False`` leaves the second basis empty (``[d, 0]``) for callers that need only
    the first."""
    d = G_f.shape[0]
    parts: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    start = 0
    for size in sizes:
        block = slice(start, start + size)
        U_f = subspace.update_basis(G_f[block], rank)
        if U_f.shape[1]:
            U_r = subspace.update_basis(G_r[block], rank) if G_r[block].abs().max() > 0 else G_r[block][:, :0]
            for chosen, out in zip(subspace.split_directions(U_f, U_r, threshold)[:1 + entangled], parts):
                if chosen.shape[1]:
                    full = torch.zeros(d, chosen.shape[1], dtype=G_f.dtype, device=G_f.device)
                    full[block] = chosen
                    out.append(full)
        start += size
    return tuple(torch.cat(out, dim=1) if out else torch.zeros(d, 0, dtype=G_f.dtype, device=G_f.device)
                 for out in parts)


def _forget_batches(engine: "Engine", request: ForgetRequest, chunks: int, *, anchored: bool) -> list[dict[str, torch.Tensor]]:
    """The forget pairs of this process's clients as dense batches with ``partner``: chunk ``c``
    holds each client's forget pairs at positions ``c mod chunks`` (``chunks = 1``: all of them).
    ``anchored``: as many of the client's retained pairs follow them (``valid``, weight 0) and each
    forget pair's partner is one of those anchors; a client without retained pairs pairs its
    forget pairs among themselves."""
    out = []
    for c in range(chunks):
        picked = {j: np.asarray(idx)[c::chunks] for j, idx in request.samples.items()}
        batch = forget_batch(engine, picked)
        counts = batch["mask"].sum(dim=1).long().tolist()
        width = batch["mask"].shape[1]
        pair = torch.stack([partners(n, width) for n in counts])
        if anchored:
            kept = {j: np.flatnonzero(engine.retained[j])[:len(idx)] for j, idx in picked.items()}
            anchors = forget_batch(engine, kept)
            for row, j in enumerate(range(engine.lo, engine.hi)):
                n_a = len(kept.get(j, ()))
                if n_a:
                    pair[row, :counts[row]] = width + torch.arange(counts[row]) % n_a
            pair = torch.cat([pair, width + torch.arange(anchors["mask"].shape[1]).expand(len(pair), -1)], dim=1)
            batch = {k: torch.cat([batch[k], anchors[k]], dim=1) for k in batch if k != "mask"} | {
                "mask": torch.cat([batch["mask"], torch.zeros_like(anchors["mask"])], dim=1),
                "valid": torch.cat([batch["mask"], anchors["mask"]], dim=1)}
        out.append(batch | {"partner": pair.to(engine.device)})
    return out


def _own_pairs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One client's displacement batch without its padding (which takes no part in the loss, so
    leaving it out changes nothing but the work), partners renumbered to the kept columns."""
    valid = batch.get("valid", batch["mask"]) > 0
    where = torch.cumsum(valid, 0) - 1  # new position of every kept column
    out = {k: v[valid] for k, v in batch.items() if k != "partner"}
    return out | {"partner": where[batch["partner"][valid]]}


def _tree_gather_bytes(engine: "Engine", root: int, sources: list[int], entries: int) -> float:
    """Bytes to bring one ``entries``-vector from each of ``sources`` to ``root`` (or back) along
    shortest paths of the graph, each hop forwarding it (on the star: up to the hub and down)."""
    itemsize = torch.finfo(engine.dtype).bits // 8
    if engine.is_star:
        hops = 2 * sum(1 for s in sources if s != root)
    else:
        depth = nx.single_source_shortest_path_length(engine.network.member_graph(), root)
        hops = sum(depth[s] for s in sources)
    return float(hops * entries * itemsize)


def block_sparse_entries(basis: torch.Tensor, sizes: list[int]) -> int:
    """Numbers sent for the columns of ``basis`` (``[d, s]``) as :func:`excision_bases` builds them,
    each nonzero in one parameter block of ``sizes`` only: per column its block's entries and the
    block's index, not ``d`` numbers.

    >>> B = torch.zeros(5, 2); B[0, 0] = B[1, 0] = 1.0; B[3, 1] = 1.0
    >>> block_sparse_entries(B, [2, 3])   # (2 + 1) + (3 + 1)
    7
    """
    if not basis.shape[1]:
        return 0
    ends = np.cumsum(sizes)
    first = (basis != 0).int().argmax(dim=0).cpu().numpy()  # a column's first nonzero entry
    return int(sum(int(np.asarray(sizes)[np.searchsorted(ends, f, side="right")]) + 1 for f in first))


def _unchanged(g: torch.Tensor) -> torch.Tensor:
    return g


def _onto(B: torch.Tensor):
    """Rows of ``g`` projected onto the span of ``B``'s orthonormal columns (in float64)."""
    return lambda g: ((g.double() @ B) @ B.T).to(g.dtype)


def _off(E: torch.Tensor):
    """Rows of ``g`` with their component in the span of ``E``'s orthonormal columns removed."""
    return lambda g: (g.double() - (g.double() @ E) @ E.T).to(g.dtype)


@METHODS.register("ease", options=EASEOptions,
                  help="EASE for CLIP: dual-modal displacement, subspace excision, Forget Lock")
class EASE:
    """Displacement rounds restricted to the forget-exclusive subspace, then the Forget Lock (see
    the module docstring)."""

    def check(self, engine: "Engine", request: ForgetRequest, options: EASEOptions) -> None:
        if not hasattr(engine.model.module, "similarities"):
            raise ValueError("unlearn.method = 'ease' needs a contrastive image-text model: set model.kind = \"clip\"")

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: EASEOptions) -> Outcome:
        model = engine.model
        branch = ~model.mask("clip.logit_scale")  # the temperature is shared by every pair: not displaced
        if options.displacement == "image":
            branch = model.mask("image")
        branch = branch.to(device=engine.device, dtype=engine.dtype)
        lr = options.lr or engine.config.train.lr
        forget_clients = sorted(request.samples)
        engine.exclude(samples=request.samples)  # nodes stay in the graph while they unlearn
        trained_mean = engine.network.mean(engine.params)

        def loss(flat, batch):
            sim = model.call(flat, "similarities", batch)
            return displacement_loss(sim, batch["partner"], batch["mask"], batch.get("valid"))

        # Only the forget clients hosted here compute a displacement (one by one: there are few of
        # them, and a vmapped batch would pad them to run.vmap_width rows); every other row is zero.
        rows = [j - engine.lo for j in forget_clients if engine.lo <= j < engine.hi]

        def displacement(params, batch):
            g = torch.zeros_like(params)
            for i in rows:
                g[i] = grad(loss)(params[i], _own_pairs({k: v[i] for k, v in batch.items()})) * branch
            if options.clip > 0:
                norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
                g = g * torch.clamp(options.clip / norm.clamp(min=1e-12), max=1.0)
            return g

        comm = 0.0
        basis = None
        project = _unchanged
        if options.excision != "none":
            basis, entangled, sent = self._bases(engine, request, options, displacement, branch, forget_clients)
            comm += sent
            project = _onto(basis) if options.excision == "exclusive" else _off(entangled)
        whole = _forget_batches(engine, request, 1, anchored=options.partners == "retained")[0]
        for r in range(options.rounds):
            batch = whole | {"u": torch.full_like(whole["mask"], (r % 5 + 0.5) / 5)}
            g = project(displacement(engine.params, batch))
            total, sent, _ = engine.network.sum(g, progress=False)
            comm += sent
            engine.set_params(engine.params - lr * total / len(forget_clients))
            comm += continue_training(engine, 1, request)  # the retained clients' loss holds the rest
            if request.stopped:
                break
        engine.exclude(removed=request.removed)
        if options.lock and basis is not None and basis.shape[1]:
            back = torch.sign((trained_mean - engine.network.mean(engine.params)) @ basis)
            lock = subspace.ForgetLock(basis=basis, back=back, anchor=engine.params.clone(), mu=options.lock_mu)
            engine.hooks[lock.name] = lock
        return Outcome.plain(engine.params.clone(), comm_bytes=comm, rounds=options.rounds)

    @staticmethod
    def _bases(engine: "Engine", request: ForgetRequest, options: EASEOptions, displacement, branch: torch.Tensor,
               forget_clients: list[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The forget-exclusive and the entangled bases (the same on every process) and the bytes
        they took: the forget clients' chunk gradients and every retained client's contrastive
        gradient gathered at the first forget client, the bases sent back to every node (the
        entangled one only when the displacement uses it; else it is left empty)."""
        chunks = _forget_batches(engine, request, options.rank, anchored=options.partners == "retained")
        # [n_local, rank * d]: one row per client, as the transport gathers them
        G_f = torch.cat([displacement(engine.params, c | {"u": torch.zeros_like(c["mask"])}) for c in chunks], dim=1)
        G_r, _ = engine.compute.gradients(engine.params, engine.batches.full())
        G_r = G_r * branch * engine.active[:, None].to(G_r.dtype)
        full_f, full_r = engine.transport.gather(G_f), engine.transport.gather(G_r)
        bases = None
        if engine.transport.is_root:
            full_f = full_f.reshape(-1, engine.dim)
            keep_f = full_f.abs().amax(dim=1) > 0
            keep_r = full_r.abs().amax(dim=1) > 0
            bases = excision_bases(full_f[keep_f].double().T, full_r[keep_r].double().T, engine.model.sizes,
                                   rank=options.rank, threshold=math.radians(options.angle_threshold),
                                   entangled=options.excision == "entangled")
            bases = [b.cpu().numpy() for b in bases]
        basis, entangled = (torch.as_tensor(b, device=engine.device) for b in engine.transport.bcast_object(bases))
        # each basis column lives in one parameter block: it travels as that block and its index
        entries = sum(block_sparse_entries(b, engine.model.sizes) for b in (basis, entangled))
        root = forget_clients[0]
        members = [int(i) for i in np.flatnonzero(engine.members)]
        sent = _tree_gather_bytes(engine, root, members, engine.dim)                               # retained gradients
        sent += _tree_gather_bytes(engine, root, forget_clients, options.rank * engine.dim)       # forget chunks
        sent += _tree_gather_bytes(engine, root, members, entries)                                # the bases
        return basis, entangled, sent
