"""Documentation stays true to the code: every setting is in the README's table."""

from __future__ import annotations

from gateway.config import Settings
from tests.support.ports import REPO_ROOT


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [
        f"GATEWAY_{name.upper()}"
        for name in Settings.model_fields
        if f"`GATEWAY_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "python3 -m pip install -e '.[server]' && python3 -m gateway" in readme
    assert "bash tests/run.sh" in readme
