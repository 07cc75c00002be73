import networkx as nx
import numpy as np
import pytest

from p2pforget import Engine, config, topology
from p2pforget.topology import TopologyError

TOPOLOGIES = ["ring", "torus", "star", "complete", "erdos_renyi", "small_world", "random_regular"]


@pytest.mark.parametrize("kind", TOPOLOGIES)
@pytest.mark.parametrize("mixing", ["metropolis", "uniform_neighbors"])
def test_mixing_is_symmetric_doubly_stochastic_on_edges(kind, mixing):
    g = topology.build_graph(kind, 12, seed=4, p=0.4)
    W = topology.mixing_matrix(g, mixing).toarray()
    assert np.abs(W - W.T).max() == 0
    assert np.abs(W.sum(axis=0) - 1).max() < 1e-12 and np.abs(W.sum(axis=1) - 1).max() < 1e-12
    assert W.min() >= 0
    A = nx.to_numpy_array(g, nodelist=range(g.number_of_nodes()))
    assert np.all(W[(A == 0) & ~np.eye(len(W), dtype=bool)] == 0)
    assert np.all(W[A == 1] > 0)
    topology.validate_mixing(W, g)


def test_metropolis_weights_formula():
    g = topology.build_graph("star", 5)
    W = topology.mixing_matrix(g).toarray()
    # hub (degree 5) - leaf (degree 1): 1/(1+max(5,1)) = 1/6
    assert W[0, 5] == pytest.approx(1 / 6) and W[0, 0] == pytest.approx(5 / 6) and W[5, 5] == pytest.approx(1 / 6)


def test_ring_spectral_gap_matches_closed_form():
    n = 10
    W = topology.mixing_matrix(topology.build_graph("ring", n))
    # Metropolis ring = circulant (1/3, 1/3, 1/3): eigenvalues 1/3 + 2/3 cos(2 pi k / n)
    assert topology.spectral_gap(W) == pytest.approx(2 / 3 * (1 - np.cos(2 * np.pi / n)), abs=1e-12)
    s = topology.stats(topology.build_graph("ring", n))
    assert (s.degree_min, s.degree_max, s.diameter, s.n_edges) == (2, 2, 5, 10)


def test_torus_shape_and_error():
    g = topology.build_graph("torus", 12)
    assert all(d == 4 for _, d in g.degree) and g.number_of_edges() == 24
    with pytest.raises(TopologyError, match="r, c >= 3"):
        topology.build_graph("torus", 10)


@pytest.mark.parametrize("kind", ["erdos_renyi", "small_world", "random_regular"])
def test_random_graphs_reproducible_from_seed(kind):
    edges = lambda s: sorted(topology.build_graph(kind, 20, seed=s, p=0.3, k=4, beta=0.5).edges)
    assert edges(7) == edges(7)
    assert edges(7) != edges(8)


def test_disconnected_graph_is_a_clear_error():
    with pytest.raises(TopologyError, match="disconnected.*raise topology.erdos_renyi.p"):
        topology.build_graph("erdos_renyi", 30, p=0.01)


def test_erdos_renyi_redraws_until_connected_the_same_graph_for_the_same_seed():
    # seed 2 draws a disconnected G(12, 0.2): refused by default, redrawn when allowed
    with pytest.raises(TopologyError, match="topology.erdos_renyi.redraws"):
        topology.build_graph("erdos_renyi", 12, seed=2, p=0.2)
    g = topology.build_graph("erdos_renyi", 12, seed=2, p=0.2, redraws=50)
    assert nx.is_connected(g) and sorted(g.edges) == sorted(topology.build_graph("erdos_renyi", 12, seed=2, p=0.2,
                                                                                redraws=50).edges)
    # a first draw that is connected is kept: redraws change no existing graph
    assert sorted(topology.build_graph("erdos_renyi", 12, seed=1, p=0.2, redraws=50).edges) == \
        sorted(topology.build_graph("erdos_renyi", 12, seed=1, p=0.2).edges)
    with pytest.raises(TopologyError, match="disconnected"):
        topology.build_graph("erdos_renyi", 30, p=0.01, redraws=3)  # too sparse to connect in 3 tries


def test_erdos_renyi_can_be_drawn_to_survive_any_single_client_leaving():
    # seed 13 draws a connected G(12, 0.4) in which client 8 hangs on client 3 alone
    g = topology.build_graph("erdos_renyi", 12, seed=13, p=0.4, redraws=100)
    assert nx.is_connected(g) and not nx.is_connected(g.subgraph(set(g) - {3}))
    b = topology.build_graph("erdos_renyi", 12, seed=13, p=0.4, redraws=100, biconnected=True)
    assert nx.is_biconnected(b) and sorted(b.edges) == sorted(topology.build_graph(
        "erdos_renyi", 12, seed=13, p=0.4, redraws=100, biconnected=True).edges)
    # a first draw that is already biconnected is kept
    first = topology.build_graph("erdos_renyi", 12, seed=10, p=0.4)
    assert nx.is_biconnected(first) and sorted(first.edges) == sorted(topology.build_graph(
        "erdos_renyi", 12, seed=10, p=0.4, redraws=100, biconnected=True).edges)
    with pytest.raises(TopologyError, match="no biconnected G"):
        topology.build_graph("erdos_renyi", 12, seed=13, p=0.4, biconnected=True)


def test_graph_files(tmp_path):
    g = topology.build_graph("file", 6, path="topologies/barbell6.edgelist")
    assert g.number_of_edges() == 7 and nx.is_connected(g)
    g = topology.build_graph("file", 10, path="topologies/petersen10.graphml")
    assert sorted(d for _, d in g.degree) == [3] * 10
    bad = tmp_path / "two.edgelist"
    bad.write_text("0 1\n2 3\n")
    with pytest.raises(TopologyError, match="disconnected"):
        topology.build_graph("file", 4, path=bad)
    with pytest.raises(TopologyError, match="n_clients"):
        topology.build_graph("file", 5, path="topologies/barbell6.edgelist")
    with pytest.raises(TopologyError, match="does not exist"):
        topology.build_graph("file", 5, path=tmp_path / "missing.txt")


def test_bad_mixing_matrix_is_a_clear_error(tmp_path):
    g = topology.build_graph("ring", 4)
    W = topology.mixing_matrix(g).toarray()
    W_bad = W.copy()
    W_bad[0, 0] += 1e-9
    with pytest.raises(TopologyError, match="not doubly stochastic: row 0"):
        topology.validate_mixing(W_bad, g)
    W_off = np.full((4, 4), 0.25)
    with pytest.raises(TopologyError, match="not an edge"):
        topology.validate_mixing(W_off, g)
    neg = W.copy()
    neg[0, 1] -= 0.5
    neg[0, 0] += 0.5
    neg[1, 0] -= 0.5
    neg[1, 1] += 0.5
    with pytest.raises(TopologyError, match="negative"):
        topology.validate_mixing(neg, g)
    path = tmp_path / "W.txt"
    np.savetxt(path, W_bad)
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 4, "mixing": "file", "mixing_path": str(path)}})
    with pytest.raises(TopologyError, match="doubly stochastic"):
        Engine(config=cfg)


def test_user_mixing_matrix_is_used(tmp_path):
    g = topology.build_graph("ring", 4)
    W = 0.5 * np.eye(4) + 0.25 * nx.to_numpy_array(g, nodelist=range(4))
    np.save(tmp_path / "W.npy", W)
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 4, "mixing": "file", "mixing_path": str(tmp_path / "W.npy")}})
    assert np.array_equal(Engine(config=cfg).network.base_mixing.toarray(), W)


def test_edge_dropout_is_seeded_and_recomputes_mixing():
    cfg = config.from_dict({"topology": {"kind": "complete", "n_clients": 8, "dropout": 0.5}})
    e = Engine(config=cfg)
    W0, W1 = e.network.mixing_at(0).toarray(), e.network.mixing_at(1).toarray()
    assert np.array_equal(W0, Engine(config=cfg).network.mixing_at(0).toarray())
    assert not np.array_equal(W0, W1)
    for W in (W0, W1):
        topology.validate_mixing(W)
        assert np.count_nonzero(W - np.diag(np.diag(W))) < 8 * 7  # some edges dropped


def test_lazy_mixing_rescues_gradient_tracking_on_a_torus():
    import warnings

    from p2pforget import Engine, config

    def run(lazy):
        cfg = config.from_dict({"topology": {"kind": "torus", "n_clients": 32, "lazy": lazy},
                                "data": {"kind": "digits", "n_samples_per_client": 36},
                                "train": {"algorithm": "gradient_tracking", "lr": 0.1, "dtype": "float64"}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = Engine(config=cfg)
        W = engine.network.base_mixing.toarray()
        engine.train(150, progress=False)
        return engine, W, [str(w.message) for w in caught]

    plain, W, warned = run(False)
    lazy, W_lazy, quiet = run(True)
    np.testing.assert_allclose(W_lazy, (W + np.eye(32)) / 2, rtol=0, atol=0)
    assert np.linalg.eigvalsh(W).min() == pytest.approx(-0.6) and np.linalg.eigvalsh(W_lazy).min() == pytest.approx(0.2)
    assert any("eigenvalue -0.60" in m and "topology.lazy = true" in m for m in warned) and not quiet
    assert lazy.metrics["consensus_distance"][-1] < 0.05 < plain.metrics["consensus_distance"][-1]
    assert lazy.metrics["test_acc_mean"][-1] > plain.metrics["test_acc_mean"][-1] + 0.05


def test_a_registered_topology_is_chosen_by_topology_kind():
    """A topology kind is a registry entry: a user's builder, registered under a new name, is
    validated by the config and trains on the engine like a built-in graph."""
    from p2pforget import registry

    @registry.TOPOLOGIES.register("path_test", help="a path: the ring without one edge")
    def path(n, **_):
        return nx.path_graph(n)

    try:
        engine = Engine(config=config.from_dict({"topology": {"kind": "path_test", "n_clients": 5},
                                                 "data": {"n_samples_per_client": 8}, "run": {"rounds": 2}}))
        assert sorted(engine.graph.degree[i] for i in range(5)) == [1, 1, 2, 2, 2]
        engine.train(2, progress=False)
        assert engine.metrics["bytes_sent"][-1] == 8 * engine.dim * 4  # 4 edges, both ways
    finally:
        registry.TOPOLOGIES.unregister("path_test")
    with pytest.raises(config.ConfigError, match="topology.kind = 'path_test' is not valid; choose one of: ring"):
        config.from_dict({"topology": {"kind": "path_test"}})


def test_a_registered_mixing_rule_is_chosen_by_topology_mixing():
    """A mixing rule is a registry entry (one weight per edge, the diagonal takes the rest): a
    user's rule gives the matrix numpy builds from the same weights; one whose weights sum past 1
    at a node is refused, naming the rule."""
    from p2pforget import registry

    @registry.MIXINGS.register("quarter_test", help="a test mixing rule")
    def quarter(deg, edges):
        return np.full(len(edges), 0.25)

    @registry.MIXINGS.register("heavy_test", help="a test mixing rule")
    def heavy(deg, edges):
        return np.full(len(edges), 0.75)

    try:
        engine = Engine(config=config.from_dict({"topology": {"kind": "ring", "n_clients": 6, "mixing": "quarter_test"},
                                                 "data": {"n_samples_per_client": 8}}))
        A = nx.to_numpy_array(nx.cycle_graph(6))
        np.testing.assert_allclose(engine.network.base_mixing.toarray(), 0.25 * A + 0.5 * np.eye(6), rtol=0, atol=1e-15)
        with pytest.raises(TopologyError, match="mixing rule 'heavy_test' .* summing to 1.5 > 1"):
            topology.mixing_matrix(nx.cycle_graph(6), "heavy_test")
    finally:
        registry.MIXINGS.unregister("quarter_test")
        registry.MIXINGS.unregister("heavy_test")
