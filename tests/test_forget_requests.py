"""Forget requests: validation, batches, sequences, run files and the CLI on a finished run."""
import json

import numpy as np
import pytest

from p2pforget import Engine, config, experiment, forget, history
from p2pforget.__main__ import main

from reference import sum_objective_optimum


def _cfg(**unlearn):
    return config.from_dict({
        "run": {"seed": 2, "rounds": 400},
        "topology": {"kind": "erdos_renyi", "n_clients": 10, "erdos_renyi": {"p": 0.5}},
        "data": {"n_samples_per_client": 20, "n_test": 60, "gaussian_logistic": {"n_features": 3, "n_classes": 3}},
        "train": {"algorithm": "gradient_tracking", "lr": 0.15, "dtype": "float64", "weight_decay": 0.1},
        "unlearn": {"certified": {"noise": False, "newton_steps": 4, "averaging": "tree"}} | unlearn,
    })


@pytest.fixture(scope="module")
def trained_state():
    engine = Engine(config=_cfg())
    engine.train(400, progress=False)
    return engine.state()


def _engine(state, **unlearn):
    engine = Engine(config=_cfg(**unlearn))
    engine.load_state(state)
    return engine


def _optimum(engine, keep):
    d = engine.data
    xs = [d.x[i][keep[i]] for i in range(engine.n_clients) if keep[i].any()]
    ys = [d.y[i][keep[i]] for i in range(engine.n_clients) if keep[i].any()]
    return sum_objective_optimum(xs, ys, 3, 0.1, np.zeros(12))


def test_bad_requests_are_clear(trained_state):
    engine = _engine(trained_state)
    with pytest.raises(ValueError, match="client 12 does not exist; client ids are 0..9"):
        forget(engine, clients=[12], progress=False)
    with pytest.raises(ValueError, match="must lie in 0..19"):
        forget(engine, samples={1: [25]}, progress=False)
    with pytest.raises(ValueError, match="nothing to forget"):
        forget(engine, progress=False)
    with pytest.raises(config.ConfigError, match="unlearn.certified.curvature"):
        forget(engine, clients=[1], progress=False, curvature="hessian")
    forget(engine, clients=[1], progress=False, reference=False)
    with pytest.raises(ValueError, match="holds no data any more"):
        forget(engine, clients=[1], progress=False, reference=False)


def test_batch_and_sequence_reach_the_same_optimum(trained_state):
    batch = _engine(trained_state)
    r = forget(batch, clients=[2, 7], samples={4: [0, 1, 2, 3]}, progress=False, reference=False)
    assert sorted(r.forgotten) == [2, 4, 7]
    seq = _engine(trained_state)
    forget(seq, clients=[2], progress=False, reference=False)
    forget(seq, samples={4: [0, 1, 2, 3]}, progress=False, reference=False)
    last = forget(seq, clients=[7], progress=False, reference=False)
    keep = np.ones((10, 20), bool)
    keep[[2, 7]] = False
    keep[4, :4] = False
    assert np.array_equal(batch.retained & batch.members[:, None], keep)
    assert np.array_equal(seq.retained & seq.members[:, None], keep)
    opt = _optimum(batch, keep)
    nodes = np.flatnonzero(keep.any(axis=1))
    for result in (r, last):
        err = np.linalg.norm(result.params["unlearned_noiseless"][nodes] - opt, axis=1).max() / np.linalg.norm(opt)
        assert err < 1e-8


def test_retrain_method_and_reference(trained_state):
    engine = _engine(trained_state, method="retrain")
    result = forget(engine, clients=[5], progress=False)
    nodes = np.arange(10) != 5
    assert np.isnan(result.params["unlearned"][5]).all()  # the node that left releases nothing
    assert np.array_equal(result.params["unlearned"][nodes], result.params["retrained"][nodes])
    assert result.metrics["unlearned"]["distance_to_retrain"] == 0
    assert result.cost["retrain"].comm_bytes == result.cost["unlearn"].comm_bytes > 0


def test_run_file_and_cli_forget(tmp_path, capsys):
    cfg = config.replace(_cfg(clients=[3], certified={"noise": True, "newton_steps": 4, "averaging": "tree"}), run={"rounds": 120})
    experiment.run(cfg, out=tmp_path, progress=False)
    rf = history.read_h5(tmp_path / "history.h5")
    for name in ["init", "trained", "unlearned", "unlearned_noiseless", "retrained"]:
        assert rf.arrays[f"params/{name}"].shape == (10, 12)
    u = rf.group_attrs["unlearn"]
    assert u["method"] == "certified" and json.loads(u["forgotten"]) == {"3": list(range(20))}
    assert u["residual_norm"] <= u["residual_bound"] and u["sigma"] > 0
    from p2pforget.unlearn import gaussian
    assert u["sigma"] == pytest.approx(gaussian.sigma(u["budget"], epsilon=u["epsilon"], delta=u["delta"]))
    for key in ["epsilon", "delta", "seconds", "flops", "comm_bytes"]:
        assert key in u
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["metrics"]) == {"trained", "unlearned", "retrained"}
    assert report["cost"]["ratio_to_retrain"]["seconds"] > 0

    # a second request on the finished run, from the command line, on top of the first
    assert main(["forget", str(tmp_path), "--samples", "5:0,1,2", "--set", "unlearn.certified.noise=false"]) == 0
    out = capsys.readouterr().out
    assert "Retrain" in out and "Certified" in out and "certificate:" in out
    first, second = json.loads((tmp_path / "report.json").read_text())["requests"]
    assert first["unlearn"]["cumulative_epsilon"] == first["unlearn"]["epsilon"] == 1.0
    assert first["unlearn"]["cumulative_delta"] == first["unlearn"]["delta"]
    assert second["unlearn"]["cumulative_epsilon"] is None  # the second release had no noise
    rf = history.read_h5(tmp_path / "history.h5")
    retained = rf.arrays["unlearn/retained"]
    assert not retained[5, :3].any() and retained[5, 3:].all() and not rf.arrays["unlearn/members"][3]
    assert main(["forget", str(tmp_path), "--clients", "3"]) == 2
    assert "holds no data any more" in capsys.readouterr().err
    assert main(["forget", str(tmp_path), "--clients", "1", "--set", "train.lr=1"]) == 2
    assert "only [unlearn] keys" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "ledger.png").exists() and (tmp_path / "unlearning.png").exists()


@pytest.mark.parametrize("eval_every", [0, 2])
def test_retrain_flops_match_a_direct_count_less_the_metric_evaluations(eval_every):
    from p2pforget.unlearn import measured

    cfg = config.replace(_cfg(), run={"rounds": 50, "eval_every": eval_every})
    engine = Engine(config=cfg)
    engine.train(5, progress=False)
    result = forget(engine, clients=[3], method="retrain", progress=False)
    direct = Engine(config=cfg)
    direct.exclude(removed=[3])
    _, _, flops = measured(lambda: direct.train(5, progress=False))
    _, _, one_evaluation = measured(lambda: direct.evaluate())
    flops -= (2 if eval_every else 0) * one_evaluation  # rounds 2 and 4 evaluate: no side is charged
    assert flops > 0 and one_evaluation > 0
    assert result.cost["unlearn"].flops == pytest.approx(flops, rel=1e-12)
    assert result.cost["retrain"].flops == pytest.approx(flops, rel=1e-12)


@pytest.mark.parametrize("method", ["certified", "finetune", "not", "retrain"])
def test_the_method_runs_once_and_its_cost_comes_from_that_run(method, monkeypatch):
    """One forget request calls the method's ``unlearn`` once: its seconds and FLOPs are measured
    in that run (no second run to count FLOPs), and Retrain trains once, on a fork of the engine."""
    from p2pforget.engine import Engine as EngineClass
    from p2pforget.registry import METHODS

    engine = Engine(config=_cfg())
    engine.train(4, progress=False)
    cls = type(METHODS.entry(method).obj())
    calls, trains, builds = [], [], []
    real_unlearn, real_train, real_init = cls.unlearn, EngineClass.train, EngineClass.__init__
    monkeypatch.setattr(cls, "unlearn", lambda self, *a, **k: calls.append(1) or real_unlearn(self, *a, **k))
    monkeypatch.setattr(EngineClass, "train", lambda self, *a, **k: trains.append(self.round) or real_train(self, *a, **k))
    monkeypatch.setattr(EngineClass, "__init__", lambda self, **k: builds.append(1) or real_init(self, **k))
    result = forget(engine, clients=[3], method=method, progress=False)
    assert len(calls) == 1
    assert builds == []  # twins are forks: no engine is built from the config again
    assert trains.count(0) == 1 + (method == "retrain")  # Retrain's fork starts at round 0 once (twice when it is the method)
    cost = result.cost["unlearn"]
    assert cost.flops > 0 and cost.seconds > 0
