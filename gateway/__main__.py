"""``gateway`` / ``python -m gateway``: settings -> app -> serve; SIGTERM drains, then exit 0.

The server's modules (aiohttp, pydantic-settings) are imported only once the command line asked
for a start: ``--help`` and ``--version`` answer from the light installation too (gateway.cli).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.cli import parse_command_line, require_server

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway")


GC_GEN0_THRESHOLD = 20_000  # Python's default is 700


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Call once started. What start-up loaded lives as long as the process: ``gc.freeze()``
    keeps it out of every later collection. A node makes many short-lived objects per frame,
    freed by reference counting anyway; collecting the youngest generation every 700 of them
    cost ~20 % of a connect's CPU (docs/benchmarks.md), so it is collected less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


async def serve(settings: Settings) -> None:
    from aiohttp import web

    from gateway.app import NODE, create_app
    from gateway.config import ConfigError
    from gateway.listen import check_port_free, startup_failure
    from gateway.logs import AccessLogger
    from gateway.wsconn import GatewayRunner

    check_port_free(settings.host, settings.port)  # before anything starts or logs "ready"
    app = create_app(settings)
    runner = GatewayRunner(app, access_log_class=AccessLogger, handle_signals=False)
    try:
        await runner.setup()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await app[NODE].stop()  # closes the Django session and the backend's connections
        failure = startup_failure(settings, exc)
        if failure is None:
            raise
        raise failure from None
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} (GATEWAY_PORT): {exc.strerror}"
        ) from None
    log.info("listening on http://%s:%d (ws path /ws)", settings.host, settings.port)
    tune_gc()
    stop = asyncio.Event()
    drain = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, drain.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(drain.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    node = app[NODE]
    if drain.is_set():
        log.info("SIGTERM: draining over %.1fs", settings.drain_seconds)
        await node.drain(settings.drain_seconds)
    else:
        log.info("SIGINT: shutting down")
        node.draining = True
    await runner.cleanup()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    parse_command_line("gateway", argv)  # --help / --version: print and exit 0
    require_server("gateway")
    from gateway.config import ConfigError, load_settings
    from gateway.logs import setup_logging

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_format, settings.log_level, settings.node_id)
    install_uvloop()
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
