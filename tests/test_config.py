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
    with pytest.raises(ConfigError, match=r"unknown key topology\.kinds; valid keys in \[topology\]: kind, n_clients, path, mixing.*"
                                          r"kind tables: \[topology.erdos_renyi\], \[topology.small_world\]"):
        config.from_dict({"topology": {"kinds": "ring"}})
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]; valid sections: run, topology, data, model, train"):
        config.from_dict({"trian": {}})
    with pytest.raises(ConfigError, match=r"valid keys in \[train\]: algorithm, aggregator, lr"):
        config.with_overrides(config.Config(), ["train.learning_rate=0.1"])


@pytest.mark.parametrize("override,message", [
    ("topology.kind=tree", "choose one of: ring, torus, star"),
    ("run.rounds=-3", r"out of range; allowed \[0, inf\)"),
    ("topology.erdos_renyi.p=1.5", r"allowed \[0.0, 1.0\]"),
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
    for key in ["run.seed", "topology.dropout", "data.alpha", "model.mlp.hidden", "model.clip.lora_rank", "train.same_init"]:
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


def test_model_options_live_in_their_kinds_table():
    cfg = config.loads('[model]\nkind = "mlp"\n[model.mlp]\nhidden = 7\n[model.l2u]\nalpha_v = 0.5\n')
    assert cfg.model.options().hidden == 7 and cfg.model.options("l2u").alpha_v == 0.5
    assert cfg.model.options("cnn").hidden == 32 and cfg.model.options("logistic") is None
    assert config.loads(config.dumps(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"valid keys in \[model.mlp\]: hidden"):
        config.from_dict({"model": {"kind": "mlp", "mlp": {"width": 3}}})
    with pytest.raises(ConfigError, match=r"unknown key model.width_xyz; valid keys in \[model\]: kind; kind tables: "
                                          r"\[model.mlp\], \[model.cnn\]"):
        config.from_dict({"model": {"width_xyz": 3}})
    assert config.with_overrides(cfg, ["model.clip.lora_rank=2"]).model.options("clip").lora_rank == 2


def test_a_flat_model_key_still_works_for_one_release_with_a_warning_naming_its_table():
    with pytest.warns(DeprecationWarning, match=r"model.hidden has moved to the kind's own table: write it under "
                                                r"\[model.mlp\] / \[model.cnn\] / \[model.l2u\]"):
        cfg = config.from_dict({"model": {"kind": "mlp", "hidden": 9, "cnn": {"hidden": 4}}})
    # the flat value fills every table that has the key, unless the table sets it itself
    assert cfg.model.options("mlp").hidden == 9 and cfg.model.options("l2u").hidden == 9
    assert cfg.model.options("cnn").hidden == 4
    with pytest.warns(DeprecationWarning, match="model.hidden has moved"):
        assert config.with_overrides(config.from_dict({}), ["model.hidden=5"]).model.options("mlp").hidden == 5


def test_topology_options_live_in_their_kinds_table():
    cfg = config.from_dict({"topology": {"kind": "small_world", "n_clients": 12, "small_world": {"k": 6, "beta": 0.5}}})
    assert (cfg.topology.options().k, cfg.topology.options().beta) == (6, 0.5)
    assert cfg.topology.options("erdos_renyi").p == 0.3 and cfg.topology.options("ring") is None
    with pytest.warns(DeprecationWarning, match=r"topology.p has moved to the kind's own table: write it under "
                                                r"\[topology.erdos_renyi\]"):
        old = config.from_dict({"topology": {"kind": "erdos_renyi", "p": 0.6}})
    assert old == config.from_dict({"topology": {"kind": "erdos_renyi", "erdos_renyi": {"p": 0.6}}})


def test_dataset_shape_keys_live_in_their_kinds_table():
    cfg = config.loads('[data]\nkind = "pacs_like"\n[data.pacs_like]\nimage_size = 12\n'
                       '[data.gaussian_logistic]\nn_features = 7\n')
    assert cfg.data.options().image_size == 12 and cfg.data.options("gaussian_logistic").n_features == 7
    assert cfg.data.options("captions_synth").concept == "shape" and cfg.data.options("digits") is None
    assert config.loads(config.dumps(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"unknown key data.gaussian_logistic.image_size; valid keys in "
                                          r"\[data.gaussian_logistic\]: n_features, n_classes, separation"):
        config.from_dict({"data": {"gaussian_logistic": {"image_size": 3}}})
    with pytest.warns(DeprecationWarning, match=r"data.image_size has moved to the kind's own table: write it under "
                                                r"\[data.pacs_like\] / \[data.image_folder\] / \[data.captions_synth\]"):
        old = config.from_dict({"data": {"kind": "pacs_like", "image_size": 12, "n_features": 7}})
    assert old.data.options() == cfg.data.options() and old.data.options("captions_synth").image_size == 12


def test_a_flat_key_given_to_replace_takes_effect():
    """``replace`` starts from a config whose tables name every key: the flat value must still win."""
    cfg = config.from_dict({"model": {"kind": "mlp"}})
    with pytest.warns(DeprecationWarning, match="model.hidden has moved"):
        assert config.replace(cfg, model={"hidden": 64}).model.options().hidden == 64
    with pytest.warns(DeprecationWarning, match="data.n_features has moved"):
        assert config.replace(cfg, data={"n_features": 5}).data.options("gaussian_logistic").n_features == 5
    assert config.replace(cfg, data={"gaussian_logistic": {"n_features": 5}}) == config.replace(cfg, data={"n_features": 5})
