"""MNIST IDX and CIFAR-10 python-batch loaders on small files written in those exact formats."""
import dataclasses
import gzip
import pickle

import numpy as np
import pytest

from p2pforget.config import DataConfig
from p2pforget.data import build
from p2pforget.data.files import read_idx, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_is_byte_exact(tmp_path, dtype):
    a = (np.random.default_rng(0).standard_normal((4, 3, 2)) * 50).astype(dtype)
    write_idx(tmp_path / "a.idx", a)
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw[:4] == bytes([0, 0, raw[2], 3]) and int.from_bytes(raw[4:8], "big") == 4  # big-endian header
    b = read_idx(tmp_path / "a.idx")
    assert b.dtype == a.dtype and b.tobytes() == a.tobytes()


def _mnist_files(folder, n_train=60, n_test=20, gz=False):
    r = np.random.default_rng(1)
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = r.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, arr in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            path = folder / name
            write_idx(path, arr)
            if gz:
                path.with_name(name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
        files[split] = (images, labels)
    return files


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_every_client_sample_exactly(tmp_path, gz):
    files = _mnist_files(tmp_path, gz=gz)
    fd = build(DataConfig(kind="mnist", path=str(tmp_path), n_samples_per_client=10, n_test=8, holdout_fraction=0.0),
               n_clients=4, seed=0)
    assert fd.x.shape == (4, 10, 1, 28, 28) and fd.n_classes == 10
    images, labels = files["train"]
    lookup = {img.tobytes(): int(lab) for img, lab in zip(images, labels)}
    for i in range(4):
        for x, y in zip(fd.x[i], fd.y[i]):
            raw = np.round(x[0] * 255).astype(np.uint8)
            assert np.array_equal(raw / 255.0, x[0]) and lookup[raw.tobytes()] == y
    test_lookup = {img.tobytes() for img in files["t10k"][0]}
    assert all(np.round(x[0] * 255).astype(np.uint8).tobytes() in test_lookup for x in fd.x_test)


def test_cifar10_loader_reads_the_python_batches_exactly(tmp_path):
    r = np.random.default_rng(2)
    batches = []
    for name, n in (("data_batch_1", 30), ("data_batch_2", 30), ("test_batch", 12)):
        data = r.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = list(r.integers(0, 10, n))
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches.append((data, labels))
    fd = build(DataConfig(kind="cifar10", path=str(tmp_path), n_samples_per_client=12, n_test=6, holdout_fraction=0.0),
               n_clients=4, seed=0)
    assert fd.x.shape == (4, 12, 3, 32, 32)
    lookup = {row.tobytes(): int(lab) for data, labels in batches[:2] for row, lab in zip(data, labels)}
    for i in range(4):
        for x, y in zip(fd.x[i], fd.y[i]):
            raw = np.round(x * 255).astype(np.uint8).reshape(3072)
            assert lookup[raw.tobytes()] == y  # channel-major, as the batches store it


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        build(DataConfig(kind="mnist"), n_clients=2, seed=0)
    with pytest.raises(FileNotFoundError, match="train images"):
        build(DataConfig(kind="mnist", path=str(tmp_path)), n_clients=2, seed=0)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        build(DataConfig(kind="cifar10", path=str(tmp_path)), n_clients=2, seed=0)
    _mnist_files(tmp_path, n_train=30)
    with pytest.raises(ValueError, match="holdout_fraction|available"):
        build(DataConfig(kind="mnist", path=str(tmp_path), n_samples_per_client=20, n_test=5), n_clients=4, seed=0)
    with pytest.raises(ValueError, match="n_test = 200"):
        build(DataConfig(kind="mnist", path=str(tmp_path), n_samples_per_client=2), n_clients=4, seed=0)


def test_normalize_standard_and_unit_norm():
    base = DataConfig(kind="digits", n_samples_per_client=40, n_test=50)
    raw = build(base, n_clients=5, seed=0)
    std = build(DataConfig(kind="digits", n_samples_per_client=40, n_test=50, normalize="standard"), n_clients=5, seed=0)
    # Statistics of the public test split: it is standardized, and every other input goes through its map.
    test = std.x_test.reshape(-1, 64)
    varying = raw.x_test.reshape(-1, 64).std(axis=0) > 0
    np.testing.assert_allclose(test.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(test.std(axis=0)[varying], 1.0, atol=1e-12)
    mu = raw.x_test.reshape(-1, 64).mean(axis=0)
    sd = np.where(varying, raw.x_test.reshape(-1, 64).std(axis=0), 1.0)
    np.testing.assert_allclose(std.x[std.valid].reshape(-1, 64), (raw.x[raw.valid].reshape(-1, 64) - mu) / sd, atol=1e-12)
    np.testing.assert_allclose(std.x_holdout.reshape(-1, 64)[:3], (raw.x_holdout.reshape(-1, 64)[:3] - mu) / sd, atol=1e-12)
    unit = build(DataConfig(kind="digits", n_samples_per_client=40, n_test=50, normalize="unit_norm"), n_clients=5, seed=0)
    np.testing.assert_allclose(np.linalg.norm(unit.x[unit.valid].reshape(-1, 64), axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(unit.x_test.reshape(-1, 64), axis=1), 1.0, atol=1e-12)
    assert np.array_equal(unit.y, raw.y)


def test_shards_partition_gives_each_client_few_classes():
    fd = build(DataConfig(kind="digits", partition="shards", shards_per_client=2, n_samples_per_client=40, n_test=50,
                          holdout_fraction=0.0), n_clients=10, seed=0)
    classes = [len(set(fd.y[i].tolist())) for i in range(10)]
    assert max(classes) <= 4 and np.mean(classes) <= 3
    from p2pforget.partition import shards

    parts = shards(np.repeat(np.arange(5), 20), np.array([30, 4, 10]), seed=0, shards_per_client=2)  # unequal sizes
    assert [len(p) for p in parts] == [30, 4, 10] and len(np.unique(np.concatenate(parts))) == 44


def test_normalize_changes_the_certificates_constant_not_its_sigma():
    """The Hessian-Lipschitz constant grows with max ||x||^3: unit_norm shrinks it on digits,
    standard (features of std 1, so norms near 8) inflates it; sigma is calibrated from the
    data-independent budget and stays the same."""
    from p2pforget import config
    from p2pforget.engine import Engine
    from p2pforget.unlearn import forget

    certs = {}
    for norm in ("none", "standard", "unit_norm"):
        cfg = config.from_dict({"run": {"seed": 0, "rounds": 10}, "topology": {"kind": "star", "n_clients": 6},
                                "data": {"kind": "digits", "n_samples_per_client": 30, "n_test": 60, "normalize": norm},
                                "model": {"kind": "logistic"}, "train": {"lr": 0.5, "dtype": "float64", "weight_decay": 0.01},
                                "audit": {"after_forget": False}})
        engine = Engine(config=cfg)
        engine.train(10, progress=False)
        certs[norm] = forget(engine, clients=[2], reference=False, progress=False).certificate
    L = {k: c["hessian_lipschitz"] for k, c in certs.items()}
    assert L["unit_norm"] < L["none"] / 10 and L["standard"] > 10 * L["none"]
    assert certs["none"]["sigma"] == certs["unit_norm"]["sigma"] == certs["standard"]["sigma"]


def test_dirichlet_client_sizes_sum_to_the_total_and_skew_with_small_concentration():
    from p2pforget.partition import client_sizes

    small = client_sizes(20, 30, skew=0.0, dirichlet=0.2, seed=1)
    large = client_sizes(20, 30, skew=0.0, dirichlet=100.0, seed=1)
    assert small.sum() == large.sum() == 600 and small.min() >= 2
    assert small.std() > 3 * large.std()
    fd = build(DataConfig(kind="digits", n_samples_per_client=30, n_test=50, quantity_dirichlet=0.3, holdout_fraction=0.0),
               n_clients=10, seed=0)
    assert fd.counts.sum() == 300 and len(set(fd.counts.tolist())) > 3


@pytest.fixture
def client_2_scaled():
    """The synthetic dataset with only client 2's raw inputs changed (times 3, plus 5)."""
    from p2pforget.data import DATASETS, register

    synthetic = DATASETS.get("gaussian_logistic")

    @register("synthetic_client_2_scaled")
    def scaled(cfg, n_clients, seed):
        fd = synthetic(cfg, n_clients, seed)
        x = fd.x.copy()
        x[2, :fd.counts[2]] = 3.0 * x[2, :fd.counts[2]] + 5.0
        return dataclasses.replace(fd, x=x)

    yield "synthetic_client_2_scaled"
    DATASETS.unregister("synthetic_client_2_scaled")


def test_standard_normalization_does_not_depend_on_the_forgotten_client(client_2_scaled):
    """Changing only the forgotten client's raw data changes neither Retrain's models nor the
    remaining optimum, and each certified release lies within its bound of that one optimum."""
    from p2pforget import config
    from p2pforget.engine import Engine
    from p2pforget.unlearn import forget
    from p2pforget.unlearn.certified import remaining_optimum

    out = {}
    for kind in ("gaussian_logistic", client_2_scaled):
        cfg = config.from_dict({"run": {"seed": 0}, "topology": {"kind": "ring", "n_clients": 6},
                                "data": {"kind": kind, "n_samples_per_client": 30, "n_test": 100, "normalize": "standard"},
                                "model": {"kind": "logistic"},
                                "train": {"lr": 0.05, "dtype": "float64", "weight_decay": 0.01},
                                "audit": {"after_forget": False}})
        engine = Engine(config=cfg)
        engine.train(10, progress=False)
        r = forget(engine, clients=[2], progress=False)
        out[kind] = (engine, r, remaining_optimum(engine, np.zeros(engine.dim), engine.batches.inputs()))
    (e0, r0, opt0), (e1, r1, opt1) = out.values()
    keep = np.arange(6) != 2
    assert not np.array_equal(e0.data.x[2], e1.data.x[2])  # the forgotten client's data did change ...
    np.testing.assert_array_equal(e0.data.x[keep], e1.data.x[keep])  # ... and no other client's features
    assert not np.array_equal(r0.params["trained"], r1.params["trained"])
    np.testing.assert_array_equal(r0.params["retrained"], r1.params["retrained"])
    np.testing.assert_allclose(opt0, opt1, atol=1e-12, rtol=0)
    for r in (r0, r1):
        assert r.certificate["certified"], r.certificate["not_certified_because"]
        gap = np.linalg.norm(r.params["unlearned_noiseless"][keep] - opt0, axis=1).max()
        assert gap <= r.certificate["residual_bound"]
