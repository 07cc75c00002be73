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

from . import api


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

    def __init__(self, kind: str, key: str, *, interface: type | None = None, classes: bool = False) -> None:
        self.kind = kind
        self.key = key
        self.interface = interface  # the extension point's class in p2pforget.api
        self.classes = classes  # entries are classes implementing the interface (else any callable)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, help: str = "", **meta: Any) -> Callable[[Any], Any]:
        """Decorator: register a function or class under ``name`` (a later registration replaces
        it), checked against the extension point's interface first."""
        def deco(obj: Any) -> Any:
            self._check(name, obj)
            text = help or (obj.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name=name, obj=obj, help=text, meta=meta)
            return obj
        return deco

    def _check(self, name: str, obj: Any) -> None:
        if self.interface is None:
            return
        point = f"p2pforget.api.{self.interface.__name__}"
        if self.classes:
            if not isinstance(obj, type):
                raise TypeError(f"{self.kind} {name!r}: register a class implementing {point}, not {obj!r}")
            missing = [m for m in self.interface.__abstractmethods__ if not callable(getattr(obj, m, None))]
            if missing:
                raise TypeError(f"{self.kind} {name!r} ({obj.__name__}) lacks {', '.join(missing)}(); "
                                f"see {point}")
        elif not callable(obj):
            raise TypeError(f"{self.kind} {name!r}: register a function (or callable) as {point} describes, not {obj!r}")

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


DATASETS = Registry("dataset", "data.kind", interface=api.Dataset)
MODELS = Registry("model", "model.kind", interface=api.Model)
ROUNDS = Registry("round algorithm", "train.algorithm", interface=api.RoundRule)
AGGREGATORS = Registry("aggregator", "train.aggregator", interface=api.Aggregator, classes=True)
METHODS = Registry("unlearning method", "unlearn.method", interface=api.Unlearner, classes=True)
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
