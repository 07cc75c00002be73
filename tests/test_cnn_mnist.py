"""The cnn learns MNIST-format files (handwritten digits written as IDX files) with the default
optimizer, and the He initialization is what makes it learn: PyTorch's default stays at chance."""
import numpy as np
import torch.nn as nn

from p2pforget import Engine, config, models
from p2pforget.data.files import write_mnist


def _digits_as_mnist(folder):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.pad(np.kron((d.images / 16.0 * 255).astype(np.uint8), np.ones((3, 3), np.uint8)), ((0, 0), (2, 2), (2, 2)))
    order = np.random.default_rng(0).permutation(len(d.target))
    return write_mnist(folder, train=(x[order[397:]], d.target[order[397:]]), test=(x[order[:397]], d.target[order[:397]]))


def _accuracy(folder):
    cfg = config.from_dict({"run": {"seed": 0, "rounds": 30, "eval_every": 30}, "topology": {"kind": "ring", "n_clients": 10},
                            "data": {"kind": "mnist", "path": str(folder), "n_test": 397}, "model": {"kind": "cnn"}})
    engine = Engine(config=cfg)
    engine.train(30, progress=False)
    return float(engine.metrics["test_acc_mean"][-1])


def test_cnn_learns_mnist_format_digits_with_the_defaults(tmp_path, monkeypatch):
    folder = _digits_as_mnist(tmp_path)
    assert _accuracy(folder) > 0.3  # chance is 0.1
    for layer, base in ((models.HeConv2d, nn.Conv2d), (models.HeLinear, nn.Linear)):
        monkeypatch.setattr(layer, "reset_parameters", base.reset_parameters)
    assert _accuracy(folder) < 0.15  # PyTorch's default initialization: still at chance
