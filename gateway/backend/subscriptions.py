"""A node's pub/sub: which server each wanted channel lives on, one link per server, and repair.

Every channel the node wants is, at any moment, either *placed* on the link to the server that
owns it (live once that server confirmed the subscription) or *homeless*, waiting for the repair
task. A channel leaves its link when the link dies, when the server refuses the subscribe
(``MOVED``, ``CROSSSLOT``, …) or unsubscribes it by itself (its slot moved), and when the
periodic check finds another owner (failover, resharding). The repair task then asks the
deployment again (``Topology.refresh``: the cluster's slot map, or the sentinels' master) and
places the channel on the link to its current owner, opening that link if needed. A link to a
server that owns nothing the node wants is closed: a dead master is not retried for ever.

A channel that was live and lost is reported (``on_restored``) once it is live again, so the
node's ``rejoin`` reaches clients when a join with ``since`` overlaps the live stream.

Backoff is per server and resets only when that server confirmed a subscribe: a Redis that
accepts connections and closes them (maxclients) is retried at a slowing pace, not in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable

from gateway.backend.endpoint import Endpoint
from gateway.backend.pubsub_link import CHANNEL_ERRORS, MessageHandler, PubSubLink
from gateway.backend.topology import Topology

log = logging.getLogger("gateway.pubsub")

RestoredHandler = Callable[[list[str]], None]
AVOID_S = 5.0


class SubscribeError(ConnectionError):
    """The server refused a subscribe (the error reply is the message)."""


class Backoff:
    """Exponential, jittered; ``reset()`` when the server proved usable."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 3.0) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self.not_before = 0.0

    def attempt(self) -> None:
        delay = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures += 1
        self.not_before = time.monotonic() + random.uniform(delay / 2, delay)

    def remaining(self) -> float:
        return max(0.0, self.not_before - time.monotonic())

    def reset(self) -> None:
        self.failures = 0
        self.not_before = 0.0


class Subscriptions:
    def __init__(
        self,
        topology: Topology,
        *,
        sharded: bool,
        on_message: MessageHandler,
        on_restored: RestoredHandler,
        probe_s: float = 5.0,
        subscribe_timeout_s: float = 5.0,
    ) -> None:
        self._topology = topology
        self._sharded = sharded
        self._on_message = on_message
        self._on_restored = on_restored
        self._probe_s = probe_s
        self._timeout_s = subscribe_timeout_s
        self.wanted: set[str] = set()
        self.links: dict[str, PubSubLink] = {}  # by endpoint name: the open links
        self._placed: dict[str, PubSubLink] = {}  # channel -> the link carrying it
        self._homeless: set[str] = set()  # wanted, on no link: the repair task places them
        self._lost: set[str] = set()  # were live, then lost: reported once live again
        self._moved: list[str] = []  # MOVED replies to apply to the slot map
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._impatient: set[asyncio.Future[None]] = set()  # fail at the first setback
        self._backoff: dict[str, Backoff] = {}  # per server
        self._retry: dict[str, Backoff] = {}  # per channel the server refused
        self._seen: set[str] = set()  # servers a link was ever opened to
        # channel -> (server, until): a server that just unsubscribed the channel (its slot
        # moved away) is not its owner, whatever a slot map that is a moment late says
        self._avoid: dict[str, tuple[str, float]] = {}
        self._refresh_backoff = Backoff()
        self._stale = True  # ask the deployment again before placing
        self._failing: set[str] = set()  # what is logged as down (one line per change)
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.reconnects = 0  # links opened to replace lost ones

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._repair_loop(), name="pubsub repair"),
            asyncio.create_task(self._check_loop(), name="pubsub owners"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        links = list(self.links.values())
        self.links.clear()
        for link in links:
            link.close("shutting down", report=False)
        for link in links:
            await link.wait_closed()
        for futures in self._waiters.values():
            for fut in futures:
                fut.cancel()
        self._waiters.clear()

    # --- what the backend asks ----------------------------------------------------------------
    def is_live(self, channel: str) -> bool:
        link = self._placed.get(channel)
        return link is not None and channel in link.active

    def all_live(self) -> bool:
        return all(self.is_live(channel) for channel in self.wanted)

    async def subscribe(self, channels: Iterable[str], *, impatient: bool = False) -> None:
        """Want ``channels``; return once each is confirmed by the server that owns it now.
        A channel being re-placed after a loss is waited for. Raises ``SubscribeError`` when
        the server refuses it, ``TimeoutError`` after ``subscribe_timeout_s``; with
        ``impatient``, ``ConnectionError`` at the first failed attempt to reach Redis."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for channel in channels:
            self.wanted.add(channel)
            if self.is_live(channel):
                continue  # the common case: no waiting
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(channel, []).append(fut)
            futures.append(fut)
            if impatient:
                self._impatient.add(fut)
            if channel not in self._placed and channel not in self._homeless:
                self._place(channel)
        if not futures:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                for fut in futures:
                    await fut
        finally:
            for fut in futures:
                self._impatient.discard(fut)
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning

    def unsubscribe(self, channels: Iterable[str]) -> None:
        for channel in channels:
            self.wanted.discard(channel)
            self._homeless.discard(channel)
            self._lost.discard(channel)
            self._retry.pop(channel, None)
            self._avoid.pop(channel, None)
            link = self._placed.pop(channel, None)
            if link is not None:
                link.remove(channel)

    def restart(self, channel: str, reason: str) -> None:
        """Close the link carrying ``channel`` (its channels are placed again)."""
        link = self._placed.get(channel)
        if link is not None:
            log.warning("restarting pub/sub connection to %s: %s", link.endpoint.name, reason)
            link.close(reason)

    # --- placing channels ---------------------------------------------------------------------
    def _place(self, channel: str) -> None:
        """At once when the owner is known and reachable, else by the repair task."""
        endpoint = None if self._stale else self._owner(channel)
        link = self._link_to(endpoint) if endpoint is not None else None
        if link is None:
            self._homeless.add(channel)
            self._kick.set()
            return
        self._placed[channel] = link
        link.add(channel)

    def _owner(self, channel: str) -> Endpoint | None:
        """The server the topology names for ``channel``; None while it names the server that
        has just given the channel up (the map is then asked again)."""
        endpoint = self._topology.endpoint_for(channel)
        avoid = self._avoid.get(channel)
        if avoid is not None and endpoint is not None:
            if endpoint.name == avoid[0] and time.monotonic() < avoid[1]:
                self._stale = True
                return None
            del self._avoid[channel]
        return endpoint

    def _link_to(self, endpoint: Endpoint) -> PubSubLink | None:
        """The open link to ``endpoint``, or a new one unless its backoff says wait."""
        link = self.links.get(endpoint.name)
        if link is not None:
            return link
        backoff = self._backoff.setdefault(endpoint.name, Backoff())
        if backoff.remaining() > 0:
            return None
        backoff.attempt()
        link = PubSubLink(
            endpoint,
            sharded=self._sharded,
            on_message=self._on_message,
            events=self,
            probe_s=self._probe_s,
        )
        if endpoint.name in self._seen:
            self.reconnects += 1
        self._seen.add(endpoint.name)
        self.links[endpoint.name] = link
        link.start()
        return link

    def _unplace(self, channel: str, link: PubSubLink, *, was_live: bool) -> None:
        if self._placed.get(channel) is link:
            del self._placed[channel]
        if channel in self.wanted:
            if was_live:
                self._lost.add(channel)
            self._homeless.add(channel)
            self._kick.set()

    # --- what links report (LinkEvents) -------------------------------------------------------
    def confirmed(self, link: PubSubLink, channel: str) -> None:
        if self._placed.get(channel) is not link:
            return
        self._backoff.setdefault(link.endpoint.name, Backoff()).reset()
        self._retry.pop(channel, None)
        log.debug("%s subscribed on %s", channel, link.endpoint.name)
        if link.endpoint.name in self._failing:
            self._failing.discard(link.endpoint.name)
            log.info("pub/sub connection to %s is up again", link.endpoint.name)
        for fut in self._waiters.pop(channel, ()):
            if not fut.done():
                fut.set_result(None)
        if channel in self._lost:
            self._lost.discard(channel)
            self._on_restored([channel])

    def refused(self, link: PubSubLink, channel: str, error: str) -> None:
        if self._placed.get(channel) is link:
            del self._placed[channel]
        if channel not in self.wanted:
            return
        self._retry.setdefault(channel, Backoff()).attempt()  # no refusal loop at wire speed
        if error.startswith("MOVED "):
            self._moved.append(error)  # the slot is served elsewhere: follow, keep waiting
        elif error.startswith("ASK "):
            pass  # a slot in migration: ask its owner again shortly
        else:
            if error.startswith(CHANNEL_ERRORS):  # else the link closes: that is logged
                log.warning("%s refused a subscribe to %s: %s", link.endpoint.name, channel, error)
            self._fail_waiters(channel, SubscribeError(error))
            self._stale = True
        self._homeless.add(channel)
        self._kick.set()

    def dropped(self, link: PubSubLink, channel: str) -> None:
        log.info("%s unsubscribed %s (slot moved): placing it again", link.endpoint.name, channel)
        self._avoid[channel] = (link.endpoint.name, time.monotonic() + AVOID_S)
        self._stale = True
        self._unplace(channel, link, was_live=True)

    def closed(self, link: PubSubLink, channels: set[str], live: set[str], reason: str) -> None:
        name = link.endpoint.name
        if self.links.get(name) is link:
            del self.links[name]
        if name not in self._failing and self.wanted:
            self._failing.add(name)
            verb = "lost" if link.up or live else "failed"
            log.warning("pub/sub connection to %s %s: %s", name, verb, reason)
        else:
            log.debug("pub/sub connection to %s: %s", name, reason)
        self._stale = True
        self._setback()
        for channel in channels:
            self._unplace(channel, link, was_live=channel in live)

    def _fail_waiters(self, channel: str, exc: BaseException) -> None:
        for fut in self._waiters.pop(channel, ()):
            if not fut.done():
                fut.set_exception(exc)

    def _setback(self) -> None:
        """An attempt to reach Redis failed: impatient waiters (start-up) hear of it."""
        for fut in list(self._impatient):
            if not fut.done():
                fut.set_exception(ConnectionError("Redis is not reachable"))

    # --- repair -------------------------------------------------------------------------------
    async def _repair_loop(self) -> None:
        while True:
            self._kick.clear()
            delay = await self._repair()
            if delay is None:
                await self._kick.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._kick.wait()

    async def _repair(self) -> float | None:
        """Place the homeless channels; how long to wait before trying again (None: done)."""
        self._homeless &= self.wanted
        if not self._homeless:
            return None
        if not await self._refreshed():
            return max(0.05, self._refresh_backoff.remaining())
        waits = []
        for channel in sorted(self._homeless):
            retry = self._retry.get(channel)
            if retry is not None and retry.remaining() > 0:
                waits.append(retry.remaining())
                continue
            endpoint = self._owner(channel)
            link = self._link_to(endpoint) if endpoint is not None else None
            if link is None:
                waits.append(self._backoff[endpoint.name].remaining() if endpoint else 0.2)
                continue
            self._homeless.discard(channel)
            self._placed[channel] = link
            link.add(channel)
        return max(0.05, min(waits)) if waits else None

    async def _refreshed(self) -> bool:
        """Apply MOVED replies; ask the deployment again when a loss made the map stale."""
        try:
            while self._moved:
                await self._topology.moved(self._moved.pop(0))
            if self._stale:
                if self._refresh_backoff.remaining() > 0:
                    return False
                self._refresh_backoff.attempt()
                await self._topology.refresh()
                self._stale = False
        except Exception as exc:
            if "topology" not in self._failing:
                self._failing.add("topology")
                log.warning("cannot learn where Redis serves the channels: %s", exc)
            self._setback()
            return False
        self._refresh_backoff.reset()
        if "topology" in self._failing:
            self._failing.discard("topology")
            log.info("Redis topology known again")
        return True

    async def _check_loop(self) -> None:
        """Every probe interval: close idle links and, where owners change (Cluster,
        Sentinel), move every channel whose owner is not the server it is placed on."""
        while True:
            await asyncio.sleep(self._probe_s)
            for name, link in list(self.links.items()):
                if not link.channels:
                    del self.links[name]
                    link.close("no channel left", report=False)
            if not self._topology.changes or not self._placed:
                continue
            try:
                await self._topology.refresh()
            except Exception as exc:
                log.debug("periodic topology refresh failed: %s", exc)
                continue
            self._move_misplaced()

    def _move_misplaced(self) -> None:
        for channel, link in list(self._placed.items()):
            owner = self._topology.endpoint_for(channel)
            if owner is not None and owner.name != link.endpoint.name:
                log.info("%s moved from %s to %s", channel, link.endpoint.name, owner.name)
                was_live = channel in link.active
                link.remove(channel)
                self._unplace(channel, link, was_live=was_live)
