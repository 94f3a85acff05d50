"""A join whose subscription fails leaves no subscription behind (issue 16, item 8).

Redis refuses the room's channel to the node's ACL user, so ``SUBSCRIBE`` never succeeds and the
join answers ``unavailable``. The node must then forget the channel: once Redis would allow it
and the pub/sub connection comes back, the node is not subscribed to a room with no member."""

from __future__ import annotations

from typing import Any

from gateway.backend.keys import Keys
from tests.support import RedisServer
from tests.support.ports import eventually

KEYS = Keys("gateway")
USER, PASSWORD = "gw", "pw"


def numsub(server: RedisServer, channel: str) -> int:
    [(_, n)] = server.admin().pubsub_numsub(channel)
    return int(n)


async def test_a_failed_subscribe_is_not_kept(
    redis_server: RedisServer, make_node: Any, http: Any
) -> None:
    admin = redis_server.admin()
    allowed = [KEYS.control_channel, "gateway:node:*", KEYS.room_channel("admin_dashboard")]
    acl = ["on", f">{PASSWORD}", "~*", "resetchannels", *[f"&{c}" for c in allowed], "+@all"]
    admin.execute_command("ACL", "SETUSER", USER, *acl)
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    node = await make_node(url)
    client = await node.client(http, token="admin-1")
    await client.expect("auth_success")

    channel = KEYS.room_channel("service_2")
    reply = await client.request("join_room", {"room": "service_2"}, timeout=15)
    assert reply["event"] == "error" and reply["data"]["code"] == "unavailable", reply

    admin.execute_command("ACL", "SETUSER", USER, "allchannels")  # Redis would allow it now
    admin.client_kill_filter(_type="pubsub")  # the pub/sub connection comes back...
    assert numsub(redis_server, KEYS.control_channel) == 0

    async def resubscribed() -> bool:
        return numsub(redis_server, KEYS.control_channel) == 1

    await eventually(resubscribed, 10, "the pub/sub connection restored")

    async def forgotten() -> bool:  # unsubscribes are deferred (GATEWAY_UNSUBSCRIBE_DELAY_S)
        return numsub(redis_server, channel) == 0

    await eventually(forgotten, 5, "no subscription to a room nobody is in")
    # the room works once Redis allows it
    joined = await client.join("service_2")
    assert joined["room"] == "service_2"
    assert numsub(redis_server, channel) == 1
    await client.close()
