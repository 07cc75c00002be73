import pytest

from p2pforget import config
from p2pforget.config import ConfigError


def test_toml_file_and_defaults(tmp_path):
    p = tmp_path / "exp.toml"
    p.write_text('[topology]\nkind = "torus"\nn_clients = 16\n[train]\nlr = 1\n')
    cfg = config.load(p)
    assert cfg.topology.kind == "torus" and cfg.topology.n_clients == 16
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.run.rounds == config.RunConfig().rounds


def test_roundtrip_through_toml():
    cfg = config.with_overrides(config.Config(), ["topology.kind=star", "data.save=true", "run.out=runs/x y"])
    assert config.loads(config.dumps(cfg)) == cfg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key topology\.kinds; valid keys in \[topology\]: kind, n_clients, p, k, beta"):
        config.from_dict({"topology": {"kinds": "ring"}})
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]; valid sections: run, topology, data, model, train"):
        config.from_dict({"trian": {}})
    with pytest.raises(ConfigError, match=r"valid keys in \[train\]: algorithm, aggregator, lr"):
        config.with_overrides(config.Config(), ["train.learning_rate=0.1"])


@pytest.mark.parametrize("override,message", [
    ("topology.kind=tree", "choose one of: ring, torus, star"),
    ("run.rounds=-3", r"out of range; allowed \[0, inf\)"),
    ("topology.p=1.5", r"allowed \[0.0, 1.0\]"),
    ("train.local_steps=2.5", "must be of type int"),
    ("data.save=yes", "must be of type bool"),
    ("train.dtype=float16", "float32, float64"),
    ("rounds=3", "section.key=value"),
])
def test_bad_values_name_the_key_and_the_valid_range(override, message):
    with pytest.raises(ConfigError, match=message):
        config.with_overrides(config.Config(), [override])


def test_overrides_are_typed():
    cfg = config.with_overrides(config.Config(), ["train.lr=0.05", "topology.n_clients=32", "train.same_init=false"])
    assert (cfg.train.lr, cfg.topology.n_clients, cfg.train.same_init) == (0.05, 32, False)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_reference_table_lists_every_key():
    ref = config.reference()
    for key in ["run.seed", "topology.dropout", "data.alpha", "model.hidden", "train.same_init"]:
        assert f"`{key}`" in ref


def test_method_options_live_in_sub_tables():
    cfg = config.loads('[unlearn]\nmethod = "foul"\nclients = [1]\n[unlearn.foul]\nkappa = 1.5\n[unlearn.certified]\nepsilon = 0.5\n')
    assert cfg.unlearn.options().kappa == 1.5 and cfg.unlearn.options("certified").epsilon == 0.5
    assert cfg.unlearn.options("foul").beta == 2.0  # defaults fill the rest
    again = config.with_overrides(cfg, ["unlearn.foul.rounds=7", "unlearn.method=certified"])
    assert again.unlearn.options("foul").rounds == 7 and again.unlearn.options().epsilon == 0.5
    assert config.loads(config.dumps(again)) == again
    assert "[unlearn.foul]" in config.dumps(again)


@pytest.mark.parametrize("bad,message", [
    ({"unlearn": {"epsilon": 0.5}}, r"unlearn.epsilon has moved to the method's own table: write it under \[unlearn.certified\]"),
    ({"unlearn": {"foul": {"kapa": 1}}}, r"unknown key unlearn.foul.kapa; valid keys in \[unlearn.foul\]: kappa, beta"),
    ({"unlearn": {"method": "magic"}}, r"unlearn.method = 'magic' is not valid; choose one of: certified, retrain, foul"),
    ({"unlearn": {"foul": {"params": "k"}}}, r"unlearn.foul.params = 'k' is not valid; choose one of: v, all"),
])
def test_method_option_errors_name_the_new_place(bad, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(bad)


def test_flat_override_of_a_moved_key_says_where_it_went():
    with pytest.raises(ConfigError, match=r"use unlearn.certified.noise=\.\.\."):
        config.with_overrides(config.Config(), ["unlearn.noise=false"])
    with pytest.raises(ConfigError, match=r"unknown key unlearn.foul.nope; valid keys in \[unlearn.foul\]"):
        config.with_overrides(config.Config(), ["unlearn.foul.nope=1"])
