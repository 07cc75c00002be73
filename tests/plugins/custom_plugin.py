"""A user plug-in outside the package: models, a dataset and an aggregator registered from a script."""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from p2pforget.aggregate import Uploads
from p2pforget.data import FederatedData, shard
from p2pforget.registry import AGGREGATORS, DATASETS, MODELS


@MODELS.register("tiny_linear_plugin")
def tiny_linear(cfg, input_shape, n_classes):
    """A bias-free linear classifier."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), n_classes, bias=False))


@dataclass(frozen=True)
class WideOptions:
    """Keys of ``[model.wide_linear_plugin]``."""

    width: int = 4


@MODELS.register("wide_linear_plugin", options=WideOptions)
def wide_linear(cfg, input_shape, n_classes):
    """A linear layer to ``width`` units, then a bias-free linear classifier."""
    width = cfg.options().width
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.Linear(width, n_classes, bias=False))


@DATASETS.register("two_blobs_plugin")
def two_blobs(cfg, n_clients, seed):
    """Two Gaussian blobs at +-2 on every axis."""
    r = np.random.default_rng(seed)
    n = n_clients * cfg.n_samples_per_client
    y = np.arange(n + cfg.n_test) % 2
    x = r.standard_normal((len(y), 3)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return FederatedData(**shard(x[:n], y[:n], cfg, n_clients, seed), x_test=x[n:], y_test=y[n:], n_classes=2)


@AGGREGATORS.register("uniform_mean_plugin")
class UniformMean:
    """Plain mean of the uploaded models, ignoring sample counts."""

    def aggregate(self, uploads: Uploads) -> torch.Tensor:
        return uploads.client_params.mean(dim=0)


@dataclass(frozen=True)
class BlobOptions:
    """Keys of ``[data.shifted_blobs_plugin]``."""

    shift: float = 2.0


@DATASETS.register("shifted_blobs_plugin", options=BlobOptions)
def shifted_blobs(cfg, n_clients, seed):
    """Two Gaussian blobs at +-shift on every axis."""
    shift = cfg.options().shift
    r = np.random.default_rng(seed)
    n = n_clients * cfg.n_samples_per_client
    y = np.arange(n + cfg.n_test) % 2
    x = r.standard_normal((len(y), 3)) + np.where(y[:, None] == 1, shift, -shift)
    return FederatedData(**shard(x[:n], y[:n], cfg, n_clients, seed), x_test=x[n:], y_test=y[n:], n_classes=2)
