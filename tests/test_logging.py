"""Per-node metric history in the run file and the CSV logs."""
import csv

import numpy as np
import pytest

from p2pforget import config, experiment, history


def _cfg(rounds=5):
    return config.from_dict({"run": {"seed": 2, "rounds": rounds, "eval_every": 2},
                             "topology": {"kind": "ring", "n_clients": 4},
                             "data": {"n_samples_per_client": 10, "n_test": 20},
                             "log": {"csv": True}})


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_per_node_history_and_csv_logs_agree_and_survive_resume(tmp_path):
    out = tmp_path / "run"
    experiment.run(_cfg(), out=out, progress=False)
    stored = history.read_h5(out / "history.h5").arrays
    per_node = stored["metrics/per_node/test_acc"]
    assert per_node.shape == (3, 4) and stored["metrics/round"].tolist() == [2, 4, 5]
    np.testing.assert_allclose(per_node.mean(axis=1), stored["metrics/test_acc_mean"])
    np.testing.assert_allclose(per_node.min(axis=1), stored["metrics/test_acc_min"])
    rows = _read(out / "metrics.csv")
    assert [int(r["round"]) for r in rows] == [2, 4, 5]
    assert [float(r["loss_mean"]) for r in rows] == pytest.approx(stored["metrics/loss_mean"].tolist(), rel=1e-15)
    assert float(rows[-1]["bytes_sent_total"]) == pytest.approx(stored["metrics/bytes_sent"].sum())
    nodes = _read(out / "metrics_per_node.csv")
    assert len(nodes) == 12 and {int(r["node"]) for r in nodes} == {0, 1, 2, 3}
    assert float(nodes[5]["test_acc"]) == per_node[1, 1]

    experiment.run(_cfg(rounds=8), out=out, resume=True, progress=False)
    again = history.read_h5(out / "history.h5").arrays["metrics/per_node/test_acc"]
    assert again.shape == (5, 4) and np.array_equal(again[:3], per_node)
    assert len(_read(out / "metrics_per_node.csv")) == 20


def test_tensorboard_events_match_the_run_files_per_node_history(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config.replace(_cfg(), log={"tensorboard": True, "csv": False})
    out = tmp_path / "run"
    experiment.run(cfg, out=out, progress=False)
    stored = history.read_h5(out / "history.h5").arrays
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    mean = events.Scalars("train/test_acc_mean")
    assert [e.step for e in mean] == [2, 4, 5]
    np.testing.assert_allclose([e.value for e in mean], stored["metrics/test_acc_mean"], rtol=1e-6)
    for node in range(4):
        got = [e.value for e in events.Scalars(f"node_{node}/loss")]
        np.testing.assert_allclose(got, stored["metrics/per_node/loss"][:, node], rtol=1e-6)
    experiment.run(config.replace(cfg, run={"rounds": 8}), out=out, resume=True, progress=False)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_mean")] == [2, 4, 5, 6, 8]  # no round logged twice


def test_test_accuracy_of_the_mean_model_is_its_own_metric_and_train_defaults_to_run_rounds():
    import torch

    from p2pforget.engine import Engine

    engine = Engine(config=config.replace(_cfg(rounds=4), run={"eval_every": 1}, topology={"kind": "ring", "n_clients": 6}))
    engine.train()  # up to run.rounds
    assert engine.round == 4 and len(engine.metrics["test_acc_of_mean"]) == 4
    mean = engine.params.double().mean(dim=0).to(engine.dtype)
    with torch.no_grad():
        acc = float((engine.task.logits(mean, engine.batches.x_test).argmax(-1) == engine.batches.y_test).float().mean())
    assert engine.metrics["test_acc_of_mean"][-1] == pytest.approx(acc)
    engine.train()
    assert engine.round == 4  # nothing left to run
