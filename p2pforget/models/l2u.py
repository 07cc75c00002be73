"""FOUL's learning-to-unlearn (L2U) model: a shallow extractor E, a causal encoder K, a non-causal
encoder V, a decoder D and a classifier C, trained with the losses of

    Nguyen et al., "Computation and Communication Efficient Federated Unlearning via On-server
    Gradient Conflict Mitigation and Expression" (FOUL), CVPR 2026, arXiv 2603.13795.

``L_L2U = alpha_V L_V + alpha_K L_K + alpha_gtc L_gtc + L_rec`` with, on a batch (masked samples
only; ``z_K``, ``z_V`` the encoder outputs average-pooled to 2 x 2 and flattened):

- ``L_V = 1/|C| sum_c max(0, 1 - sqrt(Var(z_V^c) + eps))``: hinge on the within-class variance of the
  non-causal features (``Var`` = per-dimension variance over the class's samples, averaged over
  dimensions; classes with at least two samples in the batch);
- ``L_K``: prototype loss on the causal features, ``-log softmax_c(-||z_K - p_c||^2)[y]`` with ``p_c``
  the batch mean of class c (classes present in the batch);
- ``L_gtc``: cross-entropy of the classifier's logits;
- ``L_rec``: mean squared reconstruction error of ``D(z_K, z_V)`` plus ``KL(N(mu, I) || N(0, I)) =
  mean(mu^2) / 2`` with ``mu = (z_K, z_V)``.

Two readings are ours (the paper's text and the official code do not settle them, see
docs/methods/foul.md): the KL is on the pooled codes with unit variance, and the classifier reads
both feature sets ``(z_K, z_V)``. In the released code the classifier reads ``z_K`` only; then no
change of theta_V could move any prediction, and unlearning that updates only theta_V (the paper's
claim) could not change FA, RA, TA or MIA.

Example
-------
>>> import torch
>>> from p2pforget.config import ModelConfig
>>> m = L2U(input_shape=(1, 8, 8), n_classes=10, width=4, alphas=(1.0, 1.0, 1.0))
>>> m(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> sorted(m.loss_terms({"x": torch.zeros(3, 1, 8, 8), "y": torch.tensor([0, 0, 1]), "mask": torch.ones(3)}))
['K', 'V', 'gtc', 'rec']
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, bounded
from ..registry import MODELS

VARIANCE_EPS = 1e-4
POOL = 2  # codes keep a POOL x POOL spatial layout: a global average would discard where a shape's parts are
MASKED_LOGIT = -1e4  # stands in for -inf on classes absent from a batch (keeps vmap gradients finite)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return tuple(input_shape)
    side = math.isqrt(math.prod(input_shape))
    if side * side != math.prod(input_shape):
        raise ValueError(f"model.kind = 'l2u' needs image input (C, H, W) or a square number of features; got {input_shape}")
    return (1, side, side)


def _encoder(width: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: no running statistics, so the model stays a pure function of its
    # parameters (vmap over clients, bit-identical rank invariance) and trains with plain SGD.
    return nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(2, 2 * width), nn.ReLU(),
                         nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(2, 2 * width), nn.ReLU())


class L2U(nn.Module):
    """theta = {E: ``extractor``, K: ``causal``, V: ``noncausal``, D: ``decoder``, C: ``classifier``}."""

    subnetworks = {"E": "extractor", "K": "causal", "V": "noncausal", "D": "decoder", "C": "classifier"}

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, width: int, alphas: tuple[float, float, float]) -> None:
        super().__init__()
        self.image_shape = _image_shape(input_shape)
        c, h, w = self.image_shape
        self.n_classes = n_classes
        stride = 2 if min(h, w) >= 16 else 1
        self.extractor = nn.Sequential(nn.Conv2d(c, width, 3, stride=stride, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.causal = _encoder(width)
        self.noncausal = _encoder(width)
        self.decoder = nn.ModuleDict({"mix": nn.Conv2d(4 * width, width, 3, padding=1), "out": nn.Conv2d(width, c, 3, padding=1)})
        self.classifier = nn.Linear(4 * width * POOL * POOL, n_classes)
        alpha_v, alpha_k, alpha_gtc = alphas
        self.loss_weights = {"V": alpha_v, "K": alpha_k, "gtc": alpha_gtc, "rec": 1.0}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal and non-causal feature maps ``[m, 2w, h', w']``."""
        e = self.extractor(x.reshape(x.shape[0], *self.image_shape))
        return self.causal(e), self.noncausal(e)

    @staticmethod
    def code(feature_map: torch.Tensor) -> torch.Tensor:
        """The pooled code ``[m, k]`` of a feature map."""
        return F.adaptive_avg_pool2d(feature_map, POOL).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zk, zv = self.encode(x)
        return self.classifier(torch.cat([self.code(zk), self.code(zv)], dim=1))

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y, mask = batch["x"], batch["y"], batch["mask"]
        x = x.reshape(x.shape[0], *self.image_shape)
        zk_map, zv_map = self.encode(x)
        zk, zv = self.code(zk_map), self.code(zv_map)
        logits = self.classifier(torch.cat([zk, zv], dim=1))
        weight = mask / mask.sum().clamp(min=1)
        classes = torch.arange(self.n_classes, device=y.device)
        onehot = (y[:, None] == classes).to(x.dtype) * mask[:, None]        # [m, C] (one_hot is not vmappable)
        count = onehot.sum(dim=0)                                          # [C]

        # L_V: within-class variance hinge of the non-causal features.
        mean_v = (onehot.T @ zv) / count.clamp(min=1)[:, None]             # [C, k]
        var_v = (onehot.T @ (zv * zv)) / count.clamp(min=1)[:, None] - mean_v * mean_v
        var_c = var_v.clamp(min=0).mean(dim=1)                             # [C]
        counted = (count >= 2).to(x.dtype)
        hinge = torch.relu(1.0 - torch.sqrt(var_c + VARIANCE_EPS))
        loss_v = (counted * hinge).sum() / counted.sum().clamp(min=1)

        # L_K: prototype loss of the causal features.
        protos = (onehot.T @ zk) / count.clamp(min=1)[:, None]            # [C, k]
        dist = ((zk[:, None, :] - protos[None]) ** 2).sum(dim=-1)          # [m, C]
        proto_logits = -dist + MASKED_LOGIT * (count == 0).to(x.dtype)[None]
        loss_k = (weight * F.cross_entropy(proto_logits, y, reduction="none")).sum()

        loss_gtc = (weight * F.cross_entropy(logits, y, reduction="none")).sum()

        d = self.decoder
        h = F.relu(d["mix"](torch.cat([zk_map, zv_map], dim=1)))
        recon = d["out"](F.interpolate(h, size=self.image_shape[1:], mode="bilinear", align_corners=False))
        mse = ((recon - x) ** 2).flatten(1).mean(dim=1)
        mu = torch.cat([zk, zv], dim=1)
        kl = 0.5 * (mu * mu).mean(dim=1)
        loss_rec = (weight * (mse + kl)).sum()
        return {"V": loss_v, "K": loss_k, "gtc": loss_gtc, "rec": loss_rec}


@dataclass(frozen=True)
class L2UOptions:
    """Keys of ``[model.l2u]``: the width (channels = ``hidden // 4``) and the weights of the
    losses L_V, L_K and L_gtc."""

    hidden: int = bounded(32, 1)
    alpha_v: float = bounded(1.0, 0.0)
    alpha_k: float = bounded(1.0, 0.0)
    alpha_gtc: float = bounded(1.0, 0.0)


@MODELS.register("l2u", options=L2UOptions,
                 help="FOUL's L2U model: extractor, causal/non-causal encoders, decoder, classifier")
def _l2u(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    o = cfg.options("l2u")
    return L2U(input_shape=input_shape, n_classes=n_classes, width=max(2, o.hidden // 4),
               alphas=(o.alpha_v, o.alpha_k, o.alpha_gtc))
