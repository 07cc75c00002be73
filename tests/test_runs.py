"""Run files: layout, determinism, atomic writes, bit-identical resume."""

import numpy as np
import pytest

from p2pforget import config, experiment, history
from p2pforget.experiment import ResumeError


class Interrupt(Exception):
    pass


def _cfg(**train):
    return config.from_dict({
        "run": {"seed": 11, "rounds": 8},
        "topology": {"kind": "erdos_renyi", "n_clients": 7, "erdos_renyi": {"p": 0.5}, "dropout": 0.3},
        "data": {"n_samples_per_client": 30, "n_test": 50, "save": True, "gaussian_logistic": {"n_features": 4}},
        "model": {"kind": "mlp", "mlp": {"hidden": 8}},
        "train": {"batch_size": 8, "local_steps": 2, "dtype": "float32"} | train,
    })


def test_layout(tmp_path):
    cfg = _cfg()
    experiment.run(cfg, out=tmp_path, progress=False)
    rf = history.read_h5(tmp_path / "history.h5")
    assert rf.attrs["n_clients"] == 7 and rf.attrs["world_size"] == 1 and rf.attrs["complete"]
    assert config.loads(rf.attrs["config_toml"]) == cfg
    d = 4 * 8 + 8 + 8 * 3 + 3
    assert rf.arrays["params/init"].shape == (7, d) and rf.arrays["params/trained"].dtype == np.float32
    mixings = history.stored_mixings(rf, 8)  # time-varying: one matrix per round, stored sparse
    assert len(mixings) == 8 and mixings[0].shape == (7, 7) and not np.array_equal(mixings[0], mixings[1])
    assert rf.arrays["topology/mixing/round"].max() == 7
    assert rf.arrays["topology/edges"].shape[1] == 2
    assert rf.arrays["data/client_0003/x"].shape == (30, 4) and rf.arrays["data/test/y"].shape == (50,)
    for name in ["loss_mean", "test_acc_mean", "test_acc_min", "consensus_distance", "bytes_sent"]:
        assert rf.arrays[f"metrics/{name}"].shape == (8,)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    import json
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["final"]["test_acc_mean"] == pytest.approx(rf.arrays["metrics/test_acc_mean"][-1])


def test_bytes_count_messages_on_active_edges(tmp_path):
    cfg = _cfg()
    result = experiment.run(cfg, out=tmp_path, progress=False)
    W = history.stored_mixings(history.read_h5(tmp_path / "history.h5"), 8)
    d = result.engine.dim
    expected = [np.count_nonzero(Wt - np.diag(np.diag(Wt))) * d * 4 for Wt in W]
    assert result.engine.metrics["bytes_sent"] == expected


@pytest.mark.parametrize("algorithm", ["dsgd", "gradient_tracking"])
def test_same_config_twice_is_bit_identical(tmp_path, algorithm):
    cfg = _cfg(algorithm=algorithm, local_steps=1)
    experiment.run(cfg, out=tmp_path / "a", progress=False)
    experiment.run(cfg, out=tmp_path / "b", progress=False)
    a, b = (history.read_h5(tmp_path / n / "history.h5").arrays for n in "ab")
    assert np.array_equal(a["params/trained"], b["params/trained"])
    assert not np.array_equal(a["params/trained"], a["params/init"])
    for k in a:
        if k.startswith("metrics/"):
            assert np.array_equal(a[k], b[k])


@pytest.mark.parametrize("algorithm,kind", [("dsgd", "erdos_renyi"), ("gradient_tracking", "erdos_renyi"), ("dsgd", "star")])
def test_resume_after_interruption_is_bit_identical(tmp_path, algorithm, kind):
    cfg = config.replace(_cfg(algorithm=algorithm, local_steps=1), topology={"kind": kind})
    full = experiment.run(cfg, out=tmp_path / "full", progress=False)

    def stop_at_5(engine):
        if engine.round == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        experiment.run(cfg, out=tmp_path / "cut", progress=False, callback=stop_at_5)
    cut = history.read_h5(tmp_path / "cut" / "history.h5")
    assert cut.attrs["rounds_done"] == 5 and not cut.attrs["complete"]
    resumed = experiment.run(cfg, out=tmp_path / "cut", resume=True, progress=False)
    assert resumed.engine.round == 8
    a = history.read_h5(tmp_path / "full" / "history.h5").arrays
    b = history.read_h5(tmp_path / "cut" / "history.h5").arrays
    assert np.array_equal(a["params/trained"], b["params/trained"])
    assert np.array_equal(a["metrics/loss_mean"], b["metrics/loss_mean"])
    assert full.engine.metrics == resumed.engine.metrics


def test_resume_with_a_changed_config_is_refused(tmp_path):
    cfg = _cfg()
    experiment.run(cfg, out=tmp_path, progress=False)
    with pytest.raises(ResumeError, match=r"train.lr: 0.1 -> 0.5"):
        experiment.run(config.replace(cfg, train={"lr": 0.5}), out=tmp_path, resume=True, progress=False)
    more = experiment.run(config.replace(cfg, run={"rounds": 10}), out=tmp_path, resume=True, progress=False)
    assert len(more.engine.metrics["loss_mean"]) == 10
