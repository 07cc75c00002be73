"""Small models as flat parameter vectors.

A :class:`FlatModel` wraps an ``nn.Module`` whose parameters live in one flat vector per
client (weight row-major, then bias, in ``named_parameters`` order), so all clients of a
process are one ``[n_local, d]`` tensor evaluated with ``torch.func``.

Example
-------
>>> import torch
>>> from p2pforget.config import ModelConfig
>>> fm = FlatModel(build(ModelConfig(kind="logistic"), input_shape=(4,), n_classes=3))
>>> fm.dim
15
>>> fm.forward(torch.zeros(15), torch.ones(2, 4)).shape
torch.Size([2, 3])
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..config import ModelConfig


class Logistic(nn.Module):
    """Multinomial logistic regression: one ``nn.Linear(n_features, n_classes)`` on flattened input."""

    def __init__(self, *, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _logistic(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return Logistic(n_features=math.prod(input_shape), n_classes=n_classes)


def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), cfg.hidden), nn.ReLU(),
                         nn.Linear(cfg.hidden, n_classes))


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        side = math.isqrt(math.prod(input_shape))
        if side * side != math.prod(input_shape):
            raise ValueError(f"model.kind = 'cnn' needs image input (C, H, W) or a square number of features; got {input_shape}")
        input_shape = (1, side, side)
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Unflatten(1, (c, h, w)),
        nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_classes),
    )


REGISTRY: dict[str, Callable[[ModelConfig, tuple[int, ...], int], nn.Module]] = {
    "logistic": _logistic,
    "mlp": _mlp,
    "cnn": _cnn,
}


def build(cfg: ModelConfig, *, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build the ``nn.Module`` named by ``cfg.kind``."""
    if cfg.kind not in REGISTRY:
        raise ValueError(f"unknown model.kind {cfg.kind!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[cfg.kind](cfg, tuple(input_shape), n_classes)


class FlatModel:
    """Evaluate a module at a flat parameter vector (works under ``torch.func.vmap``)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(flat), (x,))

    def init_vector(self, generator_seed: int, dtype: torch.dtype) -> torch.Tensor:
        """Flat parameters from the modules' own ``reset_parameters`` under a fixed seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            for m in self.module.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).to(dtype)
