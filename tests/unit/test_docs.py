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


def test_the_docs_stand_alone() -> None:
    """Users do not have the contract file: the docs never send them to it."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    citing = [p.name for p in pages if "CONTRACT" in p.read_text()]
    assert citing == []


def test_django_docs_name_every_step_a_new_project_needs() -> None:
    text = (REPO_ROOT / "docs" / "django.md").read_text()
    for needed in (
        "pip install -e '.[server]' -r deploy/demo/requirements.txt",  # the demo's requirements
        '"rest_framework.authtoken"',
        '"DEFAULT_AUTHENTICATION_CLASSES"',
        "AppConfig.ready()",  # where the @gateway_event handlers are imported
        "django-admin startproject",
        "publish_on_commit",
        "Why one distribution with extras",
    ):
        assert needed in text, needed


def test_operations_docs_say_the_dashboard_answers_json_without_accept_html() -> None:
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert "`Accept: text/html`" in text and "otherwise the JSON of `/dashboard/stats`" in text


def test_the_demo_database_is_not_tracked() -> None:
    """The demo's default sqlite file lands in deploy/demo/: git ignores it."""
    import subprocess

    done = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/demo/demo.sqlite3"], cwd=REPO_ROOT, timeout=30
    )
    assert done.returncode == 0
