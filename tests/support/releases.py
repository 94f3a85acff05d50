"""An earlier release's ``gateway`` and ``worker`` packages, taken from this repository's git
history, for tests that run an old node or publisher beside this tree (rolling upgrades,
cutovers). Needs the history: a shallow clone fails the test with a clear message."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.ports import REPO_ROOT


def extract_release(commit: str, target: Path) -> Path:
    """``gateway/`` and ``worker/`` at ``commit``, unpacked into ``target`` (a PYTHONPATH)."""
    archive = target / "src.tar"
    try:
        with archive.open("wb") as out:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "archive", commit, "gateway", "worker"],
                stdout=out,
                check=True,
                stderr=subprocess.PIPE,
            )
    except subprocess.CalledProcessError as exc:
        pytest.fail(
            f"commit {commit} is not in this clone ({exc.stderr.decode().strip()}): the test "
            "needs the repository's history (not a shallow clone)"
        )
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target
