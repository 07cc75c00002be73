"""SalUn: random-label fine-tuning restricted to the weights salient for the forgotten data.

Fan, Liu, Zhang, Wei, Wong, Liu, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation" (ICLR 2024). The saliency mask keeps the
weights whose forget-loss gradient at the trained model is largest in magnitude,
``m = 1[|grad l_f(theta_o)| >= gamma]`` with ``gamma`` the ``(1 - fraction)`` quantile (the paper's
default keeps half the weights); only those weights change, by random-label fine-tuning
(:mod:`.random_label`).

Federated form: each node holding forgotten samples computes its own mask from the gradient of
the cross-entropy of its forgotten samples at its own model (no communication). Then, as in
:mod:`.random_label`, ``rounds`` rounds of local steps on the retained data plus random-label steps
on the forgotten data, averaged at the hub or gossiped; a holder's whole change in a round (both
kinds of steps) is masked, the other nodes train as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.func import grad

from ..config import bounded
from ..registry import METHODS
from . import ForgetRequest, Outcome, require_classifier
from .random_label import RandomLabelOptions, relabel_rounds

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class SalUnOptions(RandomLabelOptions):
    """Keys of ``[unlearn.salun]``: random-label's, and the share of weights it may change;
    ``lr = 0`` uses ``train.lr``."""

    fraction: float = bounded(0.5, 0.0, 1.0)  # share of the weights kept trainable


def saliency_top(g: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of each row's ``fraction`` largest ``|g|`` entries (ties at the threshold kept).

    >>> saliency_top(torch.tensor([[0.1, -3.0, 2.0, 0.5]]), 0.5).tolist()
    [[False, True, True, False]]
    """
    keep = max(1, round(fraction * g.shape[-1]))
    gamma = torch.topk(g.abs(), keep, dim=-1).values[..., -1:]
    return g.abs() >= gamma


@METHODS.register("salun", options=SalUnOptions,
                  help="SalUn (ICLR 2024): random-label fine-tuning of the forget-salient weights only")
class SalUn:
    """SalUn in rounds (see the module docstring)."""

    def check(self, engine: "Engine", request: ForgetRequest, options: SalUnOptions) -> None:
        require_classifier(engine, "salun")

    def unlearn(self, engine: "Engine", request: ForgetRequest, options: SalUnOptions) -> Outcome:
        def saliency(plain: dict[str, torch.Tensor]) -> torch.Tensor:
            holders = plain["mask"].sum(dim=1) > 0
            g = engine.compute.per_client(grad(engine.task.data_loss), engine.params, plain)
            # Rows without forgotten data keep every weight: they simply train.
            return torch.where(holders[:, None], saliency_top(g, options.fraction), True).to(engine.dtype)

        return relabel_rounds(engine, request, options, key=50_000_000, mask=saliency)
