"""The extension contract (p2pforget/api.py): what extensions may use of the engine is one
documented list, and registries check plug-ins against their extension point when they register."""
import ast
from pathlib import Path

import pytest

from p2pforget import Engine, api, config
from p2pforget.registry import AGGREGATORS, METHODS, MODELS, ROUNDS

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = (sorted((ROOT / "p2pforget" / "unlearn").glob("*.py"))
              + [ROOT / "p2pforget" / name for name in ("rounds.py", "metrics.py", "audit.py", "aggregate.py")]
              + [ROOT / "examples" / "plugins" / "extensions.py", ROOT / "tests" / "plugins" / "custom_plugin.py"])
ENGINE_NAMES = {"engine", "e", "eng", "fresh", "twin", "trained"}
PARTS = {"batches", "compute", "network", "ledger"}


def _holds_engine(node: ast.AST) -> bool:
    """``engine`` or ``self.engine`` (a method's object that keeps its engine)."""
    return ((isinstance(node, ast.Name) and node.id in ENGINE_NAMES)
            or (isinstance(node, ast.Attribute) and node.attr == "engine" and isinstance(node.value, ast.Name)))


def _engine_members(path: Path) -> set[str]:
    """Attributes read from a variable that holds an engine, and from the engine's parts
    (``engine.network.mix`` counts as ``network.mix``)."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        if _holds_engine(node.value):
            used.add(node.attr)
        elif isinstance(node.value, ast.Attribute) and node.value.attr in PARTS and _holds_engine(node.value.value):
            used.add(f"{node.value.attr}.{node.attr}")
    return used


def test_extensions_use_only_the_documented_engine_members():
    used = {}
    for path in EXTENSIONS:
        for member in _engine_members(path):
            used.setdefault(member, []).append(path.relative_to(ROOT).as_posix())
    undocumented = {m: where for m, where in used.items() if m not in api.ENGINE_API}
    assert undocumented == {}, f"add these to p2pforget.api.ENGINE_API or stop using them: {undocumented}"


def test_every_documented_member_exists():
    engine = Engine(config=config.from_dict({"topology": {"n_clients": 3}, "data": {"n_samples_per_client": 4}}))
    def exists(name: str) -> bool:
        owner = engine
        for part in name.split(".")[:-1]:
            owner = getattr(owner, part, None)
        return hasattr(owner, name.split(".")[-1])

    missing = [m for m in api.ENGINE_API if not exists(m)]
    assert missing == [] and engine.ledger is not None


def test_the_built_ins_implement_their_extension_points():
    assert all(issubclass(METHODS.get(n), api.Unlearner) for n in METHODS.names())
    assert all(issubclass(AGGREGATORS.get(n), api.Aggregator) for n in AGGREGATORS.names())
    assert all(callable(ROUNDS.get(n)) for n in ROUNDS.names()) and all(callable(MODELS.get(n)) for n in MODELS.names())


def test_a_plugin_without_the_required_method_is_refused_at_registration():
    class Forgetful:
        def forget(self, engine, request, options):  # not `unlearn`
            return None

    with pytest.raises(TypeError, match=r"unlearning method 'forgetful' \(Forgetful\) lacks unlearn\(\); "
                                        r"see p2pforget.api.Unlearner"):
        METHODS.register("forgetful")(Forgetful)
    assert "forgetful" not in METHODS.names()
    with pytest.raises(TypeError, match=r"aggregator 'mean': register a class implementing p2pforget.api.Aggregator"):
        AGGREGATORS.register("mean")(lambda uploads: uploads.client_params.mean(dim=0))
    with pytest.raises(TypeError, match=r"model 'broken': register a function"):
        MODELS.register("broken")(42)


def test_the_engine_is_a_kernel_that_names_no_method_model_or_dataset():
    """The engine package knows no plug-in by name, and the Engine class holds the state and the
    round only: its parts are classes of their own, not bases of the engine."""
    import inspect
    import io
    import keyword
    import re
    import tokenize

    from p2pforget.registry import DATASETS

    source = "\n".join(p.read_text() for p in sorted((ROOT / "p2pforget" / "engine").glob("*.py")))
    literals = {t.string.strip("\"'") for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.STRING}
    names = set(METHODS.names()) | set(MODELS.names()) | set(DATASETS.names())
    # a name that is also an English word of Python's ("not") counts only as a string literal
    named = sorted(n for n in names if (n in literals if keyword.iskeyword(n)
                                        else re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", source, re.IGNORECASE)))
    assert "not" in METHODS.names() and named == []
    assert Engine.__bases__ == (object,)
    assert len(inspect.getsource(Engine).splitlines()) <= 300
    assert {"batches", "compute", "network"} <= set(vars(Engine(config=config.from_dict({"topology": {"n_clients": 3}}))))
