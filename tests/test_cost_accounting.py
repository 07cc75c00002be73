"""A client that left the graph costs nothing: no bytes, no FLOPs, in training and in Retrain."""
import numpy as np
import pytest

from p2pforget import Engine, config
from p2pforget.unlearn import measured


def _engine(kind: str, **train) -> Engine:
    cfg = config.from_dict({"topology": {"kind": kind, "n_clients": 8}, "data": {"n_samples_per_client": 12},
                            "train": {"batch_size": 4, "local_steps": 2} | train, "run": {"vmap_width": 1}})
    return Engine(config=cfg)


def _round(engine: Engine) -> tuple[float, float]:
    """The bytes of one training round, and the FLOPs of its local steps (the per-round metric
    evaluation, also counted by the FLOP counter, is bookkeeping)."""
    _, _, flops = measured(lambda: engine.compute.local_steps(engine.params))
    engine.train(1, progress=False)
    return engine.metrics["bytes_sent"][-1], flops


@pytest.mark.parametrize("kind", ["star", "ring"])
def test_removed_clients_add_no_bytes_or_flops(kind):
    engine = _engine(kind)
    bytes_all, flops_all = _round(engine)
    engine.exclude(samples={j: np.arange(12) for j in (2, 3)}, removed=[2, 3])
    bytes_left, flops_left = _round(engine)
    d, itemsize = engine.dim, 4
    if kind == "star":  # up and down from each of the 8, then of the 6 left
        assert bytes_all == 2 * 8 * d * itemsize and bytes_left == 2 * 6 * d * itemsize
    else:  # a ring of 8 has 16 directed messages; without nodes 2 and 3 it is a path of 5 edges
        assert bytes_all == 16 * d * itemsize and bytes_left == 2 * 5 * d * itemsize
    # every client's local steps cost the same (equal batch shapes, one row per vmap chunk)
    assert flops_left == pytest.approx(flops_all * 6 / 8, rel=1e-12)


def test_relay_on_a_star_receives_but_does_not_upload():
    engine = _engine("star")
    engine.exclude(samples={3: np.arange(12)})  # keep_relay: client 3 stays, holding no data
    sent, _ = _round(engine)
    assert sent == (8 + 7) * engine.dim * 4


def test_skipped_rows_change_no_number():
    """Computing only the rows of clients with data gives the step every row would take: the
    others' local steps are one SGD step on :meth:`~p2pforget.engine.compute.Compute.gradients` (all rows), a relay's row
    stays where it was."""
    engine = _engine("ring", local_steps=1)
    engine.train(2, progress=False)
    engine.exclude(samples={4: np.arange(12)})
    g, _ = engine.compute.gradients(engine.params, engine.batches.minibatch((engine.round, 0)))
    expected = engine.params - engine.config.train.lr * g
    stepped = engine.compute.local_steps(engine.params)
    assert np.allclose(stepped.numpy(), expected.numpy(), rtol=0, atol=1e-7)
    assert np.array_equal(stepped[4].numpy(), engine.params[4].numpy())


@pytest.mark.parametrize("kind", ["ring", "star"])
def test_the_flop_counter_sees_gossip_mixing_and_the_hubs_average(kind):
    """A round's FLOPs include its communication arithmetic, two per number received (a multiply
    and an add; nodes that left receive nothing): the count less the local steps' equals the
    number derived by hand from the mixing matrix or the hub's uploads. (The ledger off: its
    mixing is counted the same way, on both sides of a comparison.)"""
    engine = Engine(config=config.replace(_engine(kind).config, ledger={"kind": "off"}))
    engine.exclude(samples={j: np.arange(12) for j in (2, 3)}, removed=[2, 3])
    engine.train(1, progress=False)
    _, _, steps = measured(lambda: engine.compute.local_steps(engine.params))
    _, _, whole = measured(lambda: engine.step())
    _, _, evaluation = measured(lambda: engine.evaluate())
    d = engine.dim
    if kind == "star":  # the hub averages the 6 uploads that carry weight
        expected = 2 * 6 * d
    else:
        W = engine.network.base_mixing.toarray()
        received = int(np.count_nonzero(W))  # every member row's neighbours and itself
        expected = d * (2 * received - engine.n_clients)
    assert whole - steps - evaluation * engine.evaluates(engine.round) == expected
