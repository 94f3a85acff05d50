"""The protocol as data: an AsyncAPI 3.1 document generated from the pydantic models the node
validates with (``gateway.protocol``) and the models of what it sends (``models``). Served at
``GET /asyncapi.json``; ``python -m gateway.asyncapi`` prints it."""

from __future__ import annotations

import functools

import orjson

from gateway.asyncapi.document import build_document

__all__ = ["build_document", "document_bytes"]


@functools.cache
def document_bytes() -> bytes:
    """The document as JSON, built once per process."""
    return orjson.dumps(build_document(), option=orjson.OPT_INDENT_2)
