import numpy as np
import pytest
import torch

from p2pforget import data, models, partition
from p2pforget.config import DataConfig, ModelConfig


@pytest.mark.parametrize("kind", partition.KINDS)
def test_partitions_are_equal_disjoint_and_seeded(kind):
    labels = np.repeat(np.arange(4), 50)
    parts = partition.partition(labels, n_clients=8, n_per_client=25, kind=kind, alpha=0.2, seed=5)
    flat = np.concatenate(parts)
    assert [len(p) for p in parts] == [25] * 8
    assert len(np.unique(flat)) == 200
    again = partition.partition(labels, n_clients=8, n_per_client=25, kind=kind, alpha=0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(5), 400)

    def mean_classes_seen(alpha):
        parts = partition.dirichlet(labels, 20, 50, alpha=alpha, seed=0)
        return np.mean([len(np.unique(labels[p])) for p in parts])

    assert mean_classes_seen(0.05) < 2.5 < 4.5 < mean_classes_seen(100.0)


def test_by_class_gives_each_client_at_most_two_classes():
    labels = np.repeat(np.arange(3), 40)
    parts = partition.by_class(labels, 6, 20, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_too_many_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the 10 samples"):
        partition.iid(np.zeros(10), 3, 4, seed=0)


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
