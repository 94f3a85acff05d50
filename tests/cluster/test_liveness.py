"""Pub/sub liveness and Redis restarts while nodes run: nodes notice, resubscribe, tell their
clients to ``rejoin``, and recovery with ``since`` fills the hole (or says it cannot)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.publish import Publisher
from tests.cluster.helpers import (
    KEYS,
    api_publish,
    assert_quiet,
    eventually,
    member,
    numsub,
    offsets,
    pubsub_connections,
)
from tests.support.wsclient import WsClient


async def readyz(http: Any, node: Any) -> int:
    async with http.get(f"{node.http_url}/readyz") as response:
        return int(response.status)


async def rejoin_with_since(client: WsClient, room: str, since: dict[str, Any]) -> dict[str, Any]:
    """What a client does on ``rejoin``: join the room again, on the same connection."""
    return await client.join(room, since=since)


async def expect_rejoins(clients: list[WsClient], room: str) -> None:
    """A ``rejoin`` (subscription_lost) arrives for ``room`` and for each client's automatic
    rooms (client i is cliente i+1): every room went through the lost connection."""
    for i, client in enumerate(clients):
        for name in (room, f"cliente_{i + 1}", "all_clientes"):
            await _expect_rejoin(client, name)


async def _expect_rejoin(client: WsClient, name: str) -> None:
    frame = await client.wait_for(
        lambda f: f.get("event") == "rejoin" and f["data"]["room"] == name, timeout=10
    )
    assert frame["data"]["reason"] == "subscription_lost"


def live_offsets_after(client: WsClient, room: str) -> list[int]:
    return offsets(client.pending_events(room))


async def test_killed_pubsub_connection_is_noticed_resubscribed_and_recovered(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    redis = redis_server.client()
    a, b = await make_node(redis_server.url), await make_node(redis_server.url)
    room = "service_21"
    channel = KEYS.room_channel(room)
    clients = [await member(a, http, "cliente-1", room), await member(b, http, "cliente-2", room)]
    for seq in range(3):
        await api_publish(http, a.http_url, room, "t", {"seq": seq})
    for client in clients:
        before = await client.events(3, room=room)
    since = {"offset": 3, "epoch": before[-1]["epoch"]}

    killed = redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert int(killed) == 2  # one pub/sub connection per node, nothing else
    await expect_rejoins(clients, room)

    publisher = Publisher.from_url(redis_server.url)
    try:
        for seq in range(3, 5):  # published while the nodes were (re)subscribing
            await asyncio.to_thread(publisher.publish, room, "t", {"seq": seq})
        await eventually(lambda: numsub(redis, channel) == 2, 5, "both nodes to resubscribe")
        assert pubsub_connections(redis) == 2
        # subscribed again; the members were told to rejoin, so the room's live events are
        # held for them until they do (their join sends them after `missed`, in order)
        await asyncio.to_thread(publisher.publish, room, "t", {"seq": 5})
        await asyncio.sleep(0.3)
        for client in clients:
            assert live_offsets_after(client, room) == [], client.pending_events(room)
    finally:
        publisher.close()

    for client in clients:
        joined = await rejoin_with_since(client, room, since)
        assert joined["recovered"] is True, joined
        assert offsets(joined["missed"]) == [4, 5, 6]
        assert [e["payload"]["seq"] for e in joined["missed"]] == [3, 4, 5]
    # and live delivery continues exactly once after the rejoin
    await api_publish(http, b.http_url, room, "t", {"seq": 6})
    for client in clients:
        [event] = await client.events(1, room=room)
        assert event["offset"] == 7
    await assert_quiet(clients, room)


@pytest.mark.slow
async def test_redis_restart_with_aof_keeps_epochs_and_nodes_come_back(
    redis_factory: Any, make_node: Any, http: Any
) -> None:
    server = redis_factory(appendonly=True)
    a, b = await make_node(server.url), await make_node(server.url)
    room = "service_22"
    clients = [await member(a, http, "cliente-1", room), await member(b, http, "cliente-2", room)]
    for seq in range(3):
        await api_publish(http, a.http_url, room, "t", {"seq": seq})
    for client in clients:
        events = await client.events(3, room=room)
    epoch = events[-1]["epoch"]

    server.stop()
    await eventually(_all_status(http, (a, b), 503), 5, "/readyz to report 503 on both nodes")
    server.start()
    await expect_rejoins(clients, room)  # once the subscriptions are live again
    await eventually(_all_status(http, (a, b), 200), 10, "/readyz back to 200 on both nodes")
    redis = server.client()
    await eventually(
        lambda: numsub(redis, KEYS.room_channel(room)) == 2, 10, "both nodes to resubscribe"
    )

    # the data survived: same epoch, offsets go on; what is published before a member answers
    # its rejoin is held for it and comes with the answer, once
    await api_publish(http, b.http_url, room, "t", {"seq": 3})
    for client in clients:
        joined = await rejoin_with_since(client, room, {"offset": 3, "epoch": epoch})
        assert (joined["recovered"], joined["epoch"]) == (True, epoch)
        assert offsets(joined["missed"]) == [4]
    # a client connecting now works too
    newcomer = await member(a, http, "cliente-3")
    joined = await newcomer.join(room)
    assert (joined["epoch"], joined["offset"]) == (epoch, 4)
    await api_publish(http, a.http_url, room, "t", {"seq": 4})
    for client in [*clients, newcomer]:
        [event] = await client.events(1, room=room)
        assert (event["offset"], event["epoch"]) == (5, epoch)
    await assert_quiet([*clients, newcomer], room)


@pytest.mark.slow
async def test_redis_restart_without_data_starts_new_epochs_and_nodes_register_again(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a, b = await make_node(redis_server.url), await make_node(redis_server.url)
    room = "service_23"
    clients = [await member(a, http, "cliente-1", room), await member(b, http, "cliente-2", room)]
    for seq in range(3):
        await api_publish(http, a.http_url, room, "t", {"seq": seq})
    for client in clients:
        events = await client.events(3, room=room)
    old = {"offset": 3, "epoch": events[-1]["epoch"]}

    redis_server.stop()
    redis_server.start()  # no persistence: empty
    await expect_rejoins(clients, room)  # once the subscriptions are live again
    await eventually(_all_status(http, (a, b), 200), 10, "/readyz back to 200 on both nodes")
    redis = redis_server.client()
    await eventually(
        lambda: numsub(redis, KEYS.room_channel(room)) == 2, 10, "both nodes to resubscribe"
    )

    # history is gone: the old position cannot be recovered, the room has a new epoch
    for client in clients:
        joined = await rejoin_with_since(client, room, old)
        assert joined["recovered"] is False
        assert joined["missed"] == []
        # nothing published since: offset 0 of the placeholder epoch
        assert (joined["offset"], joined["epoch"]) == (0, "0")
    # the nodes wrote their connections and memberships back: presence is right again
    probe = clients[0]

    async def both_present() -> bool:
        reply = await probe.request("presence", {"room": room})
        return {m["userId"] for m in reply["data"]["members"]} == {"1", "2"}

    await eventually(both_present, 5, "presence to list both members again")

    publisher = Publisher.from_url(redis_server.url)
    try:
        offset = await asyncio.to_thread(publisher.publish, room, "t", {"seq": "after"})
    finally:
        publisher.close()
    assert offset == 1
    # the first event of the new epoch: the node saw the room jump from the old epoch, so it
    # holds it and tells the members to rejoin; from offset 0 their joins recover it
    epochs = set()
    for client in clients:
        rejoin = await client.expect("rejoin")
        assert rejoin["data"] == {"room": room, "reason": "gap"}
        joined = await rejoin_with_since(client, room, {"offset": 0, "epoch": "0"})
        assert joined["recovered"] is True and offsets(joined["missed"]) == [1]
        epochs.add(joined["epoch"])
    [new_epoch] = epochs  # one new epoch, the first publish's
    assert new_epoch not in (old["epoch"], "0")
    newcomer = await member(b, http, "cliente-3", room)
    await api_publish(http, b.http_url, room, "t", {"seq": "later"})
    for client in clients:
        [event] = await client.events(1, room=room)
        assert (event["offset"], event["epoch"]) == (2, new_epoch)
    [event] = await newcomer.events(1, room=room)
    assert (event["offset"], event["epoch"]) == (2, new_epoch)
    await assert_quiet([*clients, newcomer], room)


def _all_status(http: Any, nodes: tuple[Any, ...], status: int) -> Any:
    async def check() -> bool:
        return all([await readyz(http, node) == status for node in nodes])

    return check
