"""Logging: text for people, one JSON object per line for machines (GATEWAY_LOG_FORMAT=json).

Access logs name the path only, never the query string (it may carry ``?token=``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

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


def setup_logging(fmt: str, level: str, node_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s")
        )
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
