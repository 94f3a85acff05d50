"""Packaging for two audiences (issue 19, item 7): a Django project that only publishes installs
the plain distribution — redis, orjson and pydantic, no aiohttp, no uvloop, no server — and
``gateway.publish`` / ``gateway.contrib.django`` work from it; the server is the ``[server]``
extra, and the commands of a light install say so instead of failing with an ImportError.

A fresh venv (``python3 -m venv``) and ``pip install`` of a copy of this checkout, no extras.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import __version__
from tests.support.redis_server import RedisServer
from tests.support.venv import Venv, copy_distribution

SERVER_ONLY = ["aiohttp", "uvloop", "pydantic-settings", "prometheus-client", "hiredis"]

PUBLISH = """
import importlib.metadata, importlib.util, sys
from gateway.publish import AsyncPublisher, Publisher
import gateway.contrib.django
offset = Publisher.from_url(sys.argv[1]).publish("service_1", "price_changed", {"price": "9.50"})
server = [n for n in sys.argv[2:] if importlib.util.find_spec(n.replace("-", "_")) is not None]
print(offset, sorted(set(sys.modules) & {"aiohttp", "uvloop"}), server)
"""


@pytest.mark.slow
def test_the_plain_distribution_publishes_without_the_server(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    source = copy_distribution(tmp_path / "src")
    venv = Venv.create(tmp_path / "venv")
    venv.pip_install(str(source))

    installed = venv.run("python", "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert "django-ws-gateway==" in installed
    for name in ("redis==", "orjson==", "pydantic=="):
        assert name in installed, installed
    assert [n for n in SERVER_ONLY if f"{n}==" in installed.replace("_", "-")] == []

    done = venv.run("python", "-c", PUBLISH, redis_server.url, *SERVER_ONLY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "[]", "[]"]  # offset 1; nothing of the server imported

    version = venv.run("gateway", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"gateway {__version__}")
    for command, extra in [
        ("gateway", "[server]"),
        ("gateway-worker", "[server]"),
        ("gateway-testclients", "[client]"),
    ]:
        refused = venv.run(command)
        assert refused.returncode == 2
        assert f"pip install 'django-ws-gateway{extra}'" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
