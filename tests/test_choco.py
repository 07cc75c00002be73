"""CHOCO-SGD against a numpy reference (top-k and QSGD), its byte count, and QSGD's unbiasedness."""
import numpy as np
import pytest
import torch

from p2pforget import compress, config, seeding
from p2pforget.engine import Engine


def _cfg(**choco):
    return config.from_dict({"run": {"seed": 7, "rounds": 6, "eval_every": 0}, "topology": {"kind": "ring", "n_clients": 5},
                             "data": {"n_samples_per_client": 10, "n_test": 10, "gaussian_logistic": {"n_features": 6}},
                             "model": {"kind": "logistic"},
                             "train": {"algorithm": "choco", "dtype": "float64", "batch_size": 0, "lr": 0.2, "choco": choco}})


def _np_topk(v, k):
    out = np.zeros_like(v)
    for i, row in enumerate(v):
        keep = np.argsort(-np.abs(row), kind="stable")[:k]
        out[i, keep] = row[keep]
    return out


@pytest.mark.parametrize("kind", ["topk", "qsgd"])
def test_choco_matches_a_numpy_reference(kind):
    cfg = _cfg(compression=kind, compression_ratio=0.3, quantization_levels=4, consensus_step=0.4)
    engine, ref = Engine(config=cfg), Engine(config=cfg)
    W = engine.network.base_mixing.toarray()
    public = np.zeros((5, engine.dim))
    x = ref.params.numpy().copy()
    for r in range(6):
        engine.step()
        half = ref.compute.local_steps(torch.as_tensor(x)).numpy()   # the local SGD part (tested elsewhere)
        diff = half - public
        if kind == "topk":
            q = _np_topk(diff, int(round(0.3 * engine.dim)))
        else:
            keys = seeding.uniform_keys(7, np.arange(5), purpose="choco/quantize", counters=(r,), width=engine.dim)
            u = (keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
            norm = np.linalg.norm(diff, axis=1, keepdims=True)
            scaled = 4 * np.abs(diff) / norm
            q = norm * np.sign(diff) * (np.floor(scaled) + (u < scaled - np.floor(scaled))) / 4
        public = public + q
        x = half + 0.4 * (W @ public - public)
        ref.round += 1
    np.testing.assert_allclose(engine.params.numpy(), x, atol=1e-10, rtol=0)


def test_choco_bytes_are_the_compressed_messages():
    engine = Engine(config=_cfg(compression="topk", compression_ratio=0.25))
    engine.step()
    k = int(round(0.25 * engine.dim))
    edges = 2 * 5  # a ring of 5: 10 directed messages
    assert engine.metrics["bytes_sent"][0] == pytest.approx(edges * k * (8 + 4))


def test_qsgd_is_unbiased_and_choco_still_trains():
    v = torch.tensor([[0.3, -1.2, 0.05, 2.0]], dtype=torch.float64)
    draws = torch.stack([compress.quantize(v, 2, torch.rand(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s)))
                         for s in range(4000)])
    np.testing.assert_allclose(draws.mean(0).numpy(), v.numpy(), atol=0.05)
    engine = Engine(config=config.replace(_cfg(compression="qsgd"), run={"rounds": 40, "eval_every": 40}))
    engine.train(progress=False)
    assert engine.metrics["loss_mean"][-1] < 1.0 and engine.metrics["consensus_distance"][-1] < 0.5
