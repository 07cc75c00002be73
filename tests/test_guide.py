"""Every python block and every ``$ p2pforget`` line of a console block in docs/guide/*.md runs,
page by page, in a fresh directory (with the repository's examples/ next to it)."""
import re
import shlex
from pathlib import Path

import pytest

from p2pforget.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

GUIDE = sorted((Path(__file__).resolve().parents[1] / "docs" / "guide").glob("*.md"))


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def _commands(page: Path) -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", page.read_text(), flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ p2pforget ")]


def test_the_guide_has_examples():
    pages = {p.name: p for p in GUIDE}
    assert _blocks(pages["library.md"]) and len(_commands(pages["cli.md"])) >= 10


@pytest.mark.parametrize("page", GUIDE, ids=[p.stem for p in GUIDE])
def test_guide_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    namespace: dict = {}
    for block in _blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    for command in _commands(page):
        assert main(shlex.split(command)[1:]) == 0, command


@pytest.mark.slow
def test_the_studys_command_runs_on_one_topology_and_seed(tmp_path, monkeypatch):
    """docs/guide/compare.md's grid command (reproduced in full by benchmarks/compare_guide.py),
    cut to one topology, one seed, two rounds and 8 clients."""
    page = (ROOT / "docs" / "guide" / "compare.md").read_text()
    command = re.search(r"```bash\n(p2pforget compare .*?)\n```", page, flags=re.S).group(1)
    args = shlex.split(command)[1:]
    args[args.index("--topologies") + 1] = "ring"
    args[args.index("--seeds") + 1] = "0"
    args[args.index("--out") + 1] = str(tmp_path / "grid")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    assert main(args + ["--set", "run.rounds=2", "--set", "topology.n_clients=8"]) == 0
    methods = args[args.index("--methods") + 1].split(",")
    assert len(methods) >= 4
    assert (tmp_path / "grid" / "compare.csv").read_text().count("\n") == 1 + len(methods)
