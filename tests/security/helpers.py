"""Helpers for the security tests: Prometheus scraping, RSS of a process, the publish API.
Everything runs against real nodes, a real redis-server and the real Django site."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
from typing import Any

import aiohttp
import orjson

from tests.support.nodes import API_KEY

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


async def metric(http: aiohttp.ClientSession, base_url: str, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0.0 when the sample does not exist yet)."""
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        have = set((match.group(2) or "{}")[1:-1].split(",")) - {""}
        if want <= have:
            return float(match.group(3))
    return 0.0


def rss_kib(pid: int) -> int:
    """Resident set size of a live process, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def api_publish(
    http: aiohttp.ClientSession,
    base_url: str,
    room: str,
    payload: Any,
    type_: str = "notice",
    key: str = API_KEY,
) -> dict[str, Any]:
    async with http.post(
        f"{base_url}/api/publish",
        json={"room": room, "type": type_, "payload": payload},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


class RawWebSocket:
    """A WebSocket client written by hand on a plain socket with a tiny receive buffer, so a
    test can stop reading and have the server's writes back up at once (no large kernel or
    library buffer on our side hides a slow reader)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str = "/ws", rcvbuf: int = 4096, after: bytes = b""
    ) -> Any:
        """``path`` may carry a query; ``after``: bytes sent with the request (early frames)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            + after
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        assert {k.lower(): v for k, v in headers.items()}["sec-websocket-accept"] == accept
        return cls(reader, writer)

    async def send_json(self, obj: Any) -> None:
        payload = orjson.dumps(obj)
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes((0x81, 0x80 | n))
        elif n < 65536:
            header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers do not mask nor fragment ours)."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def send_frame(self, frame: bytes) -> None:
        """Raw bytes (``tests.unit.test_frame_reader.client_frame`` builds frames)."""
        self.writer.write(frame)
        await self.writer.drain()

    def half_close(self) -> None:
        """TCP FIN: nothing more will be sent, but we still read."""
        self.writer.write_eof()

    async def read_close(
        self, timeout_s: float = 10.0
    ) -> tuple[int, bytes, list[tuple[int, bytes]]]:
        """Read up to the server's close frame: (its code, its reason, the frames before it)."""
        before: list[tuple[int, bytes]] = []
        while True:
            opcode, payload = await asyncio.wait_for(self.read_frame(), timeout_s)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:], before
            before.append((opcode, payload))

    async def read_eof(self, timeout_s: float = 10.0) -> bytes:
        """Everything until the server ends TCP (fails if it does not within ``timeout_s``)."""
        return await asyncio.wait_for(self.reader.read(), timeout_s)

    async def read_json(self) -> dict[str, Any]:
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x1:
                result: dict[str, Any] = orjson.loads(payload)
                return result
            assert opcode in (0x9, 0xA), (opcode, payload[:100])  # pings: not answered

    def close(self) -> None:
        self.writer.transport.abort()
