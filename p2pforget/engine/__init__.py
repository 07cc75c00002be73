"""The round loop: local steps -> exchange -> mix -> metrics.

The :class:`Engine` class (``core``) is the kernel: its state, membership and the round. Three
parts, each a class in its own module, do the rest, reached as ``engine.batches`` (the clients'
data as batches), ``engine.compute`` (objectives, gradients, local steps, running statistics) and
``engine.network`` (mixing matrices, mixing, network sums and means, gathering, bytes); the
influence ledger is a :class:`~p2pforget.ledger.Ledger`. ``evaluation`` (per-round metrics) and
``checkpoint`` (state, restore, fork) are functions behind the engine's methods of those names.
What an unlearning method leaves installed acts through hooks (:mod:`p2pforget.hooks`); the
engine names no method.

The engine holds this process's clients as one stacked ``[n_local, d]`` parameter tensor and
evaluates all of them at once with ``torch.func.vmap``. It knows nothing of MPI or files: a
:class:`~p2pforget.transport.Transport` moves rows between processes, and
:mod:`p2pforget.experiment` writes run files.

Example
-------
>>> from p2pforget import config
>>> cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 4}, "data": {"n_samples_per_client": 10}})
>>> engine = Engine(config=cfg)
>>> engine.train(2, progress=False)
>>> engine.metrics["round"], len(engine.metrics["test_acc_mean"])
([1, 2], 2)
"""
from .core import EVAL_METRICS, METRICS, PER_NODE, Engine
from .evaluation import DivergenceError, consensus_distance

__all__ = ["EVAL_METRICS", "METRICS", "PER_NODE", "DivergenceError", "Engine", "consensus_distance"]
