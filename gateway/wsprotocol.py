"""What every WebSocket connection of a node shares once upgraded, whichever protocol rides on it
(``/ws`` JSON frames: gateway.wsconn; Engine.IO: gateway.socketio through gateway.wstakeover):
the client's frames read by ``FrameReader`` (gateway.wsframes), with every resource the client
controls bounded.

- **Pongs have backpressure.** A ping is answered at once while the socket's write buffer is
  below its high-water mark (``WRITE_HIGH_WATER``, the mark the session keeps event frames
  under too). Above it, the pong is held (only the latest: RFC 6455 section 5.5.3 allows it)
  and reading stops until the buffer drains to the low-water mark; then the pong goes out and
  reading resumes. A client that pings without reading its pongs therefore fills nothing but
  its own socket, and is closed with 1008 once a pong has waited ``PONG_STALL_S``
  (CONTRACT section 2). A held pong also means the client is not "seen" by the heartbeat.
- **Reading pauses for two reasons**, kept apart (``PAUSE_INBOX``: frames read ahead of the
  node; ``PAUSE_PONG``: a held pong): it resumes when neither holds.
- **Half-close keeps the write side open.** A client that sends its last frames and then
  shuts down its side (TCP FIN) still reads: ``eof_received`` keeps the transport open, and the
  subclass ends the connection once the replies to those frames are written
  (``ServerClose.peer_gone``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.session import TRANSPORT_HIGH_WATER
from gateway.wsframes import POLICY_VIOLATION, FrameReader

WRITE_HIGH_WATER = TRANSPORT_HIGH_WATER
WRITE_LOW_WATER = TRANSPORT_HIGH_WATER // 4
PAUSE_INBOX = 1
PAUSE_PONG = 2


class FrameProtocol(FrameReader, asyncio.Protocol):
    """An asyncio Protocol reading client frames; subclasses handle messages and say how a pong
    is written (``send_pong``) and what a half-close means (``on_eof``)."""

    __slots__ = (
        "_closed_waiter",
        "_held_pong",
        "_lost",
        "_on_lost",
        "_paused",
        "_pong_timer",
        "_transport",
        "_writing_paused",
        "pong_stall_s",
    )

    def __init__(self, max_size: int, pong_stall_s: float) -> None:
        super().__init__(max_size)
        self.pong_stall_s = pong_stall_s  # a held pong unsent this long: close 1008
        self._transport: Any = None
        self._paused = 0  # PAUSE_* bits: reading is paused while any is set
        self._writing_paused = False  # the write buffer is over its high-water mark
        self._held_pong: bytes | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._on_lost: Callable[[BaseException | None], None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None

    # --- what subclasses provide ------------------------------------------------------------
    def send_pong(self, payload: bytes) -> None: ...

    def on_eof(self) -> None:
        """The client half-closed (no more frames will come): end the connection when done."""

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def attach(self, transport: Any) -> None:
        """Start reading ``transport`` (from ``connection_made``, or when taken over from
        aiohttp after an upgrade it answered: gateway.wstakeover)."""
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self._writing_paused = transport.get_write_buffer_size() > WRITE_HIGH_WATER

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def eof_received(self) -> bool | None:
        self.on_eof()
        return True  # the subclass closes the transport once the replies are out

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        pong = self._held_pong
        if pong is not None:
            self._held_pong = None
            self._cancel_pong_timer()
            self.send_pong(pong)
            self.resume(PAUSE_PONG)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._held_pong = None
        self._cancel_pong_timer()
        if self._on_lost is not None:
            self._on_lost(exc)
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_closed(self) -> None:
        """Until the TCP connection is gone."""
        if self._lost:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await self._closed_waiter

    # --- reading ------------------------------------------------------------------------------
    def pause(self, reason: int) -> None:
        if not self._paused and not self._lost:
            self._transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and not self._lost:
            self._transport.resume_reading()

    # --- pings (FrameReader callback) ---------------------------------------------------------
    def on_ping(self, payload: bytes) -> None:
        if not self._writing_paused and self._held_pong is None:
            self.send_pong(payload)
            return
        self._held_pong = payload  # the latest ping is the one answered (RFC 6455 5.5.3)
        self.pause(PAUSE_PONG)
        if self._pong_timer is None:
            loop = asyncio.get_running_loop()
            self._pong_timer = loop.call_later(self.pong_stall_s, self._pong_stalled)

    @property
    def pong_held(self) -> bool:
        return self._held_pong is not None

    def _pong_stalled(self) -> None:
        self._pong_timer = None
        if self._held_pong is not None and not self.failed:
            self._held_pong = None
            self._violate(POLICY_VIOLATION, "pings sent faster than the pongs are read")

    def _cancel_pong_timer(self) -> None:
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
