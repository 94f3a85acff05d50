"""``gateway-worker`` / ``python -m worker``: settings -> jobs; SIGTERM finishes, then exit 0."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from gateway.cli import parse_command_line, require_server

log = logging.getLogger("worker")

NEEDS_REDIS = (
    "gateway-worker: the worker needs GATEWAY_REDIS_URL; in embedded mode the node runs the "
    "janitor itself and there is no ingest stream"
)


def main(argv: Sequence[str] | None = None) -> None:
    parse_command_line("gateway-worker", argv)  # --help / --version: print and exit 0
    require_server("gateway-worker")
    from gateway.__main__ import install_uvloop
    from gateway.config import ConfigError, load_settings
    from gateway.logs import setup_logging

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"gateway-worker: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.redis_url is None:
        print(NEEDS_REDIS, file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_format, settings.log_level, settings.worker_id)
    install_uvloop()
    from worker.main import serve

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
