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

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..config import ModelConfig, bounded, choice
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
    """Keys of ``[model.mlp]``: the width of the hidden layer."""

    hidden: int = bounded(32, 1)


@MODELS.register("mlp", options=HiddenOptions, help="one hidden layer of model.mlp.hidden ReLU units")
def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    hidden = cfg.options("mlp").hidden
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


@dataclass(frozen=True)
class CNNOptions:
    """Keys of ``[model.cnn]``: the width of the hidden layer, and ``norm = "batch"`` for a
    BatchNorm layer after each convolution (running statistics per client)."""

    hidden: int = bounded(32, 1)
    norm: str = choice("none", "none", "batch")


class HeConv2d(nn.Conv2d):
    """A convolution followed by a ReLU, initialized for it (He et al., ICCV 2015: normal weights
    with variance 2 / fan-in, zero bias). PyTorch's default draws weights a third as large in
    variance, and with it the CNN stayed at chance on MNIST-format digits under SGD at lr 0.1
    (docs/guide/models.md)."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        nn.init.zeros_(self.bias)


class HeLinear(nn.Linear):
    """A linear layer followed by a ReLU, initialized for it (see :class:`HeConv2d`)."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        nn.init.zeros_(self.bias)


@MODELS.register("cnn", options=CNNOptions, help="two conv layers and a model.cnn.hidden MLP head, for (C, H, W) images")
def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Two 3x3 convolutions (8 and 16 channels, He-initialized), max-pooled then averaged to 4 x 4
    whatever the image size, and a ``hidden``-wide ReLU head."""
    if len(input_shape) != 3:
        side = math.isqrt(math.prod(input_shape))
        if side * side != math.prod(input_shape):
            raise ValueError(f"model.kind = 'cnn' needs image input (C, H, W) or a square number of features; got {input_shape}")
        input_shape = (1, side, side)
    c, h, w = input_shape
    o = cfg.options("cnn")
    norm = (lambda width: [nn.BatchNorm2d(width)]) if o.norm == "batch" else (lambda width: [])  # noqa: E731
    return nn.Sequential(
        nn.Flatten(), nn.Unflatten(1, (c, h, w)),
        HeConv2d(c, 8, 3, padding=1), *norm(8), nn.ReLU(), nn.MaxPool2d(2),
        HeConv2d(8, 16, 3, padding=1), *norm(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), HeLinear(16 * 16, o.hidden), nn.ReLU(), nn.Linear(o.hidden, n_classes),
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


BUFFER_RULES = ("average", "local")
"""What happens to a model's running statistics when nodes communicate: ``average`` (the
default; mixed like the parameters on a gossip graph, FedAvg-averaged on a star, as averaging a
whole ``state_dict`` does) or ``local`` (each client keeps its own, as in FedBN: Li et al., ICLR
2021). A model chooses with a ``buffer_rule`` attribute on its module."""


def _running_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


class FlatModel:
    """Evaluate a module at a flat parameter vector (works under ``torch.func.vmap``).

    Running statistics (BatchNorm, InstanceNorm with ``track_running_stats``) are per-client
    state too, flattened into a second vector of :attr:`buffer_dim` entries (in
    ``named_buffers`` order). A vector of ``dim`` entries is evaluated with the batch's own
    statistics (as ``module.train()`` computes them, without updating any); a vector of
    ``dim + buffer_dim`` entries, parameters then statistics, with those statistics (as
    ``module.eval()``). :meth:`updated_buffers` is one training forward's update of them.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        # Only trainable parameters are flattened; frozen ones (a fine-tuned backbone) stay in the
        # module, shared by every client.
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)
        self.norms = _running_norms(module)
        owners = {id(m) for m in self.norms}
        stateful = [(f"{name}.{b}" if name else b, t) for name, m in module.named_modules() if id(m) in owners
                    for b, t in m.named_buffers(recurse=False) if t is not None]
        self.buffer_names = [n for n, _ in stateful]
        self.buffer_shapes = [t.shape for _, t in stateful]
        self.buffer_sizes = [t.numel() for _, t in stateful]
        self.buffer_dtypes = [t.dtype for _, t in stateful]
        self.buffer_dim = sum(self.buffer_sizes)
        self.buffer_rule = getattr(module, "buffer_rule", "average")
        if self.buffer_rule not in BUFFER_RULES:
            raise ValueError(f"the model's buffer_rule = {self.buffer_rule!r} is not one of {', '.join(BUFFER_RULES)}")

    def init_buffers(self, dtype: torch.dtype) -> torch.Tensor:
        """The module's running statistics as one flat vector (``[0]`` for a model without any)."""
        named = dict(self.module.named_buffers())
        return torch.cat([named[n].detach().reshape(-1).to("cpu", dtype) for n in self.buffer_names] +
                         [torch.zeros(0, dtype=dtype)])

    def unflatten_buffers(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named statistics of a flat statistics vector: in its dtype, a step counter as an integer."""
        return {n: t.reshape(s).to(t.dtype if dt.is_floating_point else dt) for n, t, s, dt in
                zip(self.buffer_names, torch.split(flat, self.buffer_sizes), self.buffer_shapes, self.buffer_dtypes)}

    @contextlib.contextmanager
    def _statistics(self, *, running: bool, update: bool = False):
        """Norm layers set to read running statistics (``running``), or to use the batch's and,
        with ``update``, update the running ones; put back as they were afterwards."""
        saved = [(m.training, m.track_running_stats) for m in self.norms]
        for m in self.norms:
            m.training = not running
            m.track_running_stats = running or update
        try:
            yield
        finally:
            for m, (training, track) in zip(self.norms, saved):
                m.training, m.track_running_stats = training, track

    def updated_buffers(self, flat: torch.Tensor, buffers: torch.Tensor, *inputs, **kwargs) -> torch.Tensor:
        """The running statistics after one training forward of ``inputs`` at parameters ``flat``
        from statistics ``buffers`` (the update ``module.train()`` makes; nothing else changes)."""
        state = {k: v.clone() for k, v in self.unflatten_buffers(buffers).items()}
        with torch.no_grad(), self._statistics(running=False, update=True):
            functional_call(self.module, self.unflatten(flat) | state, inputs, kwargs)
        return torch.cat([state[n].reshape(-1).to(buffers.dtype) for n in self.buffer_names])

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
        """The module's ``forward(*inputs, **kwargs)`` at parameters ``flat`` (followed by running
        statistics, for a model that keeps them: see the class)."""
        if not self.buffer_dim:
            return functional_call(self.module, self.unflatten(flat), inputs, kwargs)
        if flat.shape[-1] == self.dim + self.buffer_dim:
            named = self.unflatten(flat[..., :self.dim]) | self.unflatten_buffers(flat[..., self.dim:])
            with self._statistics(running=True):
                return functional_call(self.module, named, inputs, kwargs)
        with self._statistics(running=False):
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


from . import clip, l2u, resnet  # noqa: E402,F401  (register the CLIP, FOUL and ResNet models)
