"""Socket.IO without sticky sessions (contract §7): three real nodes on one real Redis behind a
real nginx that sends every HTTP request to the next node in turn (round-robin), driven by the
real socket.io-client with its defaults (long-polling first, then the upgrade) or with
``transports: ["polling"]``. Every long-poll, POST and upgrade that reaches a node other than
the session's owner is forwarded through Redis, and everything still arrives exactly once, in
order, across a node killed (SIGKILL) or drained (SIGTERM) mid-session, through Socket.IO's own
connection state recovery.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.publish import AsyncPublisher
from tests.js.sio_driver import DriverError, SioDriver

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
from launch import Topology

pytestmark = [pytest.mark.node, pytest.mark.nginx]

ROOM = "service_42"
HISTORY = 1000  # events kept per room: more than a test publishes while a client is away
DEFAULTS: dict[str, Any] = {"transports": None}  # io(url, {auth}): polling, then the upgrade
UPSTREAM = re.compile(r'"(GET|POST) /socket\.io/ HTTP/1\.1" (\d+) .* upstream=(\S+)')


@contextmanager
def cluster(django_site: Any, **env: str) -> Iterator[Topology]:
    settings = {"GATEWAY_PUBSUB_PROBE_S": "0.5", "GATEWAY_HISTORY_SIZE": str(HISTORY), **env}
    with Topology(
        nodes=3,
        worker=False,
        django_url=django_site.base_url,
        balancing="round_robin",
        drain_seconds=1.0,
        env=settings,
    ) as topo:
        yield topo


def socketio_upstreams(topo: Topology) -> dict[str, set[str]]:
    """The nodes nginx sent each kind of Socket.IO request to (its access log)."""
    seen: dict[str, set[str]] = {"GET": set(), "POST": set()}
    for match in UPSTREAM.finditer((topo.dir / "nginx" / "access.log").read_text()):
        seen[match[1]].add(match[3])
    return seen


def node_pid(topo: Topology, node_id: str) -> int:
    return topo.pids[node_id]


async def events_of(client: SioDriver, room: str, count: int, timeout_s: float) -> list[int]:
    """The offsets of the next ``count`` ``event``s of ``room``, in arrival order."""
    offsets: list[int] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(offsets) < count:
                line = await client.expect("event", timeout_s, name="event")
                if line["data"]["room"] == room:
                    offsets.append(line["data"]["offset"])
    except (TimeoutError, DriverError):
        summary = [_brief(line) for line in client.lines if line.get("name") != "event"]
        runs = _runs(offsets)
        raise AssertionError(f"{len(offsets)} of {count} events: {runs}; {summary}") from None
    return offsets


def _runs(offsets: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]: what arrived, in order, in short."""
    runs: list[tuple[int, int]] = []
    for offset in offsets:
        if runs and offset == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], offset)
        else:
            runs.append((offset, offset))
    return runs


def _brief(line: dict[str, Any]) -> Any:
    return {k: v for k, v in line.items() if k not in ("data", "args")} | (
        {"data": line.get("data")} if line.get("kind") != "event" else {}
    )


async def publish(topo: Topology, count: int, *, at: int = -1, then: Any = None) -> None:
    """``count`` events to ROOM through Django's publisher; ``then()`` after event ``at``."""
    publisher = AsyncPublisher.from_url(topo.redis_url, history_size=HISTORY)
    try:
        for n in range(count):
            await publisher.publish(ROOM, "tick", {"n": n})
            if n == at:
                then()
            await asyncio.sleep(0.004)
    finally:
        await publisher.aclose()


async def test_default_client_polls_upgrades_and_works_on_any_node(django_site: Any) -> None:
    with cluster(django_site) as topo:
        async with (
            await SioDriver.start(topo.lb_url, token="cliente-7", options=DEFAULTS) as client,
            await SioDriver.start(topo.lb_url, token="proveedor-3", options=DEFAULTS) as other,
        ):
            connect = await client.expect("connect", 15)
            me = (await client.expect("event", 15, name="auth_success"))["data"]
            assert me["connectionId"] == connect["id"] and me["userId"] == "7"
            assert (await client.expect("upgrade", 15))["transport"] == "websocket"
            await other.expect("upgrade", 15)

            joined = await client.request("join_room", {"room": ROOM})
            assert joined["offset"] == 0
            assert (await other.request("join_room", {"room": ROOM}))["offset"] == 0
            await publish(topo, 20)
            assert await events_of(client, ROOM, 20, 15) == list(range(1, 21))
            assert await events_of(other, ROOM, 20, 15) == list(range(1, 21))

            # an event with an acknowledgement, delivered to the other client's room
            ack = await client.request("comment_created", {"servicioId": "42", "text": "hola"})
            assert set(ack) == {"event", "eventId"}
            line = await other.expect("event", 10, name="event")
            assert (line["data"]["id"], line["data"]["offset"]) == (ack["eventId"], 21)
            presence = await other.request("presence", {"room": ROOM})
            assert sorted(m["userId"] for m in presence["members"]) == ["3", "7"]

        # no stickiness: the handshakes, long-polls and posts of two sessions (a few requests
        # each before the upgrade) reached several nodes
        upstreams = socketio_upstreams(topo)
        assert len(upstreams["GET"] | upstreams["POST"]) >= 2, upstreams
        assert len(upstreams["GET"]) >= 2, upstreams


async def test_polling_only_500_events_exactly_once_in_order(django_site: Any) -> None:
    with cluster(django_site) as topo:
        options = {"transports": ["polling"]}
        async with await SioDriver.start(topo.lb_url, token="cliente-7", options=options) as client:
            assert (await client.expect("connect", 15))["transport"] == "polling"
            await client.expect("event", 15, name="auth_success")
            assert (await client.request("join_room", {"room": ROOM}))["offset"] == 0
            await publish(topo, 500)
            assert await events_of(client, ROOM, 500, 60) == list(range(1, 501))
            # acknowledged emits over POSTs that land on any node, answered in order
            seqs = [await client.emit("ping", {}, ack=True) for _ in range(20)]
            acks = [await client.expect("ack", 15, seq=seq) for seq in seqs]
            assert [a["data"] for a in acks] == [{}] * 20
            await client.expect_nothing("event", 0.5)
            assert not [line for line in client.lines if line["kind"] == "disconnect"]
        upstreams = socketio_upstreams(topo)
        assert upstreams["GET"] | upstreams["POST"] == {f"127.0.0.1:{p}" for p in topo.node_ports}
        assert len(upstreams["GET"]) >= 2 and len(upstreams["POST"]) >= 2, upstreams


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "sigterm", "sigkill-others"])
async def test_owner_killed_or_drained_mid_stream_recovers_every_event_once(
    django_site: Any, how: str
) -> None:
    """Two clients (library defaults, and long-polling only) on the same node; it is killed
    (or drained) while events flow; both come back on other nodes with socket.recovered and
    every event exactly once, in order. ``sigkill-others``: the two other nodes are killed
    instead, those that relayed the clients' WebSockets and forwarded their long-polls."""
    with cluster(django_site, GATEWAY_SOCKETIO_PING_INTERVAL_S="2") as topo:
        upgraded = await SioDriver.start(topo.lb_url, token="cliente-7", options=DEFAULTS)
        async with upgraded:
            owner = (await upgraded.expect("event", 15, name="auth_success"))["data"]["node"]
            await upgraded.expect("upgrade", 15)
            polling = await _client_on(topo, owner, "cliente-9", {"transports": ["polling"]})
            try:
                for client in (upgraded, polling):
                    assert (await client.request("join_room", {"room": ROOM}))["offset"] == 0
                if how == "sigkill-others":
                    victims = [pid for name, pid in topo.pids.items() if _other_node(name, owner)]
                else:
                    victims = [node_pid(topo, owner)]
                signum = signal.SIGTERM if how == "sigterm" else signal.SIGKILL

                def strike() -> None:
                    for pid in victims:
                        os.kill(pid, signum)

                total = 300
                await publish(topo, total, at=total // 3, then=strike)
                for client in (upgraded, polling):
                    offsets = await events_of(client, ROOM, total, 60)
                    story = [_brief(line) for line in client.lines if line.get("name") != "event"]
                    assert offsets == list(range(1, total + 1)), (_runs(offsets), story)
                    connects = [line for line in client.lines if line["kind"] == "connect"]
                    assert all(line["recovered"] for line in connects[1:]), repr(story)
                    if how != "sigkill-others":  # its session's node is gone: it reconnected
                        assert len(connects) == 2, repr(story)
                await asyncio.sleep(0.3)  # a duplicate would arrive now
                for client in (upgraded, polling):
                    assert not [e for e in client.unread() if e.get("name") == "event"]
            finally:
                await polling.close()


def _other_node(name: str, owner: str) -> bool:
    return name.startswith("node-") and name != owner


async def _client_on(topo: Topology, node: str, token: str, options: dict[str, Any]) -> SioDriver:
    """A client whose session belongs to ``node`` (round-robin: try until the handshake lands
    there)."""
    for _ in range(12):
        client = await SioDriver.start(topo.lb_url, token=token, options=options)
        data = (await client.expect("event", 15, name="auth_success"))["data"]
        if data["node"] == node:
            return client
        await client.close()
    raise AssertionError(f"no session landed on {node}")
