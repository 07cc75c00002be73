import numpy as np
import pytest
import torch

from p2pforget import data, models, partition
from p2pforget.config import DataConfig, ModelConfig


@pytest.mark.parametrize("kind", list(partition.KINDS))
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
    fd = data.build(DataConfig(n_samples_per_client=500, n_features=5, n_classes=2, separation=3.0), n_clients=4, seed=1)
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
