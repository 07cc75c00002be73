"""Gossip graphs and their mixing matrices.

A topology is an undirected networkx graph on nodes ``0..n-1`` (clients). The star is the
exception that makes centralized FL a topology: ``n`` data-holding clients ``0..n-1`` plus a
server hub with id ``n`` and no data. Mixing matrices are sparse (``scipy.sparse.csr_array``),
so graphs of 100,000 nodes cost memory in proportion to their edges.

Example
-------
>>> g = build_graph("ring", 6)
>>> W = mixing_matrix(g)
>>> bool(abs(W.sum(axis=1) - 1).max() < 1e-12), W.nnz
(True, 18)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from . import seeding
from .config import bounded
from .registry import MIXINGS, TOPOLOGIES

if TYPE_CHECKING:
    from .config import TopologyConfig

TOLERANCE = 1e-12
DENSE_LIMIT = 1000
"""Up to this many nodes spectra are computed densely (exact); above it, by a sparse eigensolver."""
EXACT_DIAMETER_LIMIT = 2000
"""Up to this many nodes the diameter is exact; above it, a lower bound from repeated BFS sweeps."""


class TopologyError(ValueError):
    """A graph or mixing matrix is unusable (disconnected, not doubly stochastic, ...)."""


def _torus(n: int) -> nx.Graph:
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    cols = n // rows
    if rows < 3:
        raise TopologyError(f"torus needs n_clients = r*c with r, c >= 3 (e.g. 9, 12, 16, 25); got {n}")
    g = nx.grid_2d_graph(rows, cols, periodic=True)
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def _star(n: int) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n + 1))
    g.add_edges_from((i, n) for i in range(n))
    g.graph["hub"] = n
    return g


def read_graph_file(path: str | Path) -> nx.Graph:
    """Read a GraphML file (``.graphml``) or an edge list (one ``u v`` pair per line, ``#`` comments).

    Nodes become clients ``0..n-1`` in the order of their ids: numerically when every id is a
    number (``1``, ``2.0``, ``10``), as text otherwise. Self-loops and ids that name the same number
    twice are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"graph file {str(path)!r} does not exist; set topology.path to an edge list or .graphml file")
    try:
        if path.suffix.lower() == ".graphml":
            g = nx.read_graphml(path)
        else:
            g = nx.read_edgelist(path, comments="#", data=False)
    except Exception as e:  # networkx and the XML parser raise many kinds of errors for a bad file
        detail = " ".join(str(e).split()) or type(e).__name__
        raise TopologyError(f"graph file {path} cannot be read ({detail}); write GraphML (.graphml) or an edge list "
                            "with one 'u v' pair per line") from None
    if isinstance(g, (nx.MultiGraph, nx.DiGraph)):
        g = nx.Graph(g)
    loops = list(nx.selfloop_edges(g))
    if loops:
        raise TopologyError(f"graph file {path} has a self-loop on node {loops[0][0]!r}; remove it (every node keeps "
                            "its own model without one)")
    ids = {node: _number(node) for node in g.nodes}
    if all(v is not None for v in ids.values()):
        if len(set(ids.values())) < len(ids):
            raise TopologyError(f"graph file {path} names the same node number twice (e.g. '1' and '1.0'); "
                                "give every node one id")
        order = sorted(g.nodes, key=ids.get)
    elif any(v is not None for v in ids.values()):
        raise TopologyError(f"graph file {path} mixes numeric and text node ids; use numbers 0..n-1 for every node")
    else:
        order = sorted(g.nodes, key=str)
    return nx.relabel_nodes(g, {node: i for i, node in enumerate(order)})


def _number(node) -> float | None:
    try:
        value = float(node)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@TOPOLOGIES.register("ring", help="cycle: each client talks to two neighbours")
def ring(n: int, **_) -> nx.Graph:
    return nx.cycle_graph(n)


@TOPOLOGIES.register("torus", help="2-D periodic grid (n_clients = r*c, r, c >= 3)")
def torus(n: int, **_) -> nx.Graph:
    return _torus(n)


@TOPOLOGIES.register("star", help="centralized FL: n_clients plus a server hub (FedAvg rounds)")
def star(n: int, **_) -> nx.Graph:
    return _star(n)


@TOPOLOGIES.register("complete", help="every pair of clients connected")
def complete(n: int, **_) -> nx.Graph:
    return nx.complete_graph(n)


@dataclass(frozen=True)
class ErdosRenyiOptions:
    """Keys of ``[topology.erdos_renyi]``: the edge probability, and how many further graphs may be
    drawn when one is disconnected (``redraws``; 0 refuses a disconnected draw). Redrawing samples
    G(n, p) conditioned on being connected, the same graph for the same seed. ``biconnected``
    conditions on staying connected whichever single client leaves (what removing a forgotten
    client from the graph needs; it takes ``redraws``)."""

    p: float = bounded(0.3, 0.0, 1.0)
    redraws: int = bounded(0, 0)
    biconnected: bool = False


@dataclass(frozen=True)
class SmallWorldOptions:
    """Keys of ``[topology.small_world]``: the lattice's neighbours and the rewiring probability."""

    k: int = bounded(4, 2)
    beta: float = bounded(0.2, 0.0, 1.0)


@dataclass(frozen=True)
class RandomRegularOptions:
    """Keys of ``[topology.random_regular]``: every client's number of neighbours."""

    degree: int = bounded(3, 1)


@TOPOLOGIES.register("erdos_renyi", options=ErdosRenyiOptions, help="G(n, p) random graph (seeded; must be connected)")
def erdos_renyi(n: int, *, seed: int, p: float, redraws: int = 0, biconnected: bool = False, **_) -> nx.Graph:
    if not 0 < p <= 1:
        raise TopologyError(f"erdos_renyi needs an edge probability p in (0, 1]; got p = {p}")
    accept = nx.is_biconnected if biconnected else nx.is_connected
    rng = np.random.default_rng(seed)
    g = nx.gnp_random_graph(n, p, seed=seed)
    for _ in range(redraws):
        if accept(g):
            break
        g = nx.gnp_random_graph(n, p, seed=int(rng.integers(2**31)))
    if biconnected and not accept(g):
        raise TopologyError(f"no biconnected G({n}, {p}) in {redraws} redraws (seed {seed}): raise topology.erdos_renyi.p "
                            "or topology.erdos_renyi.redraws")
    return g


@TOPOLOGIES.register("small_world", options=SmallWorldOptions,
                    help="Watts-Strogatz ring lattice with k neighbours, rewired with prob. beta")
def small_world(n: int, *, seed: int, k: int, beta: float, **_) -> nx.Graph:
    if not (2 <= k < n and 0 <= beta <= 1):
        raise TopologyError(f"small_world needs 2 <= k < n_clients and beta in [0, 1]; got k = {k}, beta = {beta}, "
                            f"n_clients = {n}")
    return nx.watts_strogatz_graph(n, k, beta, seed=seed)


@TOPOLOGIES.register("random_regular", options=RandomRegularOptions,
                    help="random graph where every client has `degree` neighbours")
def random_regular(n: int, *, seed: int, degree: int, **_) -> nx.Graph:
    return _random_regular(degree, n, seed)


@TOPOLOGIES.register("file", help="edge list or GraphML file at topology.path (see topologies/)")
def from_file(n: int, *, path: str | Path, **_) -> nx.Graph:
    g = read_graph_file(path)
    if g.number_of_nodes() != n:
        raise TopologyError(f"graph file {str(path)!r} has {g.number_of_nodes()} nodes but topology.n_clients = {n}; "
                            "make them equal")
    return g


def build_graph(kind: str, n_clients: int, *, seed: int = 0, path: str | Path = "", **options) -> nx.Graph:
    """Build the gossip graph of ``kind`` on clients ``0..n_clients-1``; random kinds are seeded.

    ``kind`` is an entry of :data:`~p2pforget.registry.TOPOLOGIES`: a builder
    ``(n_clients, *, seed, path, **options) -> nx.Graph`` whose ``options`` are the fields of the
    dataclass it registers (``[topology.<kind>]``; defaults for those not given). A plug-in
    registers its own the same way; only ``"star"`` runs FedAvg rounds through its hub.

    Raises :class:`TopologyError` if the graph would be disconnected.

    Examples
    --------
    >>> build_graph("torus", 9).number_of_edges()
    18
    >>> build_graph("star", 4).graph["hub"]
    4
    >>> build_graph("erdos_renyi", 12, seed=1, p=0.5).number_of_nodes()
    12
    """
    if n_clients < 2:
        raise TopologyError(f"a gossip graph needs at least 2 clients; got n_clients = {n_clients}")
    entry = TOPOLOGIES.entry(kind)
    defaults = entry.meta.get("options")
    given = (dataclasses.asdict(defaults()) if defaults is not None else {}) | options
    g = entry.obj(n_clients, seed=seeding.int_seed(seed, purpose=f"topology/{kind}"), path=path, **given)
    check_connected(g, hint={"erdos_renyi": "raise topology.erdos_renyi.p, change run.seed, or allow "
                                             "topology.erdos_renyi.redraws",
                             "small_world": "raise topology.small_world.k or lower topology.small_world.beta"}.get(kind, ""))
    return g


def graph_options(cfg: "TopologyConfig") -> dict:
    """The keyword arguments :func:`build_graph` takes from a topology config: its file path and
    the chosen kind's options."""
    options = cfg.options()
    return {"path": cfg.path} | (dataclasses.asdict(options) if options is not None else {})


def _random_regular(degree: int, n: int, seed: int) -> nx.Graph:
    if degree >= n or (degree * n) % 2:
        raise TopologyError(f"random_regular needs degree < n_clients and degree*n_clients even; got degree={degree}, n={n}")
    return nx.random_regular_graph(degree, n, seed=seed)


def check_connected(g: nx.Graph, hint: str = "") -> None:
    """Raise :class:`TopologyError` naming the components if ``g`` is not connected."""
    if g.number_of_nodes() == 0:
        raise TopologyError("the graph has no nodes")
    if not nx.is_connected(g):
        parts = sorted((sorted(c) for c in nx.connected_components(g)), key=len)
        shown = "; ".join(str(c[:8]) + ("..." if len(c) > 8 else "") for c in parts[:3])
        raise TopologyError(
            f"the graph is disconnected ({len(parts)} components, smallest: {shown}); gossip cannot mix across components"
            + (f"; {hint}" if hint else "")
        )


@MIXINGS.register("metropolis", help="W_ij = 1/(1+max(d_i, d_j)) on every edge (Metropolis-Hastings)")
def metropolis(deg: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.maximum(deg[edges[:, 0]], deg[edges[:, 1]]))


@MIXINGS.register("uniform_neighbors", help="every neighbour gets 1/(1+max degree)")
def uniform_neighbors(deg: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.full(len(edges), 1.0 / (1.0 + deg.max(initial=0.0)))


@MIXINGS.register("file", help="the matrix in topology.mixing_path (Metropolis weights once a node has left)")
def from_mixing_file(deg: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # The engine reads the file itself (load_mixing); after a node leaves the user's matrix no
    # longer fits the graph, and the edges get Metropolis weights.
    return metropolis(deg, edges)


def mixing_matrix(g: nx.Graph, kind: str = "metropolis") -> sp.csr_array:
    """Symmetric doubly-stochastic mixing matrix of ``g`` (sparse CSR, nodes in sorted order).

    ``kind`` is an entry of :data:`~p2pforget.registry.MIXINGS`: a rule ``(degrees, edges [E, 2])
    -> one weight per edge`` (``metropolis``: ``1/(1+max(d_i, d_j))``; ``uniform_neighbors``:
    ``1/(1+max degree)``; a plug-in registers its own). The diagonal takes the rest.
    """
    return mixing_from_edges(g.number_of_nodes(), edge_array(g), kind)


def edge_array(g: nx.Graph) -> np.ndarray:
    """The edges of ``g`` as a sorted ``(E, 2)`` int array with ``u < v``."""
    edges = np.array(list(g.edges), dtype=np.int64).reshape(-1, 2)
    edges = np.sort(edges, axis=1)
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))]


def mixing_from_edges(n: int, edges: np.ndarray, kind: str = "metropolis") -> sp.csr_array:
    """:func:`mixing_matrix` of the graph on ``n`` nodes with these ``(E, 2)`` edges (no networkx
    graph needed: what edge dropout uses every round)."""
    deg = np.bincount(edges.ravel(), minlength=n).astype(np.float64)
    w = np.asarray(MIXINGS.get(kind)(deg, edges), dtype=np.float64)
    off = sp.coo_array((np.concatenate([w, w]), (np.concatenate([edges[:, 0], edges[:, 1]]),
                                                 np.concatenate([edges[:, 1], edges[:, 0]]))), shape=(n, n)).tocsr()
    off.sort_indices()
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    if len(diag) and (diag.min() < -TOLERANCE or (w < 0).any()):
        raise TopologyError(f"mixing rule {kind!r} gives negative weights or a node's neighbour weights summing to "
                            f"{1 - diag.min():.4g} > 1; its weights must be >= 0 and sum to at most 1 at every node")
    W = (off + sp.diags_array(diag, format="csr")).tocsr()
    W.eliminate_zeros()
    W.sort_indices()
    return W


def message_count(W) -> int:
    """Directed messages one gossip exchange over ``W`` sends: its nonzero off-diagonal entries."""
    W = sp.csr_array(W)
    return int(np.count_nonzero(W.data) - np.count_nonzero(W.diagonal()))


def as_sparse(W) -> sp.csr_array:
    """``W`` (dense or sparse) as a canonical CSR array: no stored zeros, sorted column indices."""
    out = sp.csr_array(W, dtype=np.float64, copy=True)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def validate_mixing(W, g: nx.Graph | None = None, *, tol: float = TOLERANCE) -> None:
    """Raise :class:`TopologyError` unless ``W`` (dense or sparse) is square, finite,
    non-negative, doubly stochastic to ``tol``, and (given ``g``) zero off the graph's edges."""
    shape = W.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise TopologyError(f"mixing matrix must be square, got shape {shape}")
    C = sp.coo_array(np.asarray(W, dtype=np.float64) if not sp.issparse(W) else W)
    rows, cols, vals = C.row, C.col, C.data.astype(np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        k = int(np.argmax(bad))
        raise TopologyError(f"mixing matrix has a non-finite entry W[{rows[k]},{cols[k]}] = {vals[k]}; "
                            "every weight must be a number >= 0")
    if g is not None and shape[0] != g.number_of_nodes():
        raise TopologyError(f"mixing matrix is {shape[0]}x{shape[0]} but the graph has {g.number_of_nodes()} nodes")
    if (vals < -tol).any():
        k = int(np.argmax(vals < -tol))
        raise TopologyError(f"mixing matrix has a negative entry W[{rows[k]},{cols[k]}] = {vals[k]:.3g}; weights must be >= 0")
    n = shape[0]
    row_sums, col_sums = np.bincount(rows, vals, minlength=n), np.bincount(cols, vals, minlength=n)
    r_err, c_err = np.abs(row_sums - 1), np.abs(col_sums - 1)
    if r_err.max(initial=0) > tol or c_err.max(initial=0) > tol:
        bad = "row" if r_err.max(initial=0) > tol else "column"
        idx = int(np.argmax(r_err if bad == "row" else c_err))
        raise TopologyError(
            f"mixing matrix is not doubly stochastic: {bad} {idx} sums to {(row_sums if bad == 'row' else col_sums)[idx]!r} "
            f"(tolerance {tol}); use topology.mixing = \"metropolis\" or fix the matrix"
        )
    if g is not None:
        heavy = (np.abs(vals) > tol) & (rows != cols)
        for i, j, v in zip(rows[heavy], cols[heavy], vals[heavy]):
            if not g.has_edge(int(i), int(j)):
                raise TopologyError(f"mixing matrix puts weight W[{i},{j}] = {v:.3g} on a pair that is not an edge of the graph")


def lazy(W):
    """Lazy mixing ``(W + I) / 2``: same fixed point, eigenvalues moved into ``[0, 1]``.

    >>> lazy(np.array([[0.0, 1.0], [1.0, 0.0]])).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    if sp.issparse(W):
        return as_sparse((W + sp.eye_array(W.shape[0], format="csr")) / 2.0)
    return (W + np.eye(W.shape[0])) / 2.0


def second_eigenvalue(W) -> float:
    """``|lambda_2|``, the second largest eigenvalue modulus of ``W`` (dense or sparse): exact up to
    :data:`DENSE_LIMIT` nodes, by ARPACK (``scipy.sparse.linalg.eigs``/``eigsh``) above."""
    n = W.shape[0]
    if n < 2:
        return 0.0
    if n <= DENSE_LIMIT or not sp.issparse(W):
        dense = W.toarray() if sp.issparse(W) else np.asarray(W, dtype=np.float64)
        ev = np.sort(np.abs(np.linalg.eigvals(dense)))[::-1]
        return float(ev[1])
    symmetric = abs(W - W.T).max() < 1e-12
    solver = spla.eigsh if symmetric else spla.eigs
    # A fixed start vector: ARPACK's default is random, which moves a gap near 1e-7 by ~1e-4
    # relative from call to call; the same graph should give the same number every time.
    start = np.random.default_rng(0).uniform(0.5, 1.5, n)
    vals = solver(sp.csr_array(W, dtype=np.float64), k=3, which="LM", return_eigenvectors=False, tol=1e-10,
                  maxiter=max(1000, 20 * n), v0=start)
    ev = np.sort(np.abs(vals))[::-1]
    return float(ev[1])


def gossip_rounds(W, nodes: np.ndarray, tol: float) -> int:
    """Mixing rounds after which gossip averages on ``W`` (restricted to ``nodes``) agree to a
    relative ``tol``: ``ceil(log tol / log lambda_2)``.

    >>> gossip_rounds(np.full((4, 4), 0.25), np.arange(4), 1e-6)
    1
    """
    sub = W[np.ix_(nodes, nodes)] if not sp.issparse(W) else sp.csr_array(W)[nodes][:, nodes]
    lam = second_eigenvalue(sub)
    if lam < 1e-15:
        return 1
    if lam >= 1 - 1e-15:
        raise TopologyError("the remaining graph does not mix (second eigenvalue 1): it is disconnected")
    return max(1, math.ceil(math.log(tol) / math.log(lam)))


def load_mixing(path: str | Path, g: nx.Graph) -> sp.csr_array:
    """Read a user mixing matrix (``.npy``, ``.npz`` from ``scipy.sparse.save_npz``, or
    whitespace/comma text) and validate it against ``g``."""
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"mixing file {str(path)!r} does not exist; set topology.mixing_path to a .npy or text matrix")
    try:
        if path.suffix == ".npz":
            W = sp.load_npz(path)
        elif path.suffix == ".npy":
            W = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        else:
            W = np.asarray(np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2), dtype=np.float64)
    except (ValueError, OSError, TypeError) as e:
        detail = " ".join(str(e).split())
        raise TopologyError(f"mixing file {path} cannot be read as a matrix of numbers ({detail}); write a .npy array "
                            "or one row of numbers per line") from None
    validate_mixing(W, g)
    return as_sparse(W)


def drop_edges(g: nx.Graph, q: float, *, seed: int, round: int) -> nx.Graph:
    """The graph of one round with every edge dropped independently with probability ``q``.

    A pure function of ``(seed, round)``; the result may be disconnected (gossip still converges
    if the union over rounds is connected).
    """
    h = nx.Graph()
    h.add_nodes_from(range(g.number_of_nodes()))
    h.add_edges_from(map(tuple, kept_edges(edge_array(g), q, seed=seed, round=round)))
    return h


def kept_edges(edges: np.ndarray, q: float, *, seed: int, round: int) -> np.ndarray:
    """The rows of a sorted :func:`edge_array` that survive one round of dropout with probability
    ``q`` (the same draw as :func:`drop_edges`)."""
    keep = seeding.rng(seed, purpose="topology/dropout", counters=(round,)).random(len(edges)) >= q
    return edges[keep]


def spectral_gap(W) -> float:
    """``1 - |lambda_2|``: one minus the second largest eigenvalue modulus of ``W``."""
    return 1.0 - second_eigenvalue(W) if W.shape[0] > 1 else 1.0


@dataclass(frozen=True)
class Stats:
    n_nodes: int
    n_edges: int
    degree_min: int
    degree_mean: float
    degree_max: int
    diameter: int
    spectral_gap: float
    diameter_exact: bool = True


def stats(g: nx.Graph, W=None, *, gap: float | None = None) -> Stats:
    """Degree, diameter and spectral gap (of ``W``, or of its Metropolis matrix) of a connected graph.

    Above :data:`EXACT_DIAMETER_LIMIT` nodes the diameter is networkx's 2-sweep lower bound
    (``diameter_exact = False``); above :data:`DENSE_LIMIT`, the spectral gap comes from ARPACK.
    """
    deg = [d for _, d in g.degree]
    if gap is None and W is None:
        W = mixing_matrix(g)
    exact = g.number_of_nodes() <= EXACT_DIAMETER_LIMIT
    diameter = nx.diameter(g) if exact else nx.approximation.diameter(g, seed=0)
    return Stats(
        n_nodes=g.number_of_nodes(),
        n_edges=g.number_of_edges(),
        degree_min=min(deg),
        degree_mean=float(np.mean(deg)),
        degree_max=max(deg),
        diameter=int(diameter),
        spectral_gap=spectral_gap(W) if gap is None else gap,
        diameter_exact=exact,
    )


def push_matrix(W, n: int) -> sp.csr_array:
    """The column-stochastic matrix of push-sum on the directed graph that orients every edge of
    ``W``'s pattern one way: ``u -> v`` when ``(v - u) mod n <= n // 2`` (on a ring: ``i -> i + 1``,
    a directed cycle). Node ``j`` keeps and sends equal shares: ``A_ij = 1 / (out_degree_j + 1)``
    for ``i = j`` and each out-neighbour ``i`` of ``j``. Rows of nodes without edges are the identity.

    >>> A = push_matrix(mixing_from_edges(3, np.array([[0, 1], [1, 2], [0, 2]]), "metropolis"), 3).toarray()
    >>> A.sum(axis=0).tolist(), float(A[1, 0]), float(A[0, 2])
    ([1.0, 1.0, 1.0], 0.5, 0.5)
    """
    W = sp.csr_array(W)
    rows, cols = W.nonzero()
    off = rows < cols
    u, v = rows[off], cols[off]
    forward = (v - u) % n <= n // 2
    src = np.where(forward, u, v)
    dst = np.where(forward, v, u)
    out_degree = np.bincount(src, minlength=n).astype(np.float64)
    share = 1.0 / (out_degree + 1.0)
    A = sp.coo_array((np.concatenate([share[src], share]), (np.concatenate([dst, np.arange(n)]),
                                                            np.concatenate([src, np.arange(n)]))), shape=(n, n))
    return as_sparse(A)
