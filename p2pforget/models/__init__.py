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
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..config import ModelConfig, bounded
from ..registry import MODELS


class Logistic(nn.Module):
    """Multinomial logistic regression: one ``nn.Linear(n_features, n_classes)`` on flattened input."""

    def __init__(self, *, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@MODELS.register("logistic", help="multinomial logistic regression (convex; certified unlearning applies)")
def _logistic(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return Logistic(n_features=math.prod(input_shape), n_classes=n_classes)


@dataclass(frozen=True)
class HiddenOptions:
    """Keys of ``[model.mlp]`` and ``[model.cnn]``: the width of the hidden layer."""

    hidden: int = bounded(32, 1)


@MODELS.register("mlp", options=HiddenOptions, help="one hidden layer of model.mlp.hidden ReLU units")
def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    hidden = cfg.options("mlp").hidden
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


@MODELS.register("cnn", options=HiddenOptions, help="two conv layers and a model.cnn.hidden MLP head, for (C, H, W) images")
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
        nn.Flatten(), nn.Linear(64, cfg.options("cnn").hidden), nn.ReLU(), nn.Linear(cfg.options("cnn").hidden, n_classes),
    )


def build(cfg: ModelConfig, *, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build the ``nn.Module`` registered as ``cfg.kind`` (builders take ``(cfg, input_shape, n_classes)``)."""
    return MODELS.get(cfg.kind)(cfg, tuple(input_shape), n_classes)


class _Method(nn.Module):
    """Calls one method of a module, so ``functional_call`` can evaluate it at given parameters."""

    def __init__(self, inner: nn.Module, method: str) -> None:
        super().__init__()
        self.inner = inner
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.inner, self.method)(*args, **kwargs)


class FlatModel:
    """Evaluate a module at a flat parameter vector (works under ``torch.func.vmap``)."""

    def __init__(self, module: nn.Module) -> None:
        running = [name or type(m).__name__ for name, m in module.named_modules()
                   if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
        if running:
            # Buffers are not per-client state (yet): every client would read and update one shared
            # set of running statistics in place, and they would never be gossiped or checkpointed.
            raise ValueError(f"the model's layer(s) {', '.join(running[:3])} keep running statistics (BatchNorm/InstanceNorm "
                             f"with track_running_stats=True), which all clients would share and overwrite; use "
                             f"nn.GroupNorm or nn.LayerNorm, or set track_running_stats=False")
        self.module = module
        # Only trainable parameters are flattened; frozen ones (a fine-tuned backbone) stay in the
        # module, shared by every client.
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)

    def unflatten(self, flat: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named parameter tensors (views) of a flat vector; a dict is returned as it is."""
        if isinstance(flat, dict):
            return flat
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}

    def compose(self, frozen: torch.Tensor, trainable: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named parameters taking the entries where ``mask`` is set from ``trainable`` (``[mask.sum()]``) and
        the rest from ``frozen`` (``[d]``). Differentiating through the result w.r.t. ``trainable`` then
        back-propagates only into the layers that use trainable parameters. ``mask`` must cover whole
        parameter tensors (as :meth:`mask` gives)."""
        out, start = {}, 0
        flags = torch.split(mask, self.sizes)
        for name, f, t, shape in zip(self.names, flags, torch.split(frozen, self.sizes), self.shapes):
            if bool(f.all()):
                out[name] = trainable[start:start + t.numel()].view(shape)
                start += t.numel()
            elif not bool(f.any()):
                out[name] = t.view(shape)
            else:
                raise ValueError(f"a trainable mask must cover whole parameter tensors; {name} is split")
        return out

    def forward(self, flat: torch.Tensor, *inputs, **kwargs) -> torch.Tensor:
        """The module's ``forward(*inputs, **kwargs)`` at parameters ``flat``."""
        return functional_call(self.module, self.unflatten(flat), inputs, kwargs)

    def call(self, flat: torch.Tensor, method: str, *args, **kwargs):
        """Any method of the module (e.g. ``loss_terms``) at parameters ``flat``."""
        params = {f"inner.{k}": v for k, v in self.unflatten(flat).items()}
        return functional_call(_Method(self.module, method), params, args, kwargs)

    def subnetworks(self) -> dict[str, str]:
        """Named sub-networks: the module's ``subnetworks`` dict (name -> parameter-name prefix), if any."""
        return dict(getattr(self.module, "subnetworks", {}))

    def mask(self, *names: str) -> torch.Tensor:
        """Boolean ``[d]``: the entries of the flat vector that belong to the named sub-networks
        (names from :meth:`subnetworks`, or parameter-name prefixes)."""
        subs = self.subnetworks()
        prefixes = [subs.get(n, n) for n in names]
        unknown = [n for n, p in zip(names, prefixes) if not any(k == p or k.startswith(p + ".") for k in self.names)]
        if unknown:
            raise ValueError(f"the model has no sub-network {unknown[0]!r}; it has: {', '.join(subs) or 'none named'}")
        parts = [torch.full((size,), any(name == p or name.startswith(p + ".") for p in prefixes))
                 for name, size in zip(self.names, self.sizes)]
        return torch.cat(parts)

    def init_vector(self, generator_seed: int, dtype: torch.dtype) -> torch.Tensor:
        """Flat parameters from the modules' own ``reset_parameters`` under a fixed seed, drawn on
        the CPU wherever the module lives (a GPU's generator draws other numbers from the same
        seed), so every device starts from the same model."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            for m in self.module.modules():
                if hasattr(m, "reset_parameters") and _trainable(m):
                    device = next(m.parameters()).device
                    m.to("cpu").reset_parameters()
                    m.to(device)
            return torch.cat([p.detach().reshape(-1) for p in self.module.parameters() if p.requires_grad]).to(dtype)


def _trainable(module: nn.Module) -> bool:
    """Whether re-initializing ``module`` touches only trainable parameters: those it owns directly
    are all trainable, or it owns none and everything below it is trainable (frozen weights, e.g.
    a pretrained backbone under adapters, are never reset)."""
    own = list(module.parameters(recurse=False))
    if own:
        return all(p.requires_grad for p in own)
    below = list(module.parameters())
    return bool(below) and all(p.requires_grad for p in below)


from . import clip, l2u  # noqa: E402,F401  (register the CLIP and FOUL models)
