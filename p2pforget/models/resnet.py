"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) from
torchvision, for small images: a 3x3 stride-1 stem without max-pooling, as the paper's CIFAR-10
networks (section 4.2) start, so 8x8 to 32x32 inputs keep a spatial extent through the four stages.

``[model.resnet18] norm = "batch"`` keeps BatchNorm's running statistics, per client (see
:class:`~p2pforget.models.FlatModel`); ``buffers`` says whether nodes average them when they
communicate or keep their own (FedBN); ``norm = "group"`` uses GroupNorm, which keeps none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..config import ModelConfig, bounded, choice
from ..registry import MODELS


@dataclass(frozen=True)
class ResNetOptions:
    """Keys of ``[model.resnet18]``."""

    norm: str = choice("batch", "batch", "group")
    groups: int = bounded(32, 1)
    buffers: str = choice("average", "average", "local")


class SmallImageResNet(nn.Module):
    """A torchvision ResNet-18 whose input is reshaped to ``(C, H, W)`` first."""

    def __init__(self, *, input_shape: tuple[int, int, int], n_classes: int, norm: str, groups: int, buffers: str) -> None:
        from torchvision.models import resnet18

        super().__init__()
        c, _, _ = input_shape
        self.input_shape = input_shape
        layer = nn.BatchNorm2d if norm == "batch" else partial(nn.GroupNorm, groups)
        self.net = resnet18(num_classes=n_classes, norm_layer=layer)
        self.net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()
        self.buffer_rule = buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], *self.input_shape))


@MODELS.register("resnet18", options=ResNetOptions,
                 help="torchvision ResNet-18 for small images (BatchNorm per client, or GroupNorm)")
def _resnet18(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        side = math.isqrt(math.prod(input_shape))
        if side * side != math.prod(input_shape):
            raise ValueError(f"model.kind = 'resnet18' needs image input (C, H, W) or a square number of features; "
                             f"got {input_shape}")
        input_shape = (1, side, side)
    o = cfg.options("resnet18")
    if o.norm == "group" and 64 % o.groups:
        raise ValueError(f"model.resnet18.groups = {o.groups} must divide every stage's width (64, 128, 256, 512)")
    return SmallImageResNet(input_shape=tuple(input_shape), n_classes=n_classes, norm=o.norm, groups=o.groups,
                            buffers=o.buffers)
