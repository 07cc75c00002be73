"""A node's model out of the simulator: ``engine.node_module(i)``, ``p2pforget export``, and the
study API (``p2pforget.study``) returning the study's table to Python."""
import sys
import types

import pytest
import torch

from p2pforget import Engine, config, experiment, models, study
from p2pforget.__main__ import main

CFG = {"run": {"rounds": 3}, "topology": {"n_clients": 4}, "data": {"kind": "digits", "n_samples_per_client": 8, "n_test": 20},
       "model": {"kind": "cnn", "cnn": {"hidden": 6, "norm": "batch"}}, "train": {"batch_size": 4}}


def test_node_module_predicts_what_the_engine_scores():
    engine = Engine(config=config.from_dict(CFG))
    engine.train(progress=False)
    acc = engine.evaluate()["test_acc"]
    for i in range(4):
        module = engine.node_module(i)
        assert not module.training
        with torch.no_grad():
            mine = (module(engine.batches.x_test).argmax(1) == engine.batches.y_test).double().mean()
        assert float(mine) == pytest.approx(acc[i])  # BatchNorm's running statistics came along
    with pytest.raises(ValueError, match="client 9 does not exist"):
        engine.node_module(9)


def test_export_writes_a_state_dict_the_model_loads(tmp_path, capsys):
    cfg = config.from_dict(CFG)
    result = experiment.run(cfg, out=tmp_path / "run", progress=False)
    expected = result.engine.node_module(2)
    for fmt in ("pt", "safetensors"):
        assert main(["export", str(tmp_path / "run"), "--node", "2", "--format", fmt]) == 0
        path = tmp_path / "run" / f"node2.{fmt}"
        assert str(path) in capsys.readouterr().out
        if fmt == "pt":
            state = torch.load(path)
        else:
            from safetensors.torch import load_file
            state = load_file(path)
        fresh = models.build(cfg.model, input_shape=result.engine.data.input_shape, n_classes=result.engine.data.n_classes)
        fresh.load_state_dict(state)
        fresh = fresh.to(result.engine.dtype).eval()
        with torch.no_grad():
            torch.testing.assert_close(fresh(result.engine.batches.x_test), expected(result.engine.batches.x_test), rtol=0, atol=0)


STUDY = {"run": {"rounds": 3, "eval_every": 0}, "topology": {"n_clients": 5}, "data": {"n_samples_per_client": 8},
         "unlearn": {"clients": [1], "finetune": {"rounds": 1}}}


def test_study_returns_the_cli_table_and_a_dataframe_when_pandas_is_there(tmp_path, monkeypatch):
    cfg = config.from_dict(STUDY)
    rows = study(cfg, topologies=["ring", "star"], methods=["retrain", "finetune"], out=tmp_path / "s")
    assert [(r["topology"], r["method"]) for r in rows] == [("ring", "retrain"), ("ring", "finetune"),
                                                            ("star", "retrain"), ("star", "finetune")]
    import csv
    with open(tmp_path / "s" / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["RA"]) for r in table] == [r["RA"] for r in rows]
    fake = types.ModuleType("pandas")
    fake.DataFrame = types.SimpleNamespace(from_records=lambda records, columns: ("frame", records, columns))
    monkeypatch.setitem(sys.modules, "pandas", fake)
    kind, records, columns = study(cfg, topologies=["ring", "star"], methods=["retrain", "finetune"], out=tmp_path / "s")
    assert kind == "frame" and records == rows and columns[:3] == ["topology", "method", "seed"]
