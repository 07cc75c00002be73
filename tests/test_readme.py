"""The README's config reference is generated from the config dataclasses and must stay in sync,
and its library example runs as printed, without a warning."""
import warnings
from pathlib import Path

from p2pforget import config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    assert config.reference() in README.read_text(), \
        "regenerate the table with: python -c 'import p2pforget.config as c; print(c.reference())'"


def test_readme_library_example_runs_without_a_warning(tmp_path, monkeypatch):
    text = README.read_text()
    start = text.index("```python", text.index("## Use it as a library")) + len("```python")
    block = text[start:text.index("```", start)]
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "study" / "compare.csv").is_file()
