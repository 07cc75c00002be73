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
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a bad value."""


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def _range(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"range": (lo, hi)})


@dataclass(frozen=True)
class RunConfig:
    seed: int = _range(0, 0)
    rounds: int = _range(20, 0)
    out: str = "runs/default"
    checkpoint_every: int = _range(1, 1)
    transport: str = _choice("auto", "auto", "local", "mpi")


@dataclass(frozen=True)
class TopologyConfig:
    kind: str = _choice("ring", "ring", "torus", "star", "complete", "erdos_renyi", "small_world", "random_regular", "file")
    n_clients: int = _range(8, 2)
    p: float = _range(0.3, 0.0, 1.0)
    k: int = _range(4, 2)
    beta: float = _range(0.2, 0.0, 1.0)
    degree: int = _range(3, 1)
    path: str = ""
    mixing: str = _choice("metropolis", "metropolis", "uniform_neighbors", "file")
    mixing_path: str = ""
    dropout: float = _range(0.0, 0.0, 0.99)


@dataclass(frozen=True)
class DataConfig:
    kind: str = _choice("gaussian_logistic", "gaussian_logistic", "digits")
    n_samples_per_client: int = _range(50, 1)
    n_test: int = _range(200, 1)
    n_features: int = _range(10, 1)
    n_classes: int = _range(3, 2)
    separation: float = _range(1.5, 0.0)
    partition: str = _choice("iid", "iid", "dirichlet", "by_class")
    alpha: float = _range(0.5, 1e-6)
    save: bool = False


@dataclass(frozen=True)
class ModelConfig:
    kind: str = _choice("logistic", "logistic", "mlp", "cnn")
    hidden: int = _range(32, 1)


@dataclass(frozen=True)
class TrainConfig:
    algorithm: str = _choice("dsgd", "dsgd", "gradient_tracking")
    lr: float = _range(0.1, 0.0)
    local_steps: int = _range(1, 1)
    batch_size: int = _range(0, 0)
    weight_decay: float = _range(1e-3, 0.0)
    dtype: str = _choice("float32", "float32", "float64")
    same_init: bool = True


@dataclass(frozen=True)
class UnlearnConfig:
    method: str = _choice("certified", "certified", "retrain")
    clients: tuple[int, ...] = ()
    samples: dict[str, tuple[int, ...]] = field(default_factory=dict)
    epsilon: float = _range(1.0, 1e-12)
    delta: float = _range(1e-5, 1e-300, 1.0)
    curvature: str = _choice("exact", "exact", "ggn", "diag_fisher", "kfac")
    newton_steps: int = _range(1, 1)
    mode: str = _choice("remove", "remove", "keep_relay")
    noise: bool = True
    damping: float = _range(0.0, 0.0)
    finetune_rounds: int = _range(0, 0)
    averaging: str = _choice("gossip", "gossip", "tree")
    gossip_tol: float = _range(1e-10, 1e-16, 1e-1)
    curvature_tol: float = _range(1e-4, 1e-16, 1e-1)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)


def _int_list(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ConfigError(f"{where} must be a list of non-negative integers, e.g. [0, 3], got {value!r}")
    return tuple(value)


def _check_value(where: str, f: dataclasses.Field, value: Any, ftype: Any) -> Any:
    origin = typing.get_origin(ftype)
    if origin is tuple:
        return _int_list(where, value)
    if origin is dict:
        if not isinstance(value, dict) or not all(str(k).isdigit() for k in value):
            raise ConfigError(f"{where} must map client ids to sample indices, e.g. {{ 3 = [0, 5, 7] }}, got {value!r}")
        return {str(int(k)): _int_list(f"{where}.{k}", v) for k, v in value.items()}
    if ftype is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if ftype is bool and not isinstance(value, bool) or ftype is not bool and (isinstance(value, bool) or not isinstance(value, ftype)):
        raise ConfigError(f"{where} must be of type {ftype.__name__}, got {value!r} ({type(value).__name__})")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where} = {value!r} is not valid; choose one of: {', '.join(choices)}")
    lo, hi = f.metadata.get("range", (None, None))
    if lo is not None and value < lo or hi is not None and value > hi:
        bounds = f"[{lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{where} = {value!r} is out of range; allowed {bounds}")
    return value


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}; valid keys in [{name}]: {', '.join(fields)}")
    return cls(**{k: _check_value(f"{name}.{k}", fields[k], v, hints[k]) for k, v in values.items()})


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts (missing keys take defaults)."""
    sections = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; valid sections: {', '.join(sections)}")
    return Config(**{name: _build_section(name, cls, data.get(name, {})) for name, cls in sections.items()})


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def load(path: str | Path) -> Config:
    """Read a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(data)


def loads(text: str) -> Config:
    """Parse TOML text into a :class:`Config`."""
    return from_dict(tomllib.loads(text))


def _parse_override_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare words such as torus are strings


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` overrides; values are parsed as TOML, then type-checked."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. topology.kind=torus")
        if section not in data:
            raise ConfigError(f"unknown section [{section}] in override {item!r}; valid sections: {', '.join(data)}")
        if name not in data[section]:
            raise ConfigError(f"unknown key {section}.{name}; valid keys in [{section}]: {', '.join(data[section])}")
        data[section][name] = _parse_override_value(raw.strip())
    return from_dict(data)


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys changed, e.g. ``replace(cfg, run={"rounds": 3})``."""
    data = to_dict(cfg)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(data)


def dumps(cfg: Config) -> str:
    """TOML text for ``cfg`` (round-trips through :func:`loads`)."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
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


def reference() -> str:
    """A markdown table of every key, its default and what it accepts (used by the README)."""
    rows = ["| key | default | accepts |", "|---|---|---|"]
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "choices" in f.metadata:
                accepts = " \\| ".join(f.metadata["choices"])
            elif "range" in f.metadata:
                lo, hi = f.metadata["range"]
                accepts = f"{hints[f.name].__name__} in [{lo}, {'inf' if hi is None else hi}]"
            elif typing.get_origin(hints[f.name]) is tuple:
                accepts = "list of client ids"
            elif typing.get_origin(hints[f.name]) is dict:
                accepts = "table client id -> list of sample indices"
            else:
                accepts = hints[f.name].__name__
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(f"| `{section.name}.{f.name}` | `{_toml_value(default)}` | {accepts} |")
    return "\n".join(rows)
