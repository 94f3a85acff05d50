"""Fixtures shared by the whole suite: real redis-server processes, a real Django site, and
gateway / worker subprocesses. Every process runs on a free port and is stopped by pid at
teardown; the shared Redis on 6379 is never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DjangoSite,
    GatewayProcess,
    ProcessFactory,
    RedisCluster,
    RedisServer,
    WorkerProcess,
)


# --- Redis ------------------------------------------------------------------------------------
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty ``redis-server`` (no persistence) for this test only."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Any]:
    """Make more servers: ``redis_factory(appendonly=True, extra_args=[...])`` returns a
    started ``RedisServer``; all are stopped at teardown."""
    servers: list[RedisServer] = []

    def make(appendonly: bool = False, extra_args: tuple[str, ...] | list[str] = ()) -> RedisServer:
        server = RedisServer(
            tmp_path / f"redis-{len(servers)}", appendonly=appendonly, extra_args=extra_args
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.term()
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 3-master Redis Cluster for the session; use ``redis_cluster`` instead."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> RedisCluster:
    """The session's Redis Cluster, emptied (and healed if a test killed a master):
    ``.ports``, ``.url`` (first master), ``.nodes`` and ``.keyslot_node(key)``."""
    redis_cluster_session.flush()
    return redis_cluster_session


# --- Django -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DjangoSite]:
    """The Django test site, started once per session and reset before each test that uses
    it. ``.base_url`` is ``http://127.0.0.1:P/api/v1/``. A test that stops it must start it
    again (or use ``django_factory``)."""
    site = DjangoSite(tmp_path_factory.mktemp("django"))
    site.start()
    yield site
    site.stop()


@pytest.fixture(autouse=True)
def _reset_django_site(request: pytest.FixtureRequest) -> None:
    """Reset the shared Django site before each test that uses it (directly or through
    ``gateway_process``); tests that do not use it pay nothing."""
    if "django_site" in request.fixturenames:
        site: DjangoSite = request.getfixturevalue("django_site")
        if not site.alive:  # a previous test stopped it and did not restart it
            site.start()
        site.reset()


@pytest.fixture
def django_factory(tmp_path: Path) -> Iterator[Any]:
    """Private Django sites: ``django_factory()`` returns a started ``DjangoSite`` that this
    test may stop and start freely; all are stopped at teardown."""
    sites: list[DjangoSite] = []

    def make() -> DjangoSite:
        site = DjangoSite(tmp_path / f"django-{len(sites)}")
        sites.append(site)
        site.start()
        return site

    yield make
    for site in sites:
        site.stop()


# --- gateway and worker processes -------------------------------------------------------------
@pytest.fixture
def gateway_process(
    tmp_path: Path, django_site: DjangoSite
) -> Iterator[ProcessFactory[GatewayProcess]]:
    """Start ``python -m gateway`` nodes: ``gateway_process({"GATEWAY_REDIS_URL": url})``
    returns a ready ``GatewayProcess`` (``.port``, ``.http_url``, ``.ws_url``, ``.pid``,
    ``.term()``, ``.kill()``, ``.wait(timeout)``, ``.logs()``, ``.start()`` to restart on
    the same port). Keywords: ``port``, ``node_id``, ``django_base_url`` (default: the
    ``django_site``), ``args``, ``wait=False``. ``await gateway_process.astart(env)`` in async
    tests. All are stopped at teardown."""

    def make(
        env: dict[str, str | None] | None = None,
        django_base_url: str | None = None,
        **kw: Any,
    ) -> GatewayProcess:
        return GatewayProcess(
            tmp_path / "gateway", django_base_url or django_site.base_url, env=env, **kw
        )

    factory = ProcessFactory(make)
    yield factory
    factory.stop_all()


@pytest.fixture
def worker_process(
    tmp_path: Path, django_site: DjangoSite
) -> Iterator[ProcessFactory[WorkerProcess]]:
    """Start ``python -m worker``: like ``gateway_process``; ready when ``/healthz`` on
    ``GATEWAY_WORKER_PORT`` answers 200. Keywords: ``port``, ``worker_id``,
    ``django_base_url``, ``args``, ``wait=False``."""

    def make(
        env: dict[str, str | None] | None = None,
        django_base_url: str | None = None,
        **kw: Any,
    ) -> WorkerProcess:
        return WorkerProcess(
            tmp_path / "worker", django_base_url or django_site.base_url, env=env, **kw
        )

    factory = ProcessFactory(make)
    yield factory
    factory.stop_all()


# --- in-process gateway nodes -----------------------------------------------------------------
@pytest.fixture
async def http() -> Any:
    """One aiohttp ClientSession per test (closed afterwards)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def make_node(django_site: DjangoSite) -> Any:
    """``await make_node(redis_url=None, **settings)`` -> ``RunningNode`` in this event loop:
    real sockets, the real Django test site, memory backend unless ``redis_url`` is given.
    Every node started is stopped at teardown."""
    from tests.support.nodes import node_settings, start_node

    started = []

    async def make(redis_url: str | None = None, **overrides: Any) -> Any:
        base_url = overrides.pop("django_base_url", django_site.base_url)
        node = await start_node(node_settings(base_url, redis_url, **overrides))
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over the embedded and the Redis backend."""
    return str(request.param)


@pytest.fixture
def backend_url(backend_kind: str, request: pytest.FixtureRequest) -> str | None:
    """None for the embedded backend, a fresh redis-server's URL for Redis. Set up before
    ``make_node`` so that Redis outlives the nodes at teardown."""
    if backend_kind == "redis":
        return str(request.getfixturevalue("redis_server").url)
    return None


@pytest.fixture
async def node(backend_url: str | None, make_node: Any) -> Any:
    """One running node on the backend of ``backend_kind`` (a fresh redis-server for Redis)."""
    return await make_node(backend_url)


@pytest.fixture
def node_with(backend_url: str | None, make_node: Any) -> Any:
    """``await node_with(**settings)``: a node on this test's backend with setting overrides."""

    async def start(**overrides: Any) -> Any:
        return await make_node(backend_url, **overrides)

    return start
