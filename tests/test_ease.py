"""Federated CLIP training and EASE: the losses against direct numpy computations, the excision
basis against scipy, caption batches, the Forget Lock in the engine, and EASE end to end."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from p2pforget import config, history
from p2pforget.engine import Engine
from p2pforget.models.clip import infonce
from p2pforget.unlearn import ForgetRequest, forget
from p2pforget.unlearn.ease import EASE, EASEOptions, block_sparse_entries, displacement_loss, excision_bases, partners


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _sim_and_mask(seed=0, b=6, valid=4):
    r = np.random.default_rng(seed)
    sim = r.standard_normal((b, b)) * 3
    mask = np.r_[np.ones(valid), np.zeros(b - valid)]
    return sim, mask


def test_infonce_matches_numpy_on_the_valid_pairs():
    sim, mask = _sim_and_mask()
    s = sim[:4, :4]  # padding rows and columns drop out entirely
    ref = 0.5 * (-np.diag(_log_softmax(s)).mean() - np.diag(_log_softmax(s.T)).mean())
    got = infonce(torch.as_tensor(sim), torch.as_tensor(mask))
    assert float(got) == pytest.approx(ref, rel=1e-12)


def test_displacement_loss_pushes_each_pair_towards_another_pairs_partner():
    sim, mask = _sim_and_mask(1)
    pi = partners(4, 6)
    assert pi.tolist() == [1, 2, 3, 0, 4, 5] and all(pi[i] != i for i in range(4))
    s = sim[:4, :4]
    idx = np.arange(4)
    ref = 0.5 * (-_log_softmax(s)[idx, (idx + 1) % 4].mean() - _log_softmax(s.T)[idx, (idx + 1) % 4].mean())
    got = displacement_loss(torch.as_tensor(sim), pi, torch.as_tensor(mask))
    assert float(got) == pytest.approx(ref, rel=1e-12)
    # descending it lowers the matched similarities
    t = torch.as_tensor(sim).requires_grad_(True)
    g, = torch.autograd.grad(displacement_loss(t, pi, torch.as_tensor(mask)), t)
    assert (torch.diag(g)[:4] > 0).all()


def test_excision_basis_keeps_per_block_the_forget_directions_past_the_threshold():
    r = np.random.default_rng(3)
    sizes = [5, 7]
    d = sum(sizes)
    G_r = torch.as_tensor(r.standard_normal((d, 3)))
    G_f = torch.as_tensor(r.standard_normal((d, 2)))
    G_f[:5, 0] = G_r[:5, 0]  # block 0: one forget direction is a retained one (angle 0)
    threshold = math.radians(30)
    B, E = excision_bases(G_f, G_r, sizes, rank=2, threshold=threshold)
    np.testing.assert_allclose((B.T @ B).numpy(), np.eye(B.shape[1]), atol=1e-10)
    np.testing.assert_allclose((E.T @ B).numpy(), 0.0, atol=1e-10)  # the entangled ones never touch them
    start = 0
    for size in sizes:
        block = slice(start, start + size)
        angles = scipy.linalg.subspace_angles(G_f[block].numpy(), G_r[block].numpy())
        cols = B[block].abs().amax(dim=0) > 0
        assert int(cols.sum()) == int((angles > threshold).sum())  # scipy: how many are past it
        rows_outside = torch.ones(d, dtype=torch.bool)
        rows_outside[block] = False
        assert float(B[rows_outside][:, cols].abs().max()) == 0.0  # each direction stays in its block
        shared = E[block].abs().amax(dim=0) > 0
        assert float(E[rows_outside][:, shared].abs().sum()) == 0.0
        close = int((angles <= threshold).sum())  # each entangled pair gives one or two directions
        assert close <= int(shared.sum()) <= 2 * close
        start += size
    assert int((B[:5].abs().amax(dim=0) > 0).sum()) == 1  # the shared direction is not excised


def _clip_cfg(**sections):
    base = {"run": {"seed": 2, "rounds": 3, "eval_every": 0},
            "topology": {"kind": "star", "n_clients": 4},
            "data": {"kind": "captions_synth", "n_samples_per_client": 6, "n_test": 10, "partition": "by_class"},
            "model": {"kind": "clip"}, "train": {"batch_size": 4, "lr": 0.1, "local_steps": 2},
            "audit": {"after_forget": False}}
    for k, v in sections.items():
        base[k] = base.get(k, {}) | v
    return config.from_dict(base)


def test_caption_batches_choose_per_round_and_travel_with_their_images():
    engine = Engine(config=_clip_cfg())
    a, b = engine.batches.minibatch((0, 0)), engine.batches.minibatch((1, 0))
    assert a["tokens"].shape == (4, 4, 5, 16) and a["u"].shape == (4, 4)
    assert ((a["u"] >= 0) & (a["u"] < 1)).all() and not torch.equal(a["u"], b["u"])
    assert torch.equal(engine.batches.minibatch((0, 0))["u"], a["u"])  # keyed, not drawn from global state
    # each image keeps its own captions: match rows of x back to the stored samples
    for i in range(4):
        for x, tok in zip(a["x"][i], a["tokens"][i]):
            j = int(torch.nonzero((engine.batches.x[i] == x).flatten(1).all(dim=1))[0])
            assert torch.equal(engine.batches.extras["tokens"][i, j], tok)
    engine.train(3, progress=False)
    assert 0.0 <= engine.metrics["test_acc_mean"][-1] <= 1.0  # R@1 as a fraction


def test_forget_lock_in_the_engine_removes_returning_components_and_survives_state():
    engine = Engine(config=_clip_cfg())
    engine.train(2, progress=False)
    result = forget(engine, clients=[1], method="ease", reference=False, progress=False, rounds=1, rank=2)
    assert result.method == "ease" and "forget_lock" in engine.hooks and engine.hooks["forget_lock"].basis.shape[1] > 0
    lock = engine.hooks["forget_lock"]
    before = engine.params.clone()
    engine.train(1, progress=False)
    coeff = ((engine.params - before).double() @ lock.basis)
    assert bool(((coeff * lock.back) <= 1e-7).all())  # nothing moves back towards the trained model
    restored = Engine(config=_clip_cfg())
    restored.load_state(engine.state())
    restored_lock = restored.hooks["forget_lock"]
    assert torch.equal(restored_lock.basis, lock.basis) and torch.equal(restored_lock.anchor, lock.anchor)
    assert restored_lock.mu == lock.mu


@pytest.mark.parametrize("which", ["dual", "image"])
def test_displacement_changes_only_its_branch_and_never_the_temperature(which):
    engine = Engine(config=_clip_cfg())
    engine.train(1, progress=False)
    model = engine.model
    request = ForgetRequest.build(engine, clients=[2])
    seen = {}

    def spy(rows, *args, **kwargs):  # the displacement step is the only params change outside training
        seen.setdefault("steps", []).append(rows.clone())
        return original(rows, *args, **kwargs)

    original = engine.network.sum
    engine.network.sum = spy
    EASE().unlearn(engine, request, EASEOptions(rounds=1, excision="none", lock=False, displacement=which))
    g = seen["steps"][0]
    assert torch.count_nonzero(g[[0, 1, 3]]) == 0 and torch.count_nonzero(g[2]) > 0  # only the forget client
    image = model.mask("image")
    temperature = model.mask("clip.logit_scale")
    assert torch.count_nonzero(g[2][temperature]) == 0
    if which == "image":
        assert torch.count_nonzero(g[2][~image]) == 0
    else:
        assert torch.count_nonzero(g[2][~image & ~temperature]) > 0 and torch.count_nonzero(g[2][image]) > 0


@pytest.mark.parametrize("excision", ["entangled", "exclusive"])
def test_the_displacement_step_is_excised_as_chosen(excision, monkeypatch):
    from p2pforget.unlearn import ease

    engine = Engine(config=_clip_cfg())
    engine.train(1, progress=False)
    request = ForgetRequest.build(engine, samples={1: [0, 1, 2], 2: [0, 1]})
    seen = {}
    bases = ease.excision_bases
    monkeypatch.setattr(ease, "excision_bases", lambda *a, **k: seen.setdefault("call", (a, k, bases(*a, **k)))[2])
    original = engine.network.sum
    engine.network.sum = lambda rows, *a, **k: (seen.setdefault("step", rows.clone()), original(rows, *a, **k))[1]
    EASE().unlearn(engine, request, EASEOptions(rounds=1, rank=2, lock=False, excision=excision))
    args, kwargs, (_, sent_E) = seen["call"]
    B, E = bases(*args, **kwargs | {"entangled": True})  # both sets, whatever the method asked for
    assert sent_E.shape[1] == (E.shape[1] if excision == "entangled" else 0)  # E is built only when used
    g = seen["step"].double()
    assert B.shape[1] > 0 and E.shape[1] > 0 and float(g.norm()) > 0
    assert float((g @ E).abs().max()) <= 1e-5 * float(g.norm())  # nothing along an entangled direction
    outside = float((g - (g @ B) @ B.T).norm())
    if excision == "exclusive":  # nothing outside the forget-exclusive span
        assert outside <= 1e-5 * float(g.norm())
    else:  # the rest passes: most of the step lies outside the few excised directions
        assert outside > 0.5 * float(g.norm())


def test_ease_on_a_ring_records_r_at_1_and_run_file_keeps_the_lock(tmp_path):
    from p2pforget import experiment

    cfg = _clip_cfg(topology={"kind": "ring", "n_clients": 5},
                    unlearn={"method": "ease", "clients": [3], "ease": {"rounds": 2, "rank": 2}})
    experiment.run(cfg, out=tmp_path / "run", progress=False)
    stored = history.read_h5(tmp_path / "run" / "history.h5")
    assert "checkpoint/hooks/forget_lock/shared/basis" in stored.arrays
    assert stored.arrays["checkpoint/hooks/forget_lock/rows/anchor"].shape[0] == 5
    import json
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    metrics = report["requests"][0]["metrics"] if "requests" in report else report["metrics"]
    for key in ("trained", "unlearned", "retrained"):
        assert 0.0 <= metrics[key]["FA"]["mean"] <= 100.0 and 0.0 <= metrics[key]["TA"]["mean"] <= 100.0


def test_recall_matches_numpy_recall_at_k_and_counts_same_words_as_hits():
    from p2pforget.metrics import recall_at_k
    from p2pforget.models.clip import RECALL_AT

    engine = Engine(config=_clip_cfg(data={"n_test": 12}))
    flat = engine.params[0]
    r = np.random.default_rng(0)
    tokens = torch.as_tensor(r.integers(1, 4000, (12, 5, 16)))  # distinct captions: plain R@k
    batch = {"x": engine.batches.x_test, "tokens": tokens}
    with torch.no_grad():
        got = engine.model.call(flat, "recall", batch).numpy()
        image = engine.model.call(flat, "embed_images", engine.batches.x_test).numpy()
        text = engine.model.call(flat, "embed_texts", tokens.reshape(60, 16)).numpy()
    ref = recall_at_k(image, text, captions_per_image=5, ks=RECALL_AT)
    names = [f"{w}_R@{k}" for w in ("i2t", "t2i") for k in RECALL_AT]
    np.testing.assert_allclose(100 * got, [ref[n] for n in names], atol=1e-4)
    # every image described by the same five captions: any retrieval is a hit
    same = tokens[:1].expand(12, 5, 16)
    with torch.no_grad():
        assert float(engine.model.call(flat, "recall", {"x": engine.batches.x_test, "tokens": same}).min()) == 1.0
        assert float(engine.task.score(flat, {"x": engine.batches.x_test, "tokens": same})) == 1.0


def test_a_clip_run_reports_recall_at_1_5_10_both_ways(tmp_path):
    import json

    from p2pforget import experiment

    experiment.run(_clip_cfg(), out=tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["retrieval"]) == {f"{w}_R@{k}" for w in ("i2t", "t2i") for k in (1, 5, 10)}
    values = report["retrieval"]
    assert all(0.0 <= v <= 100.0 for v in values.values())
    assert values["i2t_R@1"] <= values["i2t_R@5"] <= values["i2t_R@10"]
    stored = history.read_h5(tmp_path / "run" / "history.h5")
    assert json.loads(stored.attrs["retrieval_json"]) == values


def test_with_a_gallery_each_pair_faces_only_the_gallery_as_distractors():
    engine = Engine(config=_clip_cfg(data={"n_test": 12}))
    flat = engine.params[0]
    r = np.random.default_rng(1)
    tokens = torch.as_tensor(r.integers(1, 4000, (12, 5, 16)))
    x = engine.batches.x_test
    with torch.no_grad():
        image = engine.model.call(flat, "embed_images", x)
        text = engine.model.call(flat, "embed_texts", tokens.reshape(60, 16)).reshape(12, 5, -1)
        query, gallery = slice(0, 4), slice(4, 12)
        batch = {"x": x[query], "tokens": tokens[query], "gallery_x": x[gallery], "gallery_tokens": tokens[gallery]}
        got = float(engine.task.score(flat, batch))
        i2t, t2i = engine.model.call(flat, "directions", batch).tolist()
        hits = []
        for i in range(4):  # by hand: pair i against its own captions / image and the 8 gallery pairs only
            cands = torch.cat([text[i], text[gallery].reshape(-1, text.shape[-1])])
            hits.append(float(int((image[i] @ cands.T).argmax()) < 5))
        for i in range(4):
            imgs = torch.cat([image[i:i + 1], image[gallery]])
            hits += [float(int((imgs @ text[i, j]).argmax()) == 0) for j in range(5)]
    expected = 0.5 * (np.mean(hits[:4]) + np.mean(hits[4:]))
    assert got == pytest.approx(expected, abs=1e-6)
    assert (i2t, t2i) == pytest.approx((np.mean(hits[:4]), np.mean(hits[4:])), abs=1e-6)  # each direction apart


def test_anchored_displacement_loss_targets_anchor_columns_and_never_displaces_anchors():
    r = np.random.default_rng(4)
    sim = r.standard_normal((7, 7)) * 2  # 3 forget pairs, 1 padding, 3 anchor pairs
    mask = np.array([1, 1, 1, 0, 0, 0, 0.0])
    valid = np.array([1, 1, 1, 0, 1, 1, 1.0])
    pi = torch.tensor([4, 5, 6, 3, 4, 5, 6])
    keep = np.flatnonzero(valid)  # the padding row and column drop out
    s = sim[np.ix_(keep, keep)]
    rows, cols = np.arange(3), np.array([3, 4, 5])  # the anchors' positions among the kept
    ref = 0.5 * (-_log_softmax(s)[rows, cols].mean() - _log_softmax(s.T)[rows, cols].mean())
    got = displacement_loss(torch.as_tensor(sim), pi, torch.as_tensor(mask), torch.as_tensor(valid))
    assert float(got) == pytest.approx(ref, rel=1e-12)
    t = torch.as_tensor(sim).requires_grad_(True)
    g, = torch.autograd.grad(displacement_loss(t, pi, torch.as_tensor(mask), torch.as_tensor(valid)), t)
    assert float(g[4:, 4:].abs().max()) == 0.0  # anchor pairs among themselves: untouched


def test_anchored_batches_pair_forget_pairs_with_the_clients_own_retained_pairs():
    from p2pforget.unlearn.ease import _forget_batches

    engine = Engine(config=_clip_cfg(data={"partition": "iid"}))
    request = ForgetRequest.build(engine, samples={1: [0, 2, 4], 3: [1]})
    engine.exclude(samples=request.samples)
    batch = _forget_batches(engine, request, 1, anchored=True)[0]
    width = 3  # the most forget pairs any client has
    assert batch["x"].shape[1] == width + 3 and batch["mask"][:, width:].abs().max() == 0
    kept = np.flatnonzero(engine.retained[1])[:3]
    np.testing.assert_array_equal(batch["x"][1, width:].numpy(), engine.batches.x[1, kept].numpy())
    assert batch["partner"][1, :3].tolist() == [3, 4, 5] and batch["partner"][3, :1].tolist() == [3]
    assert batch["valid"][3].tolist() == [1, 0, 0, 1, 0, 0]  # client 3: one forget pair, one anchor
    plain = _forget_batches(engine, request, 1, anchored=False)[0]
    assert plain["partner"][1, :3].tolist() == [1, 2, 0] and "valid" not in plain


def test_dropping_a_clients_padding_leaves_its_displacement_loss_as_it_was():
    from p2pforget.unlearn.ease import _own_pairs

    r = np.random.default_rng(5)
    sim = torch.as_tensor(r.standard_normal((7, 7)) * 2)
    batch = {"mask": torch.tensor([1, 1, 1, 0, 0, 0, 0.0]), "valid": torch.tensor([1, 1, 1, 0, 1, 1, 0.0]),
             "partner": torch.tensor([4, 5, 4, 3, 4, 5, 6]), "x": torch.arange(7)}
    own = _own_pairs(batch)
    keep = own["x"]
    assert keep.tolist() == [0, 1, 2, 4, 5] and own["partner"].tolist() == [3, 4, 3, 3, 4]
    full = displacement_loss(sim, batch["partner"], batch["mask"], batch["valid"])
    trimmed = displacement_loss(sim[keep][:, keep], own["partner"], own["mask"], own["valid"])
    assert float(trimmed) == pytest.approx(float(full), rel=1e-12)


def test_the_bases_travel_block_sparse():
    # every column excision_bases builds is nonzero inside one parameter block only, so it is sent
    # as that block's entries and its index: counted independently here from the columns' supports
    gen = torch.Generator().manual_seed(3)
    sizes = [3, 5, 4]
    G_f, G_r = torch.randn(12, 2, generator=gen, dtype=torch.float64), torch.randn(12, 2, generator=gen, dtype=torch.float64)
    B, E = excision_bases(G_f, G_r, sizes, rank=2, threshold=0.6)
    ends = np.cumsum(sizes)
    for basis in (B, E):
        support = [np.flatnonzero(basis[:, k].numpy()) for k in range(basis.shape[1])]
        blocks = [set(np.searchsorted(ends, s, side="right").tolist()) for s in support]
        assert all(len(b) == 1 for b in blocks)
        expected = sum(sizes[b.pop()] + 1 for b in blocks)
        assert block_sparse_entries(basis, sizes) == expected
        assert expected < basis.shape[1] * 12 or not basis.shape[1]
    assert B.shape[1] and E.shape[1]
