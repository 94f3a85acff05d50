"""One pub/sub connection to one Redis server, for that connection's whole life.

We speak RESP on our own asyncio stream (parsed by hiredis) instead of redis-py's PubSub because
we must *know* when a subscription was lost: redis-py resubscribes silently, hiding the window in
which publications were missed. A link reports every outcome to its owner (``LinkEvents``):
each confirmed subscription, each error reply to a subscribe (``MOVED``, ``CROSSSLOT``, ACL…),
each channel the server unsubscribed by itself (its slot moved away), and the end of the
connection with the channels it carried. A link never reconnects: its owner
(``gateway.backend.subscriptions``) decides which server each channel belongs on next.

Each channel is subscribed with its own command: on Redis Cluster an ``SSUBSCRIBE`` naming
channels of different slots is refused whole (``CROSSSLOT``), even when one master owns them all.
Replies are matched to commands in order (Redis answers in order), so an error names its channel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import hiredis

from gateway.backend.batch import pack_command
from gateway.backend.endpoint import Endpoint

log = logging.getLogger("gateway.pubsub")

MessageHandler = Callable[[str, bytes], None]


class LinkEvents(Protocol):
    """What a link tells its owner. Each call names the link: a late report from a link the
    owner has already replaced is recognised and ignored."""

    def confirmed(self, link: PubSubLink, channel: str) -> None:
        """The server confirmed the subscription: publications flow from now on."""

    def refused(self, link: PubSubLink, channel: str, error: str) -> None:
        """The server answered the subscribe with an error; the channel left this link."""

    def dropped(self, link: PubSubLink, channel: str) -> None:
        """The server unsubscribed a confirmed channel by itself (its slot moved away)."""

    def closed(self, link: PubSubLink, channels: set[str], live: set[str], reason: str) -> None:
        """The connection ended (or never opened). ``channels`` it carried; ``live`` those of
        them that were confirmed (their publications may have been missed)."""


class PubSubLink:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        sharded: bool,
        on_message: MessageHandler,
        events: LinkEvents,
        probe_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self._on_message = on_message
        self._events = events
        self._probe_s = probe_s
        self._connect_timeout_s = connect_timeout_s
        self._sub_cmd = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsub_cmd = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self.channels: set[str] = set()  # assigned to this link
        self.active: set[str] = set()  # confirmed by the server on this connection
        self._sent: set[str] = set()  # subscribe sent, not answered yet
        # the replies this connection still owes, oldest first: ("sub"|"unsub"|"ping", channel)
        self._owed: collections.deque[tuple[str, str]] = collections.deque()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_rx = time.monotonic()
        self._close_reason: str | None = None
        self._report = True
        self.up = False  # connected: commands go out now
        self.done = False  # the connection is over; this link is finished

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pubsub {self.endpoint.name}")

    def add(self, channel: str) -> None:
        """Carry ``channel``: subscribed now if connected, else as soon as connected."""
        self.channels.add(channel)
        if self.up and channel not in self._sent and channel not in self.active:
            self._subscribe(channel)

    def remove(self, channel: str) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        was_sent = channel in self.active or channel in self._sent
        self.active.discard(channel)
        self._sent.discard(channel)
        if was_sent and self.up:
            self._owed.append(("unsub", channel))
            self._send(self._unsub_cmd, channel)

    def close(self, reason: str, *, report: bool = True) -> None:
        """End the connection; with ``report``, the owner hears ``closed`` as for a loss."""
        if self.done or self._close_reason is not None:
            return
        self._close_reason = reason
        self._report = report
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- the connection's life ---------------------------------------------------------------
    async def _run(self) -> None:
        reason = "connection closed"
        try:
            reader, self._writer = await asyncio.wait_for(self._open(), self._connect_timeout_s)
            self.up = True
            self._last_rx = time.monotonic()
            for channel in sorted(self.channels):
                self._subscribe(channel)
            probe = asyncio.create_task(self._probe_loop())
            try:
                await self._read_loop(reader)
            finally:
                probe.cancel()
        except asyncio.CancelledError:
            if self._close_reason is None:
                self._finish("cancelled", report=False)
                raise
            reason = self._close_reason
        except (OSError, TimeoutError, ConnectionError, hiredis.ProtocolError) as exc:
            reason = str(exc) or type(exc).__name__
        except Exception as exc:  # a bug here must not leave the channels on a dead link
            log.exception("pub/sub connection to %s failed", self.endpoint.name)
            reason = f"internal error: {exc!r}"
        self._finish(reason, report=self._report)

    def _finish(self, reason: str, *, report: bool) -> None:
        self.up = False
        self.done = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        channels, live = set(self.channels), set(self.active)
        self.active.clear()
        self._sent.clear()
        if report:
            self._events.closed(self, channels, live, reason)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ep = self.endpoint
        if ep.unix_path:
            reader, writer = await asyncio.open_unix_connection(ep.unix_path)
        else:
            ctx = ssl.create_default_context() if ep.use_ssl else None
            reader, writer = await asyncio.open_connection(ep.host, ep.port, ssl=ctx)
        if ep.password is not None:
            auth = ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
            writer.write(pack_command(auth))
            parser = hiredis.Reader()
            while (reply := parser.gets()) is False:
                chunk = await reader.read(4096)
                if not chunk:
                    writer.close()
                    raise ConnectionError("connection closed during AUTH")
                parser.feed(chunk)
            if isinstance(reply, hiredis.ReplyError):
                writer.close()
                raise ConnectionError(f"AUTH failed: {reply}")
        return reader, writer

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self._last_rx = time.monotonic()
            parser.feed(chunk)
            while (reply := parser.gets()) is not False:
                self._dispatch(reply)

    async def _probe_loop(self) -> None:
        """PING through the subscribed connection; a silent connection is closed."""
        while True:
            await asyncio.sleep(self._probe_s)
            self._owed.append(("ping", ""))
            self._send("PING")
            await asyncio.sleep(self._probe_s)
            if time.monotonic() - self._last_rx > 2 * self._probe_s:
                log.warning("pub/sub connection to %s is silent: closing it", self.endpoint.name)
                self.close("no answer to PING")
                return

    # --- commands and replies ----------------------------------------------------------------
    def _subscribe(self, channel: str) -> None:
        self._sent.add(channel)
        self._owed.append(("sub", channel))
        self._send(self._sub_cmd, channel)

    def _send(self, *parts: str | bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(pack_command(parts))

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            self._error(str(reply))
            return
        if not isinstance(reply, list) or not reply:
            if reply == b"PONG":  # a PING while nothing was subscribed: a plain answer
                self._answered("ping")
            return
        kind = reply[0]
        if kind in (b"message", b"smessage"):
            channel = reply[1].decode()
            if channel in self.channels:  # not one being unsubscribed (moved elsewhere)
                self._on_message(channel, reply[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self._answered("sub")
            self._confirmed(reply[1].decode())
        elif kind in (b"unsubscribe", b"sunsubscribe"):
            channel = reply[1].decode()
            if self._owed and self._owed[0] == ("unsub", channel):
                self._owed.popleft()  # the answer to our own unsubscribe
            elif channel in self.active:
                self._server_unsubscribed(channel)
        elif kind == b"pong":
            self._answered("ping")

    def _answered(self, kind: str) -> tuple[str, str] | None:
        if self._owed and self._owed[0][0] == kind:
            return self._owed.popleft()
        return None

    def _confirmed(self, channel: str) -> None:
        self._sent.discard(channel)
        if channel in self.channels:
            self.active.add(channel)
            self._events.confirmed(self, channel)

    def _server_unsubscribed(self, channel: str) -> None:
        self.active.discard(channel)
        self.channels.discard(channel)
        self._events.dropped(self, channel)

    def _error(self, error: str) -> None:
        kind, channel = self._owed.popleft() if self._owed else ("", "")
        if kind == "sub":
            self._sent.discard(channel)
            if channel in self.channels:
                self.channels.discard(channel)
                self._events.refused(self, channel, error)
            if error.startswith(CHANNEL_ERRORS):
                return
        # Not about one channel (maxclients, LOADING, a refused PING or UNSUBSCRIBE...): this
        # connection is not usable; its owner places the channels again.
        self.close(f"error from the server: {error}")


# Error replies about one channel's subscribe; any other error closes the connection.
CHANNEL_ERRORS = ("MOVED ", "ASK ", "CROSSSLOT", "NOPERM", "TRYAGAIN", "CLUSTERDOWN")
