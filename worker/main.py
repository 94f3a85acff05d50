"""The worker process: its jobs under supervision, signals, and ``/metrics`` + ``/healthz``.

Jobs (each a coroutine that returns when ``stopping`` is set):
- ``ingest``: the consumer of the ingest stream (``worker.ingest.IngestConsumer``);
- ``ingest-stats``: consumer-group gauges and stream trimming (``worker.ingest.IngestStats``);
- ``janitor``: dead nodes' state, under a lease (``worker.janitor.Janitor``);
- ``rollups``: the events-per-minute series, under a lease (``worker.rollups.Rollups``);
- ``presence``: online/offline changes POSTed to Django, under a lease (``worker.presence``).
Each job handles Redis outages itself (log once, back off, retry); a job that crashes on an
unexpected error is logged and restarted after a backoff, so one bug does not stop the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.backend.factory import history_policy
from gateway.backend.redis import make_client
from gateway.backend.sentinel import aclose_sentinels
from gateway.config import ConfigError, Settings
from worker.ingest import IngestConsumer, IngestStats
from worker.janitor import Janitor
from worker.metrics import WorkerMetrics
from worker.presence import PresenceFeed
from worker.retry import Backoff
from worker.rollups import Rollups

log = logging.getLogger("worker")

SHUTDOWN_GRACE_S = 10.0  # for the batch in hand to be published and acknowledged


class Worker:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        if settings.redis_url is None:
            raise ConfigError("the worker needs GATEWAY_REDIS_URL")
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.client = client or make_client(settings.redis_url, cluster=settings.cluster_mode)
        self.stopping = asyncio.Event()
        m, stop = self.metrics, self.stopping
        self.ingest = IngestConsumer(self.client, settings, history_policy(settings), m, stop)
        self.jobs: dict[str, Callable[[], Awaitable[None]]] = {
            "ingest": self.ingest.run,
            "ingest-stats": IngestStats(self.client, settings, m, stop).run,
            "janitor": Janitor(self.client, settings, m, stop).run,
            "rollups": Rollups(self.client, settings, m, stop).run,
        }
        if settings.django_presence_path:  # the feed runs only where Django wants it
            self.jobs["presence"] = PresenceFeed(self.client, settings, m, stop).run
        self.port = settings.worker_port
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._started = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self._serve_http()
        self._tasks = [
            asyncio.create_task(self._supervise(name, job), name=f"worker {name}")
            for name, job in self.jobs.items()
        ]
        s = self.settings
        log.info(
            "worker %s started: consumer of %s (batch %d, claim after %gs), janitor every %gs",
            s.worker_id,
            self.ingest.stream,
            s.ingest_batch,
            s.ingest_claim_idle_s,
            s.janitor_interval_s,
        )

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop reading, let the batch in hand finish (entries not acknowledged in time stay
        pending for another worker to claim), then close the HTTP server and Redis client."""
        self.stopping.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in late:
                log.warning("%s did not finish within %gs; cancelling it", task.get_name(), grace_s)
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingest.event_log.aclose()  # the dashboard's summary of what was ingested
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(Exception):
            await self.client.aclose()
            await aclose_sentinels(self.client)

    async def _supervise(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        while not self.stopping.is_set():
            try:
                await job()
            except Exception:
                self.metrics.errors.labels(name).inc()
                log.exception("worker job %s crashed; restarting it", name)
                await backoff.wait(self.stopping)

    # --- HTTP: /metrics and /healthz ----------------------------------------------------------
    async def _serve_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        s = self.settings
        site = web.TCPSite(self._runner, s.worker_host, s.worker_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"cannot listen on {s.worker_host}:{s.worker_port} (GATEWAY_WORKER_PORT): "
                f"{exc.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])  # the real port when 0 was asked for
        log.info("metrics on http://%s:%d/metrics", s.worker_host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        """200 while the process lives (a Redis outage is retried, not fatal)."""
        jobs = {t.get_name().removeprefix("worker "): not t.done() for t in self._tasks}
        return web.json_response(
            {
                "status": "ok",
                "worker": self.settings.worker_id,
                "stopping": self.stopping.is_set(),
                "uptimeSeconds": round(time.monotonic() - self._started, 1),
                "jobs": jobs,
            }
        )


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    worker = Worker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await worker.start()
    except BaseException:
        await worker.stop()
        raise
    await stop.wait()
    log.info("%s: finishing the batch in hand, then stopping", received[0])
    await worker.stop()
    log.info("stopped")
