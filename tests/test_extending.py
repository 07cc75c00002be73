"""docs/guide/extending.md: one extension of each kind (dataset, model, topology, round rule,
unlearning method) in a user module, each run from a TOML config with its own option table."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pforget import Engine, config
from p2pforget.__main__ import main
from p2pforget.unlearn import forget

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "examples" / "plugins" / "extensions.py"
GUIDE = ROOT / "docs" / "guide" / "extending.md"


def _cfg(**sections) -> config.Config:
    base = {"run": {"rounds": 4, "plugins": [str(MODULE)]}, "topology": {"n_clients": 6},
            "data": {"kind": "shifted_blobs", "n_samples_per_client": 12, "n_test": 24},
            "model": {"kind": "tanh_mlp"}, "train": {"dtype": "float64", "lr": 0.2}}
    for name, values in sections.items():
        base[name] = base.get(name, {}) | values
    return config.from_dict(base)


def test_the_guides_code_is_the_example_module():
    """Every Python block of the guide is a verbatim piece of the module the tests run."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    source = MODULE.read_text()
    assert len(blocks) >= 5
    for block in blocks:
        assert block.strip() in source, block[:80]


def test_every_extension_from_the_example_config(tmp_path, capsys, monkeypatch):
    """The guide's commands, from the repository's root: a run on the user's graph, data, model and
    round rule, then a forget request with the user's method (its plug-in passed explicitly: a run
    directory is data)."""
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert main(["run", "examples/plugins/extensions.toml", "--out", str(run), "--set", "run.rounds=8"]) == 0
    assert main(["forget", str(run), "--clients", "2", "--plugins", "examples/plugins/extensions.py"]) == 0
    out = capsys.readouterr().out
    assert "Noisy_finetune" in out and "noisy_finetune issues no certificate" in out


@pytest.mark.parametrize("section,kind,key", [("data", "shifted_blobs", "shift"), ("model", "tanh_mlp", "hidden"),
                                              ("topology", "circulant", "offsets"), ("train", "partial_mix", "keep"),
                                              ("unlearn", "noisy_finetune", "rounds")])
def test_each_extensions_table_rejects_an_unknown_key_with_the_valid_ones(section, kind, key):
    with pytest.raises(config.ConfigError, match=rf"unknown key {section}\.{kind}\.colour; valid keys in "
                                                 rf"\[{section}\.{kind}\]: {key}"):
        _cfg(**{section: {kind: {"colour": 1}}})


def test_the_dataset_and_model_read_their_tables():
    for shift in (0.0, 3.0):
        engine = Engine(config=_cfg(data={"shifted_blobs": {"shift": shift}, "n_test": 400}))
        x, y = engine.data.x_test, engine.data.y_test  # 600 draws of N(+-shift, 1) per class: std of the mean 0.04
        assert abs(x[y == 1].mean() - shift) < 0.2 and abs(x[y == 0].mean() + shift) < 0.2
    wide = Engine(config=_cfg(model={"tanh_mlp": {"hidden": 5}}))
    assert wide.dim == 3 * 5 + 5 + 5 * 2 + 2


def test_the_topology_reads_its_offsets():
    engine = Engine(config=_cfg(topology={"kind": "circulant", "n_clients": 9, "circulant": {"offsets": [1, 2, 4]}}))
    assert sorted({d for _, d in engine.graph.degree}) == [6]


def test_the_round_rule_keeping_half_is_dsgd_with_lazy_mixing():
    """``x <- 0.5 x' + 0.5 W x'`` is DSGD with ``W <- (W + I) / 2`` (``topology.lazy``)."""
    mine = Engine(config=_cfg(train={"algorithm": "partial_mix", "partial_mix": {"keep": 0.5}}))
    lazy = Engine(config=_cfg(topology={"lazy": True}, train={"algorithm": "dsgd"}))
    mine.train(4, progress=False)
    lazy.train(4, progress=False)
    torch.testing.assert_close(mine.params, lazy.params, rtol=0, atol=1e-13)
    plain = Engine(config=_cfg(train={"algorithm": "dsgd"}))
    plain.train(4, progress=False)
    assert not torch.allclose(mine.params, plain.params)


def test_the_method_without_noise_is_fine_tuning():
    def run(method, **options):
        engine = Engine(config=_cfg())
        engine.train(progress=False)
        return forget(engine, clients=[1], method=method, reference=False, progress=False, **options).params["unlearned"]

    quiet = run("noisy_finetune", rounds=3, sigma=0.0)
    np.testing.assert_array_equal(quiet, run("finetune", rounds=3))
    assert not np.allclose(run("noisy_finetune", rounds=3, sigma=0.1), quiet)
