"""The command lines of ``gateway`` and ``gateway-worker``: ``--help`` and ``--version``.

Both commands are configured by ``GATEWAY_*`` environment variables only; their command line is
for a person asking what they are. Answering never starts anything, and works from the light
installation too (``pip install django-ws-gateway``, without the ``[server]`` extra), where the
commands then say which extra to install instead of failing with an ``ImportError``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import textwrap
from collections.abc import Sequence

from gateway import __version__

SERVER_MODULES = ("aiohttp", "pydantic_settings", "prometheus_client")
EXIT_USAGE = 2
WIDTH = 79

GATEWAY_DESCRIPTION = (
    "Run one WebSocket node of django-ws-gateway: /ws, /socket.io/, the dashboard, /metrics, "
    "health and the publish API. Without GATEWAY_REDIS_URL it runs embedded (everything in "
    "memory, one process); with it, any number of nodes share one Redis. SIGTERM drains the "
    "node's clients over GATEWAY_DRAIN_SECONDS, then exits 0."
)
WORKER_DESCRIPTION = (
    "Run the background worker of django-ws-gateway: the ingest stream (XADD gateway:ingest), "
    "the janitor and the events-per-minute rollups; it serves /metrics and /healthz on "
    "GATEWAY_WORKER_PORT. It needs GATEWAY_REDIS_URL."
)
EPILOG_HEAD = (
    "Configuration comes from environment variables only (a .env file in the working "
    "directory is honoured). Every variable, with its default:"
)
EPILOG_TAIL = "Documentation: README.md and docs/ in the repository."


def parse_command_line(prog: str, argv: Sequence[str] | None = None) -> None:
    """Answer ``--help`` / ``--version`` and exit 0; refuse anything else with exit 2;
    return when there is nothing on the command line (then the caller starts)."""
    description = WORKER_DESCRIPTION if prog == "gateway-worker" else GATEWAY_DESCRIPTION
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(description, WIDTH),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.parse_args(sys.argv[1:] if argv is None else list(argv))


def _epilog() -> str:
    lines = [textwrap.fill(EPILOG_HEAD, WIDTH)]
    lines += [f"  {name:<38} {default}" for name, default in settings_defaults()]
    lines.append(EPILOG_TAIL)
    return "\n".join(lines)


def settings_defaults() -> list[tuple[str, str]]:
    """``(GATEWAY_NAME, default)`` for every setting, or a pointer to the docs when the
    settings module cannot be imported (the light installation has no pydantic-settings)."""
    if not server_installed():
        return [("(install the [server] extra to list them here)", "")]
    from gateway.config import ENV_PREFIX, Settings

    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "hostname-pid" if name.endswith("_id") else "empty"
        elif field.default is None:
            default = "unset"
        else:
            default = str(field.default)
        rows.append((f"{ENV_PREFIX}{name.upper()}", default))
    return rows


def server_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in SERVER_MODULES)


def require_server(prog: str) -> None:
    """Exit 2 with one line when the server's dependencies are not installed."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"{prog}: the server is not installed (missing {', '.join(missing)}): "
            "pip install 'django-ws-gateway[server]' (the plain package only publishes)",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)


def testclients() -> None:
    """Entry point of ``gateway-testclients``: it needs aiohttp (``[client]`` or ``[server]``)."""
    if importlib.util.find_spec("aiohttp") is None:
        print(
            "gateway-testclients: aiohttp is not installed: "
            "pip install 'django-ws-gateway[client]' (or [server])",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)
    from gateway.testclients import main

    sys.exit(main())
