"""Paths and loaders shared by the deployment tests (no gateway import: these tests check the
deployment files, and work while the gateway itself is still being written)."""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = REPO_ROOT / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
YAMLLINT_CONFIG = K8S / ".yamllint.yaml"
NGINX = Path("/usr/sbin/nginx")


def load_launch() -> ModuleType:
    """deploy/launch.py as a module (it is a script, not part of a package)."""
    if "deploy_launch" in sys.modules:
        return sys.modules["deploy_launch"]
    spec = importlib.util.spec_from_file_location("deploy_launch", DEPLOY / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_launch"] = module
    spec.loader.exec_module(module)
    return module


def yaml_docs(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


@functools.cache
def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (kustomize is built into kubectl; Debian package kubectl)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found: it renders the kustomizations (apt-get install kubectl)"
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (or ``name-<hash>``, as generators name them)."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    hits = [d for d in docs if d["kind"] == kind and pattern.fullmatch(d["metadata"]["name"])]
    names = [d["metadata"]["name"] for d in hits]
    assert len(hits) == 1, f"expected one {kind} {name}, found {names}"
    return hits[0]
