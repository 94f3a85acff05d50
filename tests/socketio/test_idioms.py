"""Contract §7's Socket.IO idioms, with the real socket.io-client on both transports: what a
refused ``auth`` looks like (CONNECT_ERROR, or a transport close whose retries back off), and
which closes are a DISCONNECT packet (``io server disconnect``: no reconnection) and which a
transport close (the client reconnects by itself).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from tests.socketio.conftest import connected

pytestmark = pytest.mark.node

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}
DISCONNECTS = (4401, 4403, 4429)  # /ws closes that are a DISCONNECT packet for Socket.IO
TRANSPORT_CLOSES = (1012, 1013, 4503, 4408, 1008, 1009)  # ...and a transport close


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_every_close_is_a_disconnect_or_a_transport_close(
    make_node: Any, sio: Any, transport: str
) -> None:
    node = await make_node()
    codes = DISCONNECTS + TRANSPORT_CLOSES
    clients = await asyncio.gather(
        *(sio(node, token=f"cliente-{code}", transports=TRANSPORTS[transport]) for code in codes)
    )
    first = [
        await connected(c, token=f"cliente-{code}") for c, code in zip(clients, codes, strict=True)
    ]
    for me, code in zip(first, codes, strict=True):
        node.node.sessions[me["connectionId"]].close(code, "closed by the test")

    for client, code in zip(clients, codes, strict=True):
        reason = (await client.expect("disconnect"))["reason"]
        expected = "io server disconnect" if code in DISCONNECTS else "transport close"
        assert reason == expected, (code, reason)
    for client, code in zip(clients, codes, strict=True):
        if code in TRANSPORT_CLOSES:  # it comes back by itself, and authenticates again
            again = await connected(client, token=f"cliente-{code}")
            assert again["connectionId"] not in [m["connectionId"] for m in first]
    # socket.io-client would retry within 1.5 s (reconnectionDelay 1 s, randomization 0.5)
    await asyncio.gather(
        *(
            c.expect_nothing("connect", 1.5)
            for c, code in zip(clients, codes, strict=True)
            if code in DISCONNECTS
        )
    )
    assert len(node.node.sessions) == len(TRANSPORT_CLOSES)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_refused_auth_is_a_connect_error_with_the_code(
    make_node: Any, sio: Any, transport: str
) -> None:
    node = await make_node(max_connections_per_user=1)
    options = {"transports": TRANSPORTS[transport]}
    holder = await sio(node, token="cliente-5", **options)
    await connected(holder, token="cliente-5")
    bogus, liar, second = await asyncio.gather(
        sio(node, token="bogus", **options),
        sio(node, auth={"token": "cliente-6", "role": "admin"}, **options),
        sio(node, token="cliente-5", **options),
    )
    expected = {
        bogus: ("invalid_token", "invalid token"),
        liar: ("identity_mismatch", "userId/role differ from the token's identity"),
        second: ("too_many_connections", "too many connections for this user"),
    }
    for client, (code, message) in expected.items():
        error = await client.expect("connect_error")
        assert error["message"] == code
        assert error["data"] == {"code": code, "message": message}
    # `connect` never fired, nothing was delivered, and the client does not retry by itself
    await asyncio.gather(*(c.expect_nothing("connect", 1.5) for c in expected))
    for client in expected:
        assert [line["kind"] for line in client.lines] == ["connect_error"], client.lines
    assert len(node.node.sessions) == 1


async def test_auth_unavailable_is_a_transport_close_and_the_backoff_grows(
    make_node: Any, sio: Any, django_site: Any
) -> None:
    """Django down: the CONNECT's authentication fails with auth_unavailable and the client
    reconnects; while the node's circuit to Django stays open its next handshakes are refused
    (503), so socket.io-client's backoff grows instead of restarting at every attempt."""
    node = await make_node(django_breaker_failures=1, django_breaker_reset_s=4.0)
    await django_site.acontrol(profile_mode="fail")
    client = await sio(
        node,
        token="cliente-7",
        transports=None,  # the library's defaults
        reconnectionDelay=100,
        reconnectionDelayMax=2000,
        randomizationFactor=0,
    )
    assert (await client.expect("disconnect", 10))["reason"] == "transport close"
    attempts = [await client.expect("reconnect_attempt", 10) for _ in range(4)]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]  # 1 would repeat if it reset
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(attempts)]
    assert gaps[-1] > gaps[0], gaps  # the delays grow (100, 200, 400, 800 ms)
    refused = [line for line in client.lines if line["kind"] == "connect_error"]
    assert refused and all(line["description"] == 503 for line in refused), refused
    assert not [line for line in client.lines if line["kind"] == "connect"]

    await django_site.acontrol(profile_mode="ok")  # back: the next try after the reset works
    me = await connected(client, token="cliente-7")
    assert node.node.sessions[me["connectionId"]].identity.user_id == "7"
