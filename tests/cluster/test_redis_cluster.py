"""Redis Cluster: room keys share a slot through ``{room}`` hash tags, rooms spread over masters,
fan-out uses sharded pub/sub, and recovery works across nodes as on a single Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.publish import AsyncPublisher, Publisher
from tests.cluster.helpers import KEYS, api_publish, assert_quiet, member, offsets, seqs

pytestmark = pytest.mark.cluster


def rooms_on_two_masters(cluster: Any) -> tuple[str, str]:
    """Two service rooms whose keys live on different masters."""
    first = "service_1"
    owner = cluster.keyslot_node(KEYS.room_meta(first))
    for i in range(2, 200):
        room = f"service_{i}"
        if cluster.keyslot_node(KEYS.room_meta(room)) != owner:
            return first, room
    raise AssertionError("no two rooms on different masters in 200 tries")


def slot(cluster: Any, key: str) -> int:
    return int(cluster.nodes[0].admin().execute_command("CLUSTER", "KEYSLOT", key))


def master(cluster: Any, port: int) -> Any:
    [server] = [n for n in cluster.nodes if n.port == port]
    return server.admin()


async def test_cluster_fanout_recovery_and_disconnect_across_masters(
    make_node: Any, redis_cluster: Any, http: Any
) -> None:
    rooms = rooms_on_two_masters(redis_cluster)
    owners = {room: redis_cluster.keyslot_node(KEYS.room_meta(room)) for room in rooms}
    assert len(set(owners.values())) == 2
    for room in rooms:  # every key of a room, and its channel, in one slot
        slots = {
            slot(redis_cluster, key)
            for key in (
                KEYS.room_meta(room),
                KEYS.room_history(room),
                KEYS.room_idempotency(room, "k"),
                KEYS.room_presence(room),
                KEYS.room_channel(room),
            )
        }
        assert len(slots) == 1, room

    a = await make_node(redis_cluster.url, redis_cluster=True)
    b = await make_node(redis_cluster.url, redis_cluster=True)
    watchers = [
        await member(a, http, "cliente-1", *rooms),
        await member(b, http, "cliente-2", *rooms),
    ]
    mover = await member(a, http, "cliente-3", *rooms)
    for room in rooms:  # sharded pub/sub on the room's own master, one subscription per node
        reply = master(redis_cluster, owners[room]).execute_command(
            "PUBSUB", "SHARDNUMSUB", KEYS.room_channel(room)
        )
        assert int(reply[1]) == 2, room

    publisher = Publisher.from_url(redis_cluster.url, cluster=True)
    async_pub = AsyncPublisher.from_url(redis_cluster.url, cluster=True)
    try:
        for seq in range(10):
            for room in rooms:
                if seq % 2:
                    offset = await asyncio.to_thread(publisher.publish, room, "t", {"seq": seq})
                else:
                    offset = await api_publish(http, b.http_url, room, "t", {"seq": seq})
                assert offset == seq + 1
        last: dict[str, dict[str, Any]] = {}
        for client in [*watchers, mover]:
            for room in rooms:
                events = await client.events(10, room=room, timeout=10)
                assert offsets(events) == list(range(1, 11))
                assert seqs(events) == list(range(10))
                last[room] = {"offset": events[-1]["offset"], "epoch": events[-1]["epoch"]}
        await mover.close()

        # the history lives on each room's own master
        for room in rooms:
            assert master(redis_cluster, owners[room]).xlen(KEYS.room_history(room)) == 10

        for seq in range(10, 15):  # missed by the mover, published with the async publisher
            for room in rooms:
                assert await async_pub.publish(room, "t", {"seq": seq}) == seq + 1
        moved = await member(b, http, "cliente-3")
        for room in rooms:
            joined = await moved.join(room, since=last[room])
            assert (joined["recovered"], joined["epoch"]) == (True, last[room]["epoch"])
            assert offsets(joined["missed"]) == list(range(11, 16))
            assert seqs(joined["missed"]) == list(range(10, 15))
        for client in watchers:
            for room in rooms:
                assert offsets(await client.events(5, room=room)) == list(range(11, 16))
        await assert_quiet([*watchers, moved], rooms[0])
        await assert_quiet([*watchers, moved], rooms[1], seconds=0)

        # the control channel works in cluster mode too: disconnect reaches node A
        assert await asyncio.to_thread(publisher.disconnect, "1") == 1
        assert await watchers[0].wait_closed() == 4403
        assert (await watchers[1].request("ping", {}))["event"] == "pong"
    finally:
        publisher.close()
        await async_pub.aclose()
