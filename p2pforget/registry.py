"""Registries: one decorator pattern for every extension point.

Datasets, models, round algorithms, aggregators and unlearning methods each live in one
:class:`Registry`. Built-in entries register themselves when :mod:`p2pforget` is imported; a
user module listed in ``run.plugins`` registers more the same way, before the config is checked.
The config's allowed values and the CLI's help text are read from here, never listed twice.

Example
-------
>>> from p2pforget.registry import MODELS
>>> @MODELS.register("tiny_doc_example", help="a one-layer example")
... def tiny(cfg, input_shape, n_classes):
...     import torch
...     return torch.nn.Linear(input_shape[0], n_classes)
>>> "tiny_doc_example" in MODELS.names()
True
>>> MODELS.unregister("tiny_doc_example")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


class RegistryError(ValueError):
    """A name that no registry entry has."""


@dataclass(frozen=True)
class Entry:
    """One registered object and what the registry knows of it."""

    name: str
    obj: Any
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Named objects of one kind; ``key`` is the config key that chooses among them."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, help: str = "", **meta: Any) -> Callable[[Any], Any]:
        """Decorator: register a function or class under ``name`` (a later registration replaces it)."""
        def deco(obj: Any) -> Any:
            text = help or (obj.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name=name, obj=obj, help=text, meta=meta)
            return obj
        return deco

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def builtin_names(self) -> tuple[str, ...]:
        """The entries p2pforget itself registers (no plug-ins)."""
        return tuple(n for n, e in self._entries.items() if (getattr(e.obj, "__module__", None) or "").startswith("p2pforget."))

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise RegistryError(f"unknown {self.key} {name!r}; choose one of: {', '.join(self._entries)} "
                                "(or register your own and list its module in run.plugins)")
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a clear error listing the choices otherwise."""
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def help(self) -> str:
        """One line per entry: name and first docstring line (for CLI help)."""
        return "\n".join(f"  {e.name:18s} {e.help}" for e in self._entries.values())


DATASETS = Registry("dataset", "data.kind")
MODELS = Registry("model", "model.kind")
ROUNDS = Registry("round algorithm", "train.algorithm")
AGGREGATORS = Registry("aggregator", "train.aggregator")
METHODS = Registry("unlearning method", "unlearn.method")
OPTIMIZERS = Registry("local optimizer", "train.optimizer")
PARTITIONS = Registry("partition", "data.partition")
TOPOLOGIES = Registry("topology", "topology.kind")
MIXINGS = Registry("mixing rule", "topology.mixing")
POISONS = Registry("poisoning attack", "data.poison.kind")
HOOKS = Registry("engine hook", "a checkpoint's hooks/<name>")
"""Engine hooks (:class:`p2pforget.hooks.Hook`) by name, to restore them from a checkpoint."""

ALL = {"data": DATASETS, "model": MODELS, "round": ROUNDS, "aggregator": AGGREGATORS, "method": METHODS,
       "optimizer": OPTIMIZERS, "partition": PARTITIONS, "topology": TOPOLOGIES,
       "mixing": MIXINGS, "poison": POISONS}
