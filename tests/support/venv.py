"""Fresh virtual environments with this checkout installed, as a user would install it.

``copy_distribution(dest)`` copies what the package is built from (pyproject.toml, README.md,
LICENSE, gateway/, worker/) so that pip builds in a temp dir and never writes ``build/`` or
``*.egg-info`` into the checkout; ``Venv.create(path)`` makes a venv with ``python3 -m venv``.
pip reads this machine's package index configuration as any user's pip would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import REPO_ROOT

DISTRIBUTION = ("pyproject.toml", "README.md", "LICENSE", "gateway", "worker")
PIP_TIMEOUT_S = 600


def copy_distribution(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for name in DISTRIBUTION:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


@dataclass(frozen=True)
class Venv:
    path: Path

    @classmethod
    def create(cls, path: Path) -> Venv:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
        return cls(path)

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def pip_install(self, *requirements: str) -> None:
        done = subprocess.run(
            [self.python, "-m", "pip", "install", "--quiet", *requirements],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
        )
        assert done.returncode == 0, f"pip install {requirements}:\n{done.stdout}{done.stderr}"

    def run(self, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (a script of the venv, or ``python``) in a clean environment."""
        command = [str(self.bin / argv[0]), *argv[1:]]
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            command, capture_output=True, text=True, timeout=120, env=self.env(), **kw
        )

    def env(self) -> dict[str, str]:
        """PATH with the venv first, no PYTHONPATH (so nothing resolves to the checkout)."""
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PYTHON"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.path)
        return env
