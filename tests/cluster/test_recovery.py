"""Recovery across nodes: a client that moves to another node and joins with ``since`` gets
exactly the events it missed; epochs survive node restarts and change when Redis lost data."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from gateway.events import UNPUBLISHED_EPOCH
from gateway.publish import Publisher
from tests.cluster.helpers import KEYS, api_publish, assert_quiet, member, offsets, seqs
from tests.support.wsclient import WsClient


async def test_rejoin_on_another_node_recovers_exactly_the_missed_events(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a, b = await make_node(redis_server.url), await make_node(redis_server.url)
    room = "service_11"
    publisher = Publisher.from_url(redis_server.url)
    try:
        client = await member(a, http, "cliente-1", room)
        for seq in range(5):
            await asyncio.to_thread(publisher.publish, room, "t", {"seq": seq})
        seen = await client.events(5, room=room)
        last = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
        assert last["offset"] == 5
        await client.close()

        for seq in range(5, 25):  # missed while away: Publisher and the API, mixed
            if seq % 2:
                await asyncio.to_thread(publisher.publish, room, "t", {"seq": seq})
            else:
                await api_publish(http, a.http_url, room, "t", {"seq": seq})

        moved = await member(b, http, "cliente-1")
        joined = await moved.join(room, since=last)
        assert joined["recovered"] is True
        assert joined["epoch"] == last["epoch"]
        assert joined["offset"] == 25
        assert offsets(joined["missed"]) == list(range(6, 26))
        assert seqs(joined["missed"]) == list(range(5, 25))
        assert all(e["room"] == room and e["epoch"] == last["epoch"] for e in joined["missed"])

        # live again, right after the missed ones, nothing twice
        await asyncio.to_thread(publisher.publish, room, "t", {"seq": 25})
        [live] = await moved.events(1, room=room)
        assert live["offset"] == 26
        await assert_quiet([moved], room)

        # up to date: recovered with nothing missed
        other = await member(a, http, "cliente-2")
        same = await other.join(room, since={"offset": 26, "epoch": last["epoch"]})
        assert (same["recovered"], same["missed"], same["offset"]) == (True, [], 26)
    finally:
        publisher.close()


async def test_outside_the_history_window_the_client_is_told(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a = await make_node(redis_server.url)
    room = "service_12"
    publisher = Publisher.from_url(redis_server.url, history_size=5)
    try:
        client = await member(a, http, "cliente-1", room)
        await asyncio.to_thread(publisher.publish, room, "t", {"seq": 0})
        [first] = await client.events(1, room=room)
        await client.close()
        for seq in range(1, 10):  # 9 missed, history keeps the latest 5
            await asyncio.to_thread(publisher.publish, room, "t", {"seq": seq})
    finally:
        publisher.close()
    back = await member(a, http, "cliente-1")
    joined = await back.join(room, since={"offset": first["offset"], "epoch": first["epoch"]})
    assert joined["recovered"] is False
    assert joined["missed"] == []
    assert (joined["offset"], joined["epoch"]) == (10, first["epoch"])
    # a position within the window still recovers
    again = await member(a, http, "cliente-2")
    joined = await again.join(room, since={"offset": 6, "epoch": first["epoch"]})
    assert joined["recovered"] is True
    assert offsets(joined["missed"]) == [7, 8, 9, 10]
    # a position ahead of the room (Redis lost its latest writes but kept the epoch) is not
    # "nothing missed": the client is told to refetch
    ahead = await again.join(room, since={"offset": 12, "epoch": first["epoch"]})
    assert (ahead["recovered"], ahead["missed"], ahead["offset"]) == (False, [], 10)
    # and another epoch's position is never recovered, even at a plausible offset
    other = await again.join(room, since={"offset": 6, "epoch": "0000beef"})
    assert (other["recovered"], other["epoch"]) == (False, first["epoch"])


@pytest.mark.slow
async def test_clients_moving_between_nodes_under_steady_publishing_get_everything_once(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    """The race: events keep coming while clients rejoin with ``since`` on another node. Each
    client ends with offsets 1..300 exactly once, in order: what it had, ``missed``, then live."""
    total = 300
    nodes = [await make_node(redis_server.url, history_size=1000) for _ in range(3)]
    room = "location_8"
    publisher = Publisher.from_url(redis_server.url, history_size=1000)
    started = asyncio.Event()
    ready: list[int] = []

    async def hopper(index: int, move_after: int) -> list[dict[str, Any]]:
        src, dst = nodes[index], nodes[(index + 1) % 3]
        client = await member(src, http, f"cliente-{index + 1}", room)
        ready.append(index)
        if len(ready) == 3:
            started.set()
        got = await client.events(move_after, room=room, timeout=10)
        await client.close()
        moved: WsClient = await member(dst, http, f"cliente-{index + 1}")
        last = got[-1]
        joined = await moved.join(room, since={"offset": last["offset"], "epoch": last["epoch"]})
        assert joined["recovered"] is True, joined
        got += joined["missed"]
        got += await moved.events(total - len(got), room=room, timeout=15)
        await assert_quiet([moved], room)
        return got

    def publish_steadily() -> None:
        for seq in range(total):
            publisher.publish(room, "t", {"seq": seq})
            time.sleep(0.004)

    try:
        tasks = [asyncio.create_task(hopper(i, after)) for i, after in enumerate((20, 120, 250))]
        async with asyncio.timeout(10):
            await started.wait()
        await asyncio.to_thread(publish_steadily)
        results = await asyncio.gather(*tasks)
    finally:
        publisher.close()
    for got in results:
        assert offsets(got) == list(range(1, total + 1))
        assert seqs(got) == list(range(total))
        assert len({e["id"] for e in got}) == total


async def test_epoch_survives_node_restart_and_changes_when_redis_lost_the_data(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    room = "service_13"
    first = await make_node(redis_server.url)
    client = await member(first, http, "cliente-1")
    joined = await client.join(room)
    assert (joined["offset"], joined["epoch"]) == (0, UNPUBLISHED_EPOCH)
    for seq in range(3):
        await api_publish(http, first.http_url, room, "t", {"seq": seq})
    events = await client.events(3, room=room)
    epoch = events[0]["epoch"]
    assert {e["epoch"] for e in events} == {epoch} and epoch != UNPUBLISHED_EPOCH
    await client.close()
    await first.stop()

    # a new node process on the same Redis: same epoch, same offsets, history intact
    second = await make_node(redis_server.url)
    watcher = await member(second, http, "cliente-2")
    again = await watcher.join(room)
    assert (again["epoch"], again["offset"]) == (epoch, 3)
    back = await member(second, http, "cliente-1")
    recovered = await back.join(room, since={"offset": 1, "epoch": epoch})
    assert recovered["recovered"] is True
    assert offsets(recovered["missed"]) == [2, 3]
    await api_publish(http, second.http_url, room, "t", {"seq": 3})  # seen live by the node
    for client in (watcher, back):
        [event] = await client.events(1, room=room)
        assert (event["offset"], event["epoch"]) == (4, epoch)

    # Redis loses everything: the room gets a new epoch, the old position cannot be recovered
    redis_server.client().flushall()
    late = await member(second, http, "cliente-3")
    lost = await late.join(room, since={"offset": 4, "epoch": epoch})
    assert lost["recovered"] is False
    assert lost["missed"] == []
    assert (lost["offset"], lost["epoch"]) == (0, UNPUBLISHED_EPOCH)
    # the next event starts the new epoch at offset 1. The node sees the room's stream jump to
    # another epoch: it holds the event and tells the members to rejoin; their joins with
    # `since` answer from history (recovered: false across the loss; from offset 0, the event)
    await api_publish(http, second.http_url, room, "t", {"seq": 4})
    new_epochs = set()
    for client, since in (
        (watcher, {"offset": 4, "epoch": epoch}),
        (back, {"offset": 4, "epoch": epoch}),
        (late, {"offset": 0, "epoch": UNPUBLISHED_EPOCH}),
    ):
        rejoin = await client.expect("rejoin")
        assert rejoin["data"] == {"room": room, "reason": "gap"}
        answer = await client.join(room, since=since)
        assert answer["offset"] == 1
        new_epochs.add(answer["epoch"])
        if since["offset"] == 0:
            assert answer["recovered"] is True
            assert [(e["offset"], e["epoch"]) for e in answer["missed"]] == [(1, answer["epoch"])]
        else:
            assert (answer["recovered"], answer["missed"]) == (False, [])
    assert len(new_epochs) == 1 and new_epochs.isdisjoint({epoch, UNPUBLISHED_EPOCH})
    await assert_quiet([watcher, back, late], room)


def test_publisher_and_nodes_agree_on_history_across_threads(redis_server: Any) -> None:
    """Offsets handed out by several Publisher threads at once are 1..N without a gap."""
    room = "service_14"
    publishers = [Publisher.from_url(redis_server.url) for _ in range(4)]
    got: list[int] = []
    lock = threading.Lock()

    def run(p: Publisher, n: int) -> None:
        mine = [p.publish(room, "t", {"n": i}) for i in range(n)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=run, args=(p, 25)) for p in publishers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in publishers:
        p.close()
    assert sorted(got) == list(range(1, 101))
    raw = redis_server.client().xrange(KEYS.room_history(room))
    assert [int(entry_id.split(b"-")[1]) for entry_id, _ in raw] == list(range(1, 101))


async def test_a_member_that_never_answers_rejoin_gets_the_held_events_in_order(
    redis_server: Any, make_node: Any, http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gap holds the room's live events for a member told to rejoin. A client that never
    answers (an old client, a stuck tab) is not held forever: after the hold it gets what was
    held, live and in order, and the events after it too. The hold is shortened for the test;
    the node's sweep runs only while someone is awaited (no timer on an idle node)."""
    monkeypatch.setattr("gateway.node.REJOIN_HOLD_S", 2.0)
    node = await make_node(redis_server.url)
    room = "service_77"
    client = await member(node, http, "cliente-1", room)
    await api_publish(http, node.http_url, room, "t", {"seq": 0})
    [first] = await client.events(1, room=room)
    assert first["offset"] == 1
    assert node.node._rejoin_sweep_timer is None  # idle: nothing scheduled
    # offset 2 is skipped (as if its publish was lost between Redis and this node)
    redis_server.client().hincrby(KEYS.room_meta(room), "offset", 1)
    await api_publish(http, node.http_url, room, "t", {"seq": 1})  # offset 3: a gap
    rejoin = await client.expect("rejoin")
    assert rejoin["data"] == {"room": room, "reason": "gap"}
    assert node.node._rejoin_sweep_timer is not None
    await api_publish(http, node.http_url, room, "t", {"seq": 2})  # offset 4, held behind 3
    await asyncio.sleep(0.5)
    assert client.pending_events(room) == [], "held events must wait for the rejoin"
    # the client never answers: after the hold, 3 then 4, live, once each
    held = await client.events(2, room=room, timeout=10.0)
    assert offsets(held) == [3, 4] and seqs(held) == [1, 2]
    await api_publish(http, node.http_url, room, "t", {"seq": 3})
    [after] = await client.events(1, room=room)
    assert after["offset"] == 5
    await assert_quiet([client], room)
    await asyncio.sleep(1.5)  # the sweep that found nobody left does not reschedule itself
    assert node.node._rejoin_sweep_timer is None
