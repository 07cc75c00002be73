"""p2pforget: simulate decentralized (gossip) federated learning and unlearning.

>>> import p2pforget
>>> cfg = p2pforget.config.from_dict({"topology": {"kind": "ring", "n_clients": 4}})
>>> engine = p2pforget.Engine(config=cfg)
"""
from . import (aggregate, config, data, experiment, ledger, metrics, models, partition, poison, registry, rounds, seeding,
               tasks, topology, unlearn)
from .compare import study
from .config import Config
from .engine import Engine
from .unlearn import forget

__version__ = "0.1.0"
__all__ = ["Config", "Engine", "study", "aggregate", "config", "data", "experiment", "forget", "ledger", "metrics", "models",
           "partition", "poison", "registry", "rounds", "seeding", "tasks", "topology", "unlearn", "__version__"]
