"""The example configs that the README and docs name exist, and each runs through the CLI."""
import re
from pathlib import Path

import pytest

from p2pforget.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_every_config_the_docs_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "launch").iterdir())]
    named = {m for doc in docs for m in re.findall(r"[\w./-]+\.toml", doc.read_text())}
    named = {n for n in named if not n.startswith("path/to/")} - {"pyproject.toml"}  # placeholders; the build file
    homes = [ROOT, ROOT / "examples", ROOT / "p2pforget", ROOT / "p2pforget" / "configs"]
    missing = sorted(n for n in named if not any((home / n).is_file() for home in homes))
    assert not missing, f"docs name configs the repository lacks: {missing}"
    assert len(EXAMPLES) >= 4


# Examples whose forget request dominates the check even at two rounds are also cut in size: the
# study's exact MLP curvature for 32 clients takes 40 s (benchmarks/compare_guide.py runs it in full).
SMALLER = {"compare_digits": ["--set", "topology.n_clients=8"]}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, capsys):
    argv = ["run", str(path), "--set", "run.rounds=2", *SMALLER.get(path.stem, []), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "run files:" in out and (tmp_path / "run" / "history.h5").is_file()
