"""Every python block of docs/guide/*.md runs, page by page, in a fresh directory."""
import re
from pathlib import Path

import pytest

GUIDE = sorted((Path(__file__).resolve().parents[1] / "docs" / "guide").glob("*.md"))


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_guide_has_examples():
    assert GUIDE and all(_blocks(p) for p in GUIDE if p.name == "library.md")


@pytest.mark.parametrize("page", GUIDE, ids=[p.stem for p in GUIDE])
def test_guide_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in _blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
