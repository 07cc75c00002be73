"""The README's config reference is generated from the config dataclasses and must stay in sync."""
from pathlib import Path

from p2pforget import config


def test_readme_config_reference_is_current():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert config.reference() in readme, "regenerate the table with: python -c 'import p2pforget.config as c; print(c.reference())'"
