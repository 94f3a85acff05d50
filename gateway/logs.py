"""Logging: text for people, one JSON object per line for machines (GATEWAY_LOG_FORMAT=json).

Access logs name the path only, never the query string (it may carry ``?token=``). A request
aiohttp cannot parse is logged by ``QuietRequestHandler`` without its request line or headers,
which may hold a token as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Response, StreamResponse
from aiohttp.web_protocol import RequestHandler

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self.node_id,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """At most one ``write()`` per ``FLUSH_S`` while lines come in bursts; a line after a quiet
    spell is written at once.

    A node logs a line per connection and per disconnect; a ``write()`` per line was ~10 % of a
    connect's CPU in a connect storm. A line that follows another by less than ``FLUSH_S`` waits
    for the end of that window (at most ``FLUSH_S``) and goes out with the rest of the burst.
    Lines at WARNING and above, and lines logged outside a running loop (start-up, shutdown,
    other threads), are written at once, after what was buffered before them, so order is kept.
    ``flush()`` (at exit too) writes what is left.
    """

    FLUSH_S = 0.02
    MAX_BUFFERED = 1000  # lines; more are written at once

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._buffer: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_write = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # logging must not raise; handleError reports it
            self.handleError(record)
            return
        self._buffer.append(line)
        if self._timer is not None and len(self._buffer) < self.MAX_BUFFERED:
            if record.levelno >= logging.WARNING:
                self._write()
            return  # the window's timer writes it
        wait = self._last_write + self.FLUSH_S - time.monotonic()
        if record.levelno >= logging.WARNING or wait <= 0 or self._timer is not None:
            self._write()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        self._timer = loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._timer = None
            self._write()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = "".join(self._buffer)
        self._buffer.clear()
        self._last_write = time.monotonic()
        try:
            self.stream.write(data)
            self.stream.flush()
        except Exception:  # e.g. a closed pipe: nowhere left to say it
            pass

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._write()


def setup_logging(fmt: str, level: str, node_id: str) -> None:
    handler = BufferedStreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s")
        )
    # What no format here prints, the logging module need not look up for every record (the
    # logging HOWTO's "Optimization"): the caller's file and line (a walk up the stack), the
    # thread, the process id (a system call) and the multiprocessing process name.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # per-request access lines are DEBUG material on a busy gateway
    logging.getLogger("aiohttp.access").setLevel(max(logging.getLevelName(level), logging.INFO))


class AccessLogger(AbstractAccessLogger):
    """``METHOD /path STATUS bytes seconds``: no query string, no headers. WebSocket upgrades
    (101) are left out: the node logs each connection's end, with its close code."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if response.status == 101:
            return
        self.logger.info(
            "%s %s %s %s %.3fs",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


class QuietRequestHandler(RequestHandler):
    """aiohttp's request handler, but a request it cannot parse (a raw space or a control byte
    in ``GET /ws?token=…``, a bad header) is answered with a fixed 400 and logged as one line
    naming the peer and the kind of error: aiohttp would log the request line at ERROR, with
    a traceback, and echo it in the body, token and all."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if status >= 500:  # a fault of ours, not a malformed request: aiohttp's report
            return super().handle_error(request, status, exc, message)
        logging.getLogger("gateway.http").info(
            "unparsable HTTP request from %s: %s (%d)", request.remote, type(exc).__name__, status
        )
        response = Response(status=status, text=f"{status} {HTTPStatus(status).phrase}\n")
        response.force_close()
        return response
