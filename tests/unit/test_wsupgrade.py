"""The first request as the /ws fast path reads it (gateway.wsupgrade): only the plain upgrade
is taken; everything else is left to aiohttp (None)."""

from __future__ import annotations

import pytest

from gateway.wsupgrade import Upgrade, parse_upgrade, switching_protocols

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example


def head(target: str = "/ws", *extra: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [
        f"{method} {target} {version}",
        "Host: gw.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return "\r\n".join(lines).encode()


def test_the_plain_upgrade_is_taken_with_token_origin_and_forwarded_for() -> None:
    parsed = parse_upgrade(
        head(
            "/ws?x=1&token=a%2Bb+c&token=second",
            "Origin: https://app.example",
            "X-Forwarded-For: 10.0.0.1",
            "x-forwarded-for: 10.0.0.2",
        )
    )
    assert parsed == Upgrade(KEY, "a+b c", "https://app.example", "10.0.0.1, 10.0.0.2")
    assert parse_upgrade(head()) == Upgrade(KEY, None, None, None)


def test_header_names_and_tokens_are_case_insensitive() -> None:
    raw = head().replace(b"Upgrade: websocket", b"UPGRADE:   WebSocket  ")
    raw = raw.replace(b"Connection: Upgrade", b"connection: keep-alive, Upgrade")
    assert parse_upgrade(raw) is not None


@pytest.mark.parametrize(
    "raw",
    [
        head("/ws/"),
        head("/other"),
        head("http://gw.example/ws"),
        head(method="POST"),
        head(version="HTTP/1.0"),
        head().replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        head().replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        head().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        head().replace(KEY.encode(), b"not base64!"),
        head().replace(KEY.encode(), b"c2hvcnQ="),  # 5 bytes, not 16
        head("/ws", "Content-Length: 0"),
        head("/ws", " folded continuation"),
        head("/ws", "No-Colon-Here"),
        head("/ws", "Space-Before-Colon : x"),
        b"GET /ws",
    ],
)
def test_anything_else_is_left_to_aiohttp(raw: bytes) -> None:
    assert parse_upgrade(raw) is None


def test_the_accept_key_is_rfc_6455s() -> None:
    answer = switching_protocols(KEY)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")
