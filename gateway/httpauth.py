"""Secrets on HTTP: Bearer (and, for dashboard GETs, Basic) compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def basic_password(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


def matches(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def unauthorized(message: str, *, basic_realm: str | None = None) -> web.Response:
    challenge = f'Basic realm="{basic_realm}"' if basic_realm else "Bearer"
    headers = {"WWW-Authenticate": challenge}
    return web.json_response(
        {"error": "unauthorized", "message": message}, status=401, headers=headers
    )
