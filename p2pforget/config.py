"""Experiment configuration: frozen dataclasses read from TOML, with ``--set a.b=c`` overrides.

Every field carries its own check (choices or range) in ``metadata``; an unknown key or a bad
value raises :class:`ConfigError` naming the key and what is allowed.

Example
-------
>>> cfg = from_dict({"topology": {"kind": "torus", "n_clients": 9}})
>>> cfg = with_overrides(cfg, ["run.rounds=5"])
>>> cfg.run.rounds, cfg.topology.kind
(5, 'torus')
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import sys
import tomllib
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import registry


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a bad value."""


def choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Any:
    """A number in ``[lo, hi]`` (``lo_open`` / ``hi_open``: that end excluded); floats must also be
    finite (NaN and inf are never a valid setting)."""
    return field(default=default, metadata={"range": (lo, hi), "open": (lo_open, hi_open)})


def registered(default: str, which: str) -> Any:
    """A name chosen from one of :mod:`p2pforget.registry`'s registries (built-ins and plug-ins)."""
    return field(default=default, metadata={"registry": which})


def kind_tables(which: str) -> Any:
    """A section's per-kind option tables: every entry of registry ``which`` that registers
    ``options=`` (a dataclass with fields) gets its table ``[<section>.<name>]``, defaults where
    the config gives none."""
    return field(default_factory=dict, metadata={"sub_tables": which})


class KindOptions:
    """Mixin of a section with per-kind tables (its ``tables`` field): :meth:`options` gives the
    chosen kind's options; every registered kind's table is present, so two configs that mean the
    same compare equal."""

    KIND_FIELD = "kind"

    def __post_init__(self) -> None:
        which = next(f.metadata["sub_tables"] for f in dataclasses.fields(self) if f.metadata.get("sub_tables"))
        missing = {m: opts() for m, opts in registered_options(which).items() if m not in self.tables}
        if missing:
            object.__setattr__(self, "tables", dict(self.tables) | missing)

    def options(self, kind: str | None = None) -> Any:
        """The options of ``kind`` (default: the chosen one); defaults where the config gave none,
        ``None`` for a kind that registers no options."""
        name = kind or getattr(self, self.KIND_FIELD)
        if name in self.tables:
            return self.tables[name]
        which = next(f.metadata["sub_tables"] for f in dataclasses.fields(self) if f.metadata.get("sub_tables"))
        cls = registry.ALL[which].entry(name).meta.get("options")
        return cls() if cls is not None else None


@dataclass(frozen=True)
class RunConfig:
    seed: int = bounded(0, 0)
    rounds: int = bounded(20, 0)
    out: str = "runs/default"
    checkpoint_every: int = bounded(0, 0)
    eval_every: int = bounded(1, 0)
    vmap_width: int = bounded(1024, 1)
    device: str = choice("cpu", "cpu", "cuda", "auto")
    transport: str = choice("auto", "auto", "local", "mpi")
    plugins: tuple[str, ...] = ()
    keep_private: bool = True


@dataclass(frozen=True)
class TopologyConfig(KindOptions):
    """The gossip graph: ``kind`` from the topology registry, its own keys in ``[topology.<kind>]``
    (``erdos_renyi.p``, ``small_world.k`` and ``beta``, ``random_regular.degree``); ``path`` (the
    graph file of ``kind = "file"``) stays here with the other file paths a stored run can relocate."""

    kind: str = registered("ring", "topology")
    n_clients: int = bounded(8, 2)
    path: str = ""
    mixing: str = registered("metropolis", "mixing")
    mixing_path: str = ""
    dropout: float = bounded(0.0, 0.0, 0.99)
    lazy: bool = False
    tables: dict[str, Any] = kind_tables("topology")


def table(cls: type) -> Any:
    """A nested table of its own keys, e.g. ``[data.poison]`` (a frozen dataclass, defaults where
    the config gives none)."""
    return field(default_factory=cls, metadata={"table": True})


@dataclass(frozen=True)
class PoisonConfig:
    """Malicious clients (``[data.poison]``, see :mod:`p2pforget.poison`): ``kind`` is the attack
    (``none``, ``patch``, ``feature``, ``label_flip``), ``clients`` the clients that carry it, ``fraction``
    of each one's training samples (a seeded choice) gets the trigger and the ``target`` label.
    ``size``: the patch's side in pixels, or the number of trigger features; ``value``: what the
    trigger writes (0 = the largest input value of the public test split)."""

    kind: str = registered("none", "poison")
    clients: tuple[int, ...] = ()
    fraction: float = bounded(0.5, 0.0, 1.0, lo_open=True)
    target: int = bounded(0, 0)
    size: int = bounded(3, 1)
    value: float = 0.0


@dataclass(frozen=True)
class DataConfig(KindOptions):
    """The federated dataset: ``kind`` from the dataset registry (a dataset registered with
    ``options=`` reads its own keys from ``[data.<kind>]``); how many samples each client holds and
    how they are split (``partition`` and its keys); a kind's shape keys in its table (e.g.
    ``[data.gaussian_logistic] n_features = 20``, ``[data.pacs_like] image_size = 64``);
    ``path`` for datasets read from files; malicious clients in ``[data.poison]``."""

    kind: str = registered("gaussian_logistic", "data")
    n_samples_per_client: int = bounded(50, 1)
    n_test: int = bounded(200, 1)
    partition: str = registered("iid", "partition")
    shards_per_client: int = bounded(2, 1)
    normalize: str = choice("none", "none", "standard", "unit_norm")
    alpha: float = bounded(0.5, 1e-6)
    domain_skew: float = bounded(0.8, 0.0, 1.0)
    quantity_skew: float = bounded(0.0, 0.0, 3.0)
    quantity_dirichlet: float = bounded(0.0, 0.0)
    holdout_fraction: float = bounded(0.2, 0.0, 0.9)
    path: str = ""
    save: bool = False
    poison: PoisonConfig = table(PoisonConfig)
    tables: dict[str, Any] = kind_tables("data")


@dataclass(frozen=True)
class ModelConfig(KindOptions):
    """The model: ``kind`` from the model registry; each kind's own keys live in its table
    ``[model.<kind>]`` (e.g. ``[model.mlp] hidden = 64``)."""

    kind: str = registered("logistic", "model")
    tables: dict[str, Any] = kind_tables("model")


@dataclass(frozen=True)
class TrainConfig(KindOptions):
    """Training: the round algorithm (its own keys in ``[train.<algorithm>]``, e.g.
    ``[train.choco] compression = "qsgd"``), the star's aggregator, the local optimizer and its
    schedule."""

    KIND_FIELD = "algorithm"

    algorithm: str = registered("dsgd", "round")
    aggregator: str = registered("fedavg", "aggregator")
    lr: float = bounded(0.1, 0.0)
    local_steps: int = bounded(1, 1)
    batch_size: int = bounded(0, 0)
    weight_decay: float = bounded(1e-3, 0.0)
    dtype: str = choice("float32", "float32", "float64")
    same_init: bool = True
    optimizer: str = registered("sgd", "optimizer")
    momentum: float = bounded(0.0, 0.0, 1.0, hi_open=True)
    nesterov: bool = False
    beta1: float = bounded(0.9, 0.0, 1.0, hi_open=True)
    beta2: float = bounded(0.999, 0.0, 1.0, hi_open=True)
    eps: float = bounded(1e-8, 0.0, lo_open=True)
    schedule: str = choice("constant", "constant", "step", "cosine")
    warmup_rounds: int = bounded(0, 0)
    step_every: int = bounded(10, 1)
    step_gamma: float = bounded(0.5, 0.0)
    tables: dict[str, Any] = kind_tables("round")


@dataclass(frozen=True)
class LedgerConfig:
    """The influence ledger (see :mod:`p2pforget.ledger`): ``full`` keeps every node's whole row,
    ``sparse`` each row's ``keep`` largest entries (the rest is counted as dropped mass), ``off``
    none (pure training studies); ``auto`` is ``full`` up to :attr:`FULL_UP_TO` clients and
    ``sparse`` above (a dense row per node is ``n`` floats: at 10,000 clients 800 MB a rank and
    most of a round's time, at 100,000 clients 80 GB)."""

    FULL_UP_TO: ClassVar[int] = 2048

    kind: str = choice("auto", "auto", "full", "sparse", "off")
    keep: int = bounded(32, 1)

    def kind_for(self, n_clients: int) -> str:
        """The ledger kept for ``n_clients`` clients (``auto`` resolved).

        >>> LedgerConfig().kind_for(1024), LedgerConfig().kind_for(10_000), LedgerConfig(kind="full").kind_for(10_000)
        ('full', 'sparse', 'full')
        """
        if self.kind != "auto":
            return self.kind
        return "full" if n_clients <= self.FULL_UP_TO else "sparse"


@dataclass(frozen=True)
class UnlearnConfig(KindOptions):
    """What to forget and with which method; each method's own keys live in ``[unlearn.<method>]``
    (``tables`` maps every registered method that has options to its options dataclass)."""

    KIND_FIELD = "method"

    method: str = registered("certified", "method")
    clients: tuple[int, ...] = ()
    samples: dict[str, tuple[int, ...]] = field(default_factory=dict)
    mode: str = choice("remove", "remove", "keep_relay")
    tables: dict[str, Any] = kind_tables("method")


@dataclass(frozen=True)
class AuditConfig:
    """The audit of every forget request (see :mod:`p2pforget.audit`): bootstrap rounds of the MIA
    confidence intervals, LiRA's shadow models (0 = no LiRA: each shadow model is a training run)
    and their gradient steps (0 = as many as the audited training took), and the relearning
    attack's forgotten samples and fine-tuning steps (0 steps = no relearning attack)."""

    after_forget: bool = True
    bootstrap: int = bounded(1000, 10)
    shadow_models: int = bounded(0, 0)
    shadow_steps: int = bounded(0, 0)
    relearn_samples: int = bounded(10, 1)
    relearn_steps: int = bounded(50, 0)


@dataclass(frozen=True)
class StoppingConfig:
    """When an iterative unlearning method stops (``rule = "plateau"``: its FA on the forgotten
    samples has dropped by at most ``plateau_points`` over the last ``plateau_rounds`` checks, or its
    round budget is spent; ``"budget"``: the whole budget),
    and the collapse guard: with ``guard``, a method that ends with its validation accuracy (the
    staying clients' held-out split) more than ``guard_points`` below the trained model's, or with
    ``guard_retained`` its accuracy on the staying clients' training samples more than
    ``retained_points`` below theirs, rolls back (see :mod:`p2pforget.unlearn.stopping` and
    docs/methods/stopping.md)."""

    rule: str = choice("plateau", "plateau", "budget")  # budget: always run the method's whole round budget
    plateau_rounds: int = bounded(3, 1)
    plateau_points: float = bounded(1.0, 0.0)
    # back: a repair ends once it is back at its start (or at the budget); settled: once it stops rising
    repair_end: str = choice("back", "back", "settled")
    guard: bool = True
    guard_points: float = bounded(5.0, 0.0)
    guard_retained: bool = True
    retained_points: float = bounded(5.0, 0.0)


@dataclass(frozen=True)
class LogConfig:
    """Extra logs next to the run files, rewritten at every checkpoint: ``csv`` writes
    ``metrics.csv`` (one row per evaluated round) and ``metrics_per_node.csv`` (one row per round
    and node); ``tensorboard`` writes TensorBoard event files to ``tensorboard/`` (the ``log``
    extra: ``pip install "p2pforget[log]"``)."""

    csv: bool = False
    tensorboard: bool = False


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    stopping: StoppingConfig = field(default_factory=StoppingConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _int_list(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ConfigError(f"{where} must be a list of non-negative integers, e.g. [0, 3], got {value!r}")
    return tuple(value)


def _str_list(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, e.g. [\"my_module\"], got {value!r}")
    return tuple(value)


def _check_value(where: str, f: dataclasses.Field, value: Any, ftype: Any) -> Any:
    origin = typing.get_origin(ftype)
    if origin is tuple:
        return _str_list(where, value) if typing.get_args(ftype)[0] is str else _int_list(where, value)
    if origin is dict:
        if not isinstance(value, dict) or not all(str(k).isascii() and str(k).isdigit() for k in value):
            raise ConfigError(f"{where} must map client ids to sample indices, e.g. {{ 3 = [0, 5, 7] }}, got {value!r}")
        return {str(int(k)): _int_list(f"{where}.{k}", v) for k, v in value.items()}
    if ftype is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if ftype is bool and not isinstance(value, bool) or ftype is not bool and (isinstance(value, bool) or not isinstance(value, ftype)):
        raise ConfigError(f"{where} must be of type {ftype.__name__}, got {value!r} ({type(value).__name__})")
    choices = f.metadata.get("choices")
    if "registry" in f.metadata:
        choices = registry.ALL[f.metadata["registry"]].names()
    if choices and value not in choices:
        raise ConfigError(f"{where} = {value!r} is not valid; choose one of: {', '.join(choices)}"
                          + (" (or register your own in a run.plugins module)" if "registry" in f.metadata else ""))
    if ftype is float and not math.isfinite(value):
        lo, hi = f.metadata.get("range", (None, None))
        raise ConfigError(f"{where} = {value!r} is not a finite number; give a number"
                          + (f" in {_interval(f)}" if lo is not None or hi is not None else "")
                          + f" (the default is {f.default!r})")
    lo, hi = f.metadata.get("range", (None, None))
    lo_open, hi_open = f.metadata.get("open", (False, False))
    if (lo is not None and (value < lo or lo_open and value == lo)
            or hi is not None and (value > hi or hi_open and value == hi)):
        raise ConfigError(f"{where} = {value!r} is out of range; allowed {_interval(f)} (the default is {f.default!r})")
    return value


def _interval(f: dataclasses.Field) -> str:
    lo, hi = f.metadata.get("range", (None, None))
    lo_open, hi_open = f.metadata.get("open", (False, False))
    return (("(" if lo_open else "[") + f"{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}"
            + (")" if hi_open or hi is None else "]"))


def registered_options(which: str) -> dict[str, type]:
    """Every entry of registry ``which`` (a key of :data:`~p2pforget.registry.ALL`) that has
    options, and its options dataclass."""
    reg = registry.ALL[which]
    found = {name: reg.entry(name).meta.get("options") for name in reg.names()}
    return {name: opts for name, opts in found.items() if opts is not None and dataclasses.fields(opts)}


def method_options() -> dict[str, type]:
    """Every registered unlearning method that has options, and its options dataclass."""
    return registered_options("method")


def _sub_tables(cls: type) -> dict[str, type]:
    """The per-kind tables a section can hold (``{}`` for a section without them)."""
    which = next((f.metadata["sub_tables"] for f in dataclasses.fields(cls) if f.metadata.get("sub_tables")), None)
    return registered_options(which) if which else {}


DEPRECATED_FLAT = ("data", "model", "topology", "train")
"""Sections whose kinds' keys moved into per-kind tables in 0.2: a flat key there (``model.hidden``, ``topology.p``,
``data.n_features``)
still works for this release, with a warning naming its table; ``[unlearn]``'s flat keys are errors."""


NOUNS = {"unlearn": "method", "train": "algorithm"}
"""What a section's kinds are called in messages (``kind`` otherwise)."""


def _moved(section: str, key: str, subs: dict[str, type]) -> list[str]:
    """The kinds of ``section`` whose table holds ``key``."""
    return [m for m, opts in subs.items() if key in {f.name for f in dataclasses.fields(opts)}]


def _deprecated(section: str, key: str, kinds: list[str]) -> None:
    warnings.warn(f"{section}.{key} has moved to the {NOUNS.get(section, 'kind')}'s own table: write it under "
                  f"{' / '.join(f'[{section}.{k}]' for k in kinds)} (e.g. --set {section}.{kinds[0]}.{key}=...); "
                  "the flat key is read for this release only", DeprecationWarning, stacklevel=4)


def _plain_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("sub_tables") and not f.metadata.get("table")}


def _tables(cls: type) -> dict[str, type]:
    """The nested tables of a section (e.g. ``data.poison``) and their dataclasses."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("table")}


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = _plain_fields(cls)
    subs = _sub_tables(cls)
    nested = _tables(cls)
    values = _lift_flat(name, cls, values)
    unknown = sorted(set(values) - set(fields) - set(subs) - set(nested))
    for key in unknown:
        moved = _moved(name, key, subs)
        if moved:
            raise ConfigError(f"{name}.{key} has moved to the {NOUNS.get(name, 'kind')}'s own table: "
                              f"write it under [{name}.{moved[0]}] (e.g. --set {name}.{moved[0]}.{key}=...)")
    if unknown:
        tables = f"; kind tables: {', '.join(f'[{name}.{m}]' for m in subs)}" if subs else ""
        tables += f"; tables: {', '.join(f'[{name}.{t}]' for t in nested)}" if nested else ""
        raise ConfigError(f"unknown key {name}.{unknown[0]}; valid keys in [{name}]: {', '.join(fields)}{tables}")
    built = {k: _check_value(f"{name}.{k}", fields[k], v, hints[k]) for k, v in values.items() if k in fields}
    built |= {t: _build_section(f"{name}.{t}", c, values[t]) for t, c in nested.items() if t in values}
    if subs:
        built["tables"] = {m: _build_section(f"{name}.{m}", opts, values.get(m, {})) for m, opts in subs.items()}
    return cls(**built)


def load_plugins(modules: tuple[str, ...] | list[str], *, base: Path | None = None) -> None:
    """Import user modules that register datasets, models, rounds, aggregators or methods.

    An entry is a module name (``"my_pkg.my_model"``, importable from the current directory) or a
    path to a ``.py`` file (relative to the current directory or to ``base``, the config's folder).
    """
    for entry in modules:
        if entry.endswith(".py"):
            candidates = [Path(entry)] + ([base / entry] if base is not None else [])
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise ConfigError(f"run.plugins: file {entry!r} does not exist; give a path relative to the current "
                                  "directory or to the config file, or a module name")
            name = f"p2pforget_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # a plug-in's own bug: one line naming it, not a traceback
                del sys.modules[name]
                raise ConfigError(f"run.plugins: importing {str(path)!r} failed: {_plugin_error(e)}; fix the module") from None
        else:
            # Only what is on sys.path already (installed packages, PYTHONPATH): the current
            # directory is not added, so a module lying there cannot shadow one by name.
            try:
                importlib.import_module(entry)
            except ModuleNotFoundError as e:
                raise ConfigError(f"run.plugins: cannot import {entry!r} ({e}); put the module on PYTHONPATH "
                                  "or give the path of its .py file") from None
            except Exception as e:
                raise ConfigError(f"run.plugins: importing {entry!r} failed: {_plugin_error(e)}; fix the module") from None


def _plugin_error(e: Exception) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError at line {e.lineno}: {e.msg}"
    return f"{type(e).__name__}: {e}"


def from_dict(data: dict[str, Any], *, base: Path | None = None, import_plugins: bool = True) -> Config:
    """Build a :class:`Config` from nested dicts (missing keys take defaults). ``run.plugins`` are
    imported first, so the kinds they register are valid choices (``import_plugins = False``:
    not imported; the kinds must be registered already)."""
    sections = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; valid sections: {', '.join(sections)}")
    run = data.get("run", {})
    if import_plugins and isinstance(run, dict) and "plugins" in run:
        load_plugins(_str_list("run.plugins", run["plugins"]), base=base)
    return Config(**{name: _build_section(name, cls, data.get(name, {})) for name, cls in sections.items()})


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dicts; each kind's options appear as a sub-table (``unlearn.<method>``, ``model.<kind>``)."""
    out = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        d = {k: _plain(getattr(section, k)) for k in _plain_fields(type(section))}
        for name, opts in getattr(section, "tables", {}).items():
            d[name] = {k: _plain(v) for k, v in dataclasses.asdict(opts).items()}
        for name in _tables(type(section)):
            d[name] = {k: _plain(v) for k, v in dataclasses.asdict(getattr(section, name)).items()}
        out[f.name] = d
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def load(path: str | Path) -> Config:
    """Read a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(data, base=path.parent)


PATH_KEYS = (("data", "path"), ("topology", "path"), ("topology", "mixing_path"))


def resolve_paths(cfg: Config, *, base: str | Path | None = None) -> Config:
    """``cfg`` with its file paths (``data.path``, ``topology.path``, ``topology.mixing_path``)
    made absolute, so that a stored run finds its files from any directory. A relative path is
    taken from the current directory, or else from ``base`` (the config file's folder) when the
    file is there.
    """
    changes: dict[str, dict[str, str]] = {}
    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if not value or Path(value).is_absolute():
            continue
        found = Path(value)
        if not found.exists() and base is not None and (Path(base) / value).exists():
            found = Path(base) / value
        changes.setdefault(section, {})[key] = str(found.resolve())
    return replace(cfg, **changes) if changes else cfg


def loads(text: str) -> Config:
    """Parse TOML text into a :class:`Config` (importing its ``run.plugins``: for text you wrote)."""
    return from_dict(tomllib.loads(text))


def loads_stored(text: str, *, where: str, plugins: tuple[str, ...] | list[str] = ()) -> Config:
    """Parse a config stored in a run file (``where`` names it) **without** importing the
    plug-ins it names: a run directory is data, and another user's run can name any module.
    The modules the caller trusts and lists in ``plugins`` (``--plugins`` on the command line)
    are imported instead; every one the stored config names must be among them.

    >>> loads_stored('run = { seed = 3 }', where="history.h5").run.seed
    3
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: the stored config is not valid TOML ({e}); the run file is damaged: restore it "
                          "from a copy or rerun the experiment") from None
    named = data.get("run", {}).get("plugins", []) if isinstance(data.get("run"), dict) else []
    missing = [m for m in _str_list("run.plugins", named) if m not in plugins]
    if missing:
        raise ConfigError(f"{where} names plug-in modules in run.plugins ({', '.join(missing)}); a run directory is "
                          "data, so they are not imported from it: if you trust them, pass --plugins "
                          f"{','.join(missing)} (or plugins=[...] in Python)")
    load_plugins(list(plugins))
    try:
        return from_dict(data, import_plugins=False)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _parse_override_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare words such as torus are strings


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` (or ``unlearn.<method>.key=value``) overrides; values are parsed as
    TOML, then type-checked."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. topology.kind=torus")
        if path[0] not in data:
            raise ConfigError(f"unknown section [{path[0]}] in override {item!r}; valid sections: {', '.join(data)}")
        if path[0] == "run" and path[1] == "plugins":
            load_plugins(_str_list("run.plugins", _parse_override_value(raw.strip())))
            data = to_dict(from_dict(data))  # the new plug-ins may bring method tables
        table = data[path[0]]
        for depth, name in enumerate(path[1:-1], start=1):
            if not isinstance(table.get(name), dict) or name == "samples":
                where = ".".join(path[:depth])
                raise ConfigError(f"unknown table {where}.{name} in override {item!r}; tables in [{where}]: "
                                  f"{', '.join(k for k, v in table.items() if isinstance(v, dict) and k != 'samples') or 'none'}")
            table = table[name]
        if path[-1] not in table:
            where = ".".join(path[:-1])
            kinds = _sub_tables(type(getattr(cfg, path[0]))) if len(path) == 2 else {}
            moved = [m for m in kinds if path[-1] in data[path[0]].get(m, {})]
            if moved and path[0] in DEPRECATED_FLAT:
                _deprecated(path[0], path[-1], moved)
                for m in moved:
                    data[path[0]][m][path[-1]] = _parse_override_value(raw.strip())
                continue
            if moved:
                raise ConfigError(f"{key.strip()} has moved to the {NOUNS.get(path[0], 'kind')}'s own table: "
                                  f"use {where}.{moved[0]}.{path[-1]}=...")
            raise ConfigError(f"unknown key {key.strip()}; valid keys in [{where}]: {', '.join(table)}")
        table[path[-1]] = _parse_override_value(raw.strip())
    return from_dict(data)


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "samples":
            _deep_update(base[k], v)
        else:
            base[k] = v


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys changed, e.g. ``replace(cfg, run={"rounds": 3})`` or
    ``replace(cfg, unlearn={"certified": {"epsilon": 0.5}})``."""
    data = to_dict(cfg)
    # lifted before the merge: the stored tables name every key and would otherwise win
    _deep_update(data, {name: _lift_flat(name, type(getattr(cfg, name, None)), values) for name, values in sections.items()})
    return from_dict(data)


def _lift_flat(name: str, cls: type, values: Any) -> Any:
    """``values`` with the flat keys of a :data:`DEPRECATED_FLAT` section moved, with a warning,
    into every table that holds them, unless the table sets the key itself."""
    if name not in DEPRECATED_FLAT or not isinstance(values, dict):
        return values
    subs, out = _sub_tables(cls), dict(values)
    for key in sorted(set(values) - set(_plain_fields(cls)) - set(subs) - set(_tables(cls))):
        moved = _moved(name, key, subs)
        if moved:
            _deprecated(name, key, moved)
            value = out.pop(key)
            for m in moved:
                table = out.get(m, {})
                out[m] = table if not isinstance(table, dict) or key in table else table | {key: value}
    return out


def dumps(cfg: Config) -> str:
    """TOML text for ``cfg`` (round-trips through :func:`loads`). A kind's table is written when it
    is the chosen kind's or differs from its defaults: a stored config then names no table of a
    plug-in it does not use (reading it back needs no plug-in it never named)."""
    lines = []
    for section, values in to_dict(cfg).items():
        part = getattr(cfg, section)
        chosen = getattr(part, getattr(part, "KIND_FIELD", "kind"), None)
        defaults = {k: {f: _plain(v) for f, v in dataclasses.asdict(c()).items()} for k, c in _sub_tables(type(part)).items()}
        values = {k: v for k, v in values.items() if k not in defaults or k == chosen or v != defaults[k]}
        tables = {k: v for k, v in values.items() if isinstance(v, dict) and k != "samples"}
        lines.append(f"[{section}]")
        for key, value in values.items():
            if key not in tables:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _accepts(f: dataclasses.Field, hint: Any) -> str:
    if "choices" in f.metadata:
        return " \\| ".join(f.metadata["choices"])
    if "registry" in f.metadata:
        return " \\| ".join(registry.ALL[f.metadata["registry"]].builtin_names()) + " (registry; plug-ins add more)"
    if "range" in f.metadata:
        lo, hi = f.metadata["range"]
        return f"{hint.__name__} in [{lo}, {'inf' if hi is None else hi}]"
    if typing.get_origin(hint) is tuple:
        return "list of module names or .py paths" if typing.get_args(hint)[0] is str else "list of client ids"
    if typing.get_origin(hint) is dict:
        return "table client id -> list of sample indices"
    return hint.__name__


def reference() -> str:
    """A markdown table of every key, its default and what it accepts (used by the README)."""
    rows = ["| key | default | accepts |", "|---|---|---|"]

    def add(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in _plain_fields(cls).values():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(f"| `{prefix}.{f.name}` | `{_toml_value(default)}` | {_accepts(f, hints[f.name])} |")

    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        add(section.name, cls)
        for name, nested in _tables(cls).items():
            add(f"{section.name}.{name}", nested)
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        which = next((f.metadata["sub_tables"] for f in dataclasses.fields(cls) if f.metadata.get("sub_tables")), None)
        if which is None:
            continue
        builtin = registry.ALL[which].builtin_names()
        for name, opts in registered_options(which).items():
            if name in builtin:
                add(f"{section.name}.{name}", opts)
    return "\n".join(rows)
