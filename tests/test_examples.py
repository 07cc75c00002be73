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
    named -= {"pyproject.toml", "my_experiment.toml", "exp.toml"}  # the build file; placeholders the docs define
    missing = sorted(n for n in named if not (ROOT / n).is_file() and not (ROOT / "p2pforget" / n).is_file())
    assert not missing, f"docs name configs the repository lacks: {missing}"
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, capsys):
    assert main(["run", str(path), "--set", "run.rounds=2", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "run files:" in out and (tmp_path / "run" / "history.h5").is_file()
