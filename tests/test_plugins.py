"""Plug-ins: user modules register models, datasets and aggregators used from a TOML file; the
package's import graph points one way and only the engine touches its private attributes."""
import ast
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from p2pforget import Engine, config, history, registry
from p2pforget.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "p2pforget"
PLUGIN = Path(__file__).parent / "plugins" / "custom_plugin.py"

TOML = f"""
[run]
rounds = 4
plugins = ["{PLUGIN}"]
[topology]
kind = "star"
n_clients = 4
[data]
kind = "two_blobs_plugin"
n_samples_per_client = 12
quantity_skew = 1.0
n_test = 20
[model]
kind = "tiny_linear_plugin"
[train]
aggregator = "uniform_mean_plugin"
dtype = "float64"
"""


def test_user_model_dataset_and_aggregator_run_from_toml(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text(TOML)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    stored = history.read_h5(tmp_path / "run" / "history.h5")
    final = stored.arrays["params/trained"]
    assert final.shape == (4, 6)  # 3 features x 2 classes, no bias

    cfg = config.load(path)
    uniform, fedavg = Engine(config=cfg), Engine(config=config.replace(cfg, train={"aggregator": "fedavg"}))
    assert not np.allclose(uniform.sample_counts, uniform.sample_counts[0])  # unequal shards: the rules differ
    local = uniform.compute.local_steps(uniform.params)
    uniform.train(1, progress=False)
    fedavg.train(1, progress=False)
    np.testing.assert_allclose(uniform.params[0].numpy(), local.mean(dim=0).numpy(), rtol=0, atol=1e-15)
    assert not torch.allclose(uniform.params[0], fedavg.params[0])
    uniform.train(20, progress=False)
    assert uniform.metrics["test_acc_mean"][-1] > 0.9


def test_a_plugin_models_options_are_its_own_table(tmp_path):
    """A model registered with ``options=`` gets ``[model.<name>]``: read from TOML, used by the
    builder, and an unknown key there is refused with the valid keys."""
    path = tmp_path / "exp.toml"
    path.write_text(TOML.replace('kind = "tiny_linear_plugin"', 'kind = "wide_linear_plugin"\n[model.wide_linear_plugin]\nwidth = 5'))
    engine = Engine(config=config.load(path))
    assert engine.dim == 3 * 5 + 5 + 5 * 2  # 3 features -> 5 units (with bias) -> 2 classes (no bias)
    engine.train(2, progress=False)
    path.write_text(TOML.replace('kind = "tiny_linear_plugin"', 'kind = "wide_linear_plugin"\n[model.wide_linear_plugin]\ndepth = 2'))
    with pytest.raises(config.ConfigError, match=r"unknown key model.wide_linear_plugin.depth; valid keys in "
                                                 r"\[model.wide_linear_plugin\]: width"):
        config.load(path)


@pytest.mark.parametrize("norm", [torch.nn.BatchNorm1d(4), torch.nn.InstanceNorm1d(4, track_running_stats=True)])
def test_running_statistics_are_per_client_state_of_the_flat_model(norm):
    """A norm layer's running statistics (mean, variance, step count) are flattened next to the
    parameters, not shared in the module; without running statistics there are none."""
    from p2pforget.models import FlatModel

    flat = FlatModel(torch.nn.Sequential(torch.nn.Linear(3, 4), norm))
    assert flat.buffer_names == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert flat.buffer_dim == 4 + 4 + 1
    assert flat.init_buffers(torch.float64).tolist() == [0.0] * 4 + [1.0] * 4 + [0.0]
    none = FlatModel(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, track_running_stats=False)))
    assert none.dim == 3 * 4 + 4 + 2 * 4 and none.buffer_dim == 0


def test_unknown_kind_names_the_registry_and_plugins():
    with pytest.raises(config.ConfigError, match=r"model.kind = 'resnet' is not valid; choose one of: logistic, mlp, cnn, clip, l2u"):
        config.from_dict({"model": {"kind": "resnet"}})
    with pytest.raises(config.ConfigError, match="run.plugins: cannot import 'no_such_module_xyz'"):
        config.from_dict({"run": {"plugins": ["no_such_module_xyz"]}})


def test_cli_help_lists_the_registries(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name in ["pacs_like", "l2u", "gradient_tracking", "fedavg", "foul", "certified", "not"]:
        assert name in text


def _imports(path: Path) -> set[str]:
    """Package modules imported by ``path`` (anywhere in the file, lazy imports included; imports
    made only for type annotations under ``if TYPE_CHECKING`` excluded)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no run-time dependency
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("p2pforget"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _module_path(candidate) else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("p2pforget")}
    return {_top(m) for m in found} - {_top(module)}


def _module_path(name: str) -> Path | None:
    p = ROOT / Path(*name.split("."))
    return p.with_suffix(".py") if p.with_suffix(".py").exists() else (p / "__init__.py" if (p / "__init__.py").exists() else None)


def _top(name: str) -> str:
    """Modules grouped as the design names them: p2pforget.unlearn.foul -> unlearn, p2pforget.engine -> engine."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "p2pforget"


LAYERS = [  # a module may import only from its own layer or the layers before it
    {"registry", "seeding", "config", "aggregate", "transport", "history", "release", "tasks", "ledger", "devices",
     "subspace", "compress", "stats", "flops", "hooks", "api", "progress"},
    {"topology", "partition", "poison", "data", "models", "rounds", "metrics", "optim"},
    {"engine"},
    {"unlearn", "audit"},
    {"experiment", "compare", "report"},
    {"__main__", "p2pforget"},
]


def test_no_import_cycle_and_dependencies_point_one_way():
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        src = _top(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
        for dst in _imports(path):
            graph.add_edge(src, dst)
    layer = {m: k for k, group in enumerate(LAYERS) for m in group}
    assert set(graph.nodes) <= set(layer), f"modules missing from the documented layers: {set(graph.nodes) - set(layer)}"
    upward = [(a, b) for a, b in graph.edges if layer[b] > layer[a]]
    assert upward == [], f"imports against the dependency direction: {upward}"
    cycles = list(nx.simple_cycles(graph.subgraph([m for m in graph if m != "p2pforget"])))
    assert cycles == [], cycles
    assert "unlearn" not in nx.descendants(graph, "engine")


def test_only_the_engine_touches_its_private_attributes():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
                if name in {"engine", "e", "fresh", "eng"} or name.endswith("engine"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_every_registry_uses_the_same_decorator():
    for reg in registry.ALL.values():
        assert reg.names(), reg.kind
        for name in reg.names():
            assert reg.entry(name).help, f"{reg.key} {name!r} has no help text"
