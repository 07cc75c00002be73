import numpy as np
import pytest
import torch

from p2pforget import data, models, partition, registry
from p2pforget.config import DataConfig, ModelConfig
from p2pforget.data.images import ImageOptions
from p2pforget.data.synthetic import GaussianOptions


@pytest.mark.parametrize("kind", list(registry.PARTITIONS.names()))
@pytest.mark.parametrize("sizes", [[25] * 8, [5, 40, 12, 30, 25, 8, 50, 30]])
def test_partitions_have_the_sizes_asked_for_are_disjoint_and_seeded(kind, sizes):
    labels = np.repeat(np.arange(4), 50)
    domains = np.tile(np.arange(4), 50)
    parts = partition.partition(labels, sizes=sizes, kind=kind, alpha=0.2, domains=domains, seed=5)
    flat = np.concatenate(parts)
    assert [len(p) for p in parts] == sizes
    assert len(np.unique(flat)) == 200
    again = partition.partition(labels, sizes=sizes, kind=kind, alpha=0.2, domains=domains, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_by_domain_gives_each_client_mostly_its_home_domain():
    labels = np.tile(np.arange(7), 200)
    domains = np.repeat(np.arange(4), 350)
    parts = partition.partition(labels, sizes=[40] * 8, kind="by_domain", domains=domains, domain_skew=0.75, seed=0)
    for i, p in enumerate(parts):
        counts = np.bincount(domains[p], minlength=4)
        home = i * 4 // 8
        assert counts[home] == 31 and counts.sum() == 40 and all(counts[d] == 3 for d in range(4) if d != home)
    with pytest.raises(ValueError, match="needs a dataset with domain labels"):
        partition.partition(labels, sizes=[4], kind="by_domain", seed=0)


def test_quantity_skew_gives_unequal_shards_with_the_same_total():
    fd = data.build(DataConfig(n_samples_per_client=30, quantity_skew=1.0, n_test=20), n_clients=6, seed=0)
    assert fd.counts.sum() == 180 and fd.counts.min() >= 2 and fd.counts.max() > 2 * fd.counts.min()
    assert fd.x.shape[1] == fd.counts.max()
    assert np.all(fd.x[~fd.valid] == 0) and fd.valid.sum() == 180


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(5), 400)

    def mean_classes_seen(alpha):
        parts = partition.dirichlet(labels, np.full(20, 50), alpha=alpha, seed=0)
        return np.mean([len(np.unique(labels[p])) for p in parts])

    assert mean_classes_seen(0.05) < 2.5 < 4.5 < mean_classes_seen(100.0)


def test_by_class_gives_each_client_at_most_two_classes():
    labels = np.repeat(np.arange(3), 40)
    parts = partition.by_class(labels, np.full(6, 20), seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_too_many_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="3 clients need 12 samples but only 10 are available"):
        partition.partition(np.zeros(10), sizes=[4, 4, 4], kind="iid", seed=0)


def test_gaussian_classes_are_separated_by_the_configured_distance():
    fd = data.build(DataConfig(n_samples_per_client=500, tables={"gaussian_logistic": GaussianOptions(
        n_features=5, n_classes=2, separation=3.0)}), n_clients=4, seed=1)
    x, y = fd.x.reshape(-1, 5), fd.y.ravel()
    mu0, mu1 = x[y == 0].mean(0), x[y == 1].mean(0)
    assert np.linalg.norm(mu0) == pytest.approx(3.0, abs=0.15) and np.linalg.norm(mu1) == pytest.approx(3.0, abs=0.15)
    assert x[y == 0].std(0).mean() == pytest.approx(1.0, abs=0.05)


def test_digits_loader_shapes():
    fd = data.build(DataConfig(kind="digits", n_samples_per_client=50, n_test=100), n_clients=6, seed=0)
    assert fd.x.shape == (6, 50, 1, 8, 8) and fd.x_test.shape == (100, 1, 8, 8) and fd.n_classes == 10
    assert 0 <= fd.x.min() and fd.x.max() <= 1


def test_logistic_flat_layout_is_weight_row_major_then_bias():
    fm = models.FlatModel(models.build(ModelConfig(kind="logistic"), input_shape=(3,), n_classes=2))
    flat = torch.arange(8, dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    # weight row 0 = [0,1,2], row 1 = [3,4,5]; bias = [6, 7]
    assert fm.forward(flat, x).tolist() == [[0.0 + 6, 3.0 + 7]]


def test_init_vector_is_seeded():
    fm = models.FlatModel(models.build(ModelConfig(kind="mlp"), input_shape=(4,), n_classes=3))
    a, b, c = fm.init_vector(1, torch.float32), fm.init_vector(1, torch.float32), fm.init_vector(2, torch.float32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pacs_like_is_seeded_with_4_domains_of_7_classes():
    cfg = DataConfig(kind="pacs_like", n_samples_per_client=28, n_test=56, partition="by_domain", domain_skew=1.0)
    a, b = data.build(cfg, n_clients=4, seed=3), data.build(cfg, n_clients=4, seed=3)
    assert a.x.shape == (4, 28, 3, 32, 32) and a.n_classes == 7 and len(a.domain_names) == 4
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, data.build(cfg, n_clients=4, seed=4).x)
    assert [set(np.unique(a.domain[i])) for i in range(4)] == [{0}, {1}, {2}, {3}]  # skew 1: one domain each
    assert set(np.unique(a.domain_test)) == {0, 1, 2, 3} and set(np.unique(a.y_test)) == set(range(7))
    # domains differ in style: mean pixel statistics of the sketch domain (white paper) stand apart
    means = [a.x[i].mean() for i in range(4)]
    assert means[3] > max(means[:3]) + 0.5


def _write_folder(root, sizes):
    from PIL import Image

    r = np.random.default_rng(0)
    for domain, classes in sizes.items():
        for cls, n in classes.items():
            folder = root / domain / cls
            folder.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(r.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{k}.png")


def test_image_folder_reads_pacs_style_folders(tmp_path):
    _write_folder(tmp_path, {"photo": {"dog": 5, "cat": 4}, "sketch": {"dog": 3, "cat": 6, "horse": 2}})
    x, y, dom, domains, classes = data.images.read_image_folder(tmp_path, size=16)
    assert x.shape == (20, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert domains == ("photo", "sketch") and classes == ("cat", "dog", "horse")
    assert np.bincount(dom).tolist() == [9, 11] and np.bincount(y).tolist() == [10, 8, 2]
    fd = data.build(DataConfig(kind="image_folder", path=str(tmp_path), tables={"image_folder": ImageOptions(image_size=16)}, n_test=4, n_samples_per_client=4,
                               holdout_fraction=0.0,
                               partition="by_domain"), n_clients=4, seed=0)
    assert fd.x.shape[2:] == (3, 16, 16) and fd.n_classes == 3 and fd.counts.tolist() == [4, 4, 4, 4]
    assert fd.domain.shape == fd.y.shape and fd.domain_names == ("photo", "sketch")


def test_image_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs data.path"):
        data.build(DataConfig(kind="image_folder"), n_clients=2, seed=0)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        data.build(DataConfig(kind="image_folder", path=str(tmp_path / "missing")), n_clients=2, seed=0)
    (tmp_path / "photo" / "dog").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        data.build(DataConfig(kind="image_folder", path=str(tmp_path)), n_clients=2, seed=0)


def test_digits_and_pacs_like_train_the_l2u_model():
    from p2pforget import Engine, config

    for kind, shape in [("digits", (1, 8, 8)), ("pacs_like", (3, 16, 16))]:
        cfg = config.from_dict({"topology": {"kind": "star", "n_clients": 4},
                                "data": {"kind": kind, "n_samples_per_client": 28, "n_test": 56, "pacs_like": {"image_size": 16}},
                                "model": {"kind": "l2u", "l2u": {"hidden": 8}}, "train": {"lr": 0.1, "local_steps": 3}})
        e = Engine(config=cfg)
        assert e.data.input_shape == shape
        e.train(3, progress=False)
        assert e.metrics["loss_mean"][-1] < e.metrics["loss_mean"][0]


def test_a_registered_partition_is_chosen_by_data_partition():
    """A partition is a registry entry: a user's own, registered under a new name, is validated by
    the config and used by the data builder (here: samples dealt out in label order)."""
    from p2pforget import config

    @registry.PARTITIONS.register("label_order_test", help="a test partition: clients by label order")
    def label_order(labels, sizes, *, seed, **params):
        order = np.argsort(labels, kind="stable")
        return np.split(order[:int(np.sum(sizes))], np.cumsum(sizes)[:-1])

    try:
        cfg = config.from_dict({"data": {"partition": "label_order_test", "n_samples_per_client": 10,
                                         "gaussian_logistic": {"n_classes": 2}},
                                "topology": {"n_clients": 4}})
        built = data.build(cfg.data, n_clients=4, seed=0)
        assert (built.y[0] == built.y[0, 0]).all() and built.y[0, 0] <= built.y[-1, 0]
    finally:
        registry.PARTITIONS.unregister("label_order_test")
    with pytest.raises(config.ConfigError, match="data.partition = 'label_order_test' is not valid; choose one of: iid"):
        config.from_dict({"data": {"partition": "label_order_test"}})
