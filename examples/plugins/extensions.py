"""One extension of each kind, loaded from a config with ``run.plugins`` (docs/guide/extending.md).

Each registers under a name with an options dataclass; its keys are read from the config's own
table for it (``[data.shifted_blobs]``, ``[model.tanh_mlp]``, ``[topology.circulant]``,
``[train.partial_mix]``, ``[unlearn.noisy_finetune]``) and checked like the built-ins' keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from torch import nn

from p2pforget.config import bounded
from p2pforget.data import FederatedData, shard
from p2pforget.registry import DATASETS, METHODS, MODELS, ROUNDS, TOPOLOGIES
from p2pforget.unlearn import Outcome, continue_training


# --- a dataset ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShiftedBlobsOptions:
    """Keys of ``[data.shifted_blobs]``: how far each class's blob sits from the origin."""

    shift: float = bounded(2.0, 0.0)


@DATASETS.register("shifted_blobs", options=ShiftedBlobsOptions, help="two Gaussian blobs at +-shift")
def shifted_blobs(cfg, n_clients: int, seed: int) -> FederatedData:
    """Class 1 around ``+shift`` on every axis, class 0 around ``-shift``; ``shard`` splits the
    training samples between clients by ``data.partition``."""
    shift = cfg.options().shift
    r = np.random.default_rng(seed)
    n = n_clients * cfg.n_samples_per_client
    y = np.arange(n + cfg.n_test) % 2
    x = r.standard_normal((len(y), 3)) + np.where(y[:, None] == 1, shift, -shift)
    return FederatedData(**shard(x[:n], y[:n], cfg, n_clients, seed), x_test=x[n:], y_test=y[n:], n_classes=2)


# --- a model -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TanhMLPOptions:
    """Keys of ``[model.tanh_mlp]``: the hidden width."""

    hidden: int = bounded(8, 1)


@MODELS.register("tanh_mlp", options=TanhMLPOptions, help="one hidden tanh layer")
def tanh_mlp(cfg, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    hidden = cfg.options().hidden
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.Tanh(), nn.Linear(hidden, n_classes))


# --- a topology --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CirculantOptions:
    """Keys of ``[topology.circulant]``: node i links to i +- each offset."""

    offsets: tuple[int, ...] = (1, 2)


@TOPOLOGIES.register("circulant", options=CirculantOptions, help="ring with extra chords at the given offsets")
def circulant(n: int, *, offsets: tuple[int, ...], **_) -> nx.Graph:
    return nx.circulant_graph(n, offsets)


# --- a round rule ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartialMixOptions:
    """Keys of ``[train.partial_mix]``: the share of its own model a node keeps when it mixes."""

    keep: float = bounded(0.5, 0.0, 1.0)


@ROUNDS.register("partial_mix", options=PartialMixOptions, help="DSGD that keeps a share of the own model")
def partial_mix(engine, W) -> int:
    """``x <- keep x' + (1 - keep) W x'`` with ``x'`` the models after the local steps; returns
    how many model vectors each message carried (one)."""
    keep = engine.config.train.options().keep
    stepped = engine.compute.local_steps(engine.params)
    engine.set_params(keep * stepped + (1 - keep) * engine.network.mix(stepped, W), copy=False, keep_optimizer_state=True)
    return 1


# --- an unlearning method ----------------------------------------------------------------------
@dataclass(frozen=True)
class NoisyFinetuneOptions:
    """Keys of ``[unlearn.noisy_finetune]``."""

    rounds: int = bounded(5, 1)
    sigma: float = bounded(0.01, 0.0)


@METHODS.register("noisy_finetune", options=NoisyFinetuneOptions,
                  help="perturb every staying model, then fine-tune without the forgotten data")
class NoisyFinetune:
    """Exclude the request, add N(0, sigma^2) to every model (one seeded draw for the whole
    federation, so the result is the same at any number of MPI ranks), train ``rounds`` rounds."""

    def unlearn(self, engine, request, options: NoisyFinetuneOptions) -> Outcome:
        engine.exclude(samples=request.samples, removed=request.removed)
        generator = torch.Generator().manual_seed(engine.seed)
        noise = torch.randn((engine.n_clients, engine.dim), generator=generator, dtype=torch.float64)
        engine.set_params(engine.params + options.sigma * noise[engine.lo:engine.hi].to(engine.params))
        start = engine.round
        sent = continue_training(engine, options.rounds, request)
        return Outcome.plain(engine.params.clone(), comm_bytes=sent, rounds=engine.round - start)
