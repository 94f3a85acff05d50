"""The 4408 deadline is for *sending* ``authenticate`` (contract v3 section 2; issue 16, item 8):
a client that sent it in time is not closed while Django is still answering. A real node on
both backends, the real Django test site made slow, real WebSocket clients."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import DjangoSite

DEADLINE_S = 1.0
DJANGO_S = 2.0  # Django answers after the deadline has passed, within GATEWAY_DJANGO_TIMEOUT


async def test_authenticate_sent_in_time_survives_a_slow_django(
    node_with: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await node_with(auth_timeout_s=DEADLINE_S, django_timeout=DJANGO_S + 3)
    await django_site.acontrol(profile_mode="slow", slow_seconds=DJANGO_S)
    idle = await node.client(http)  # never authenticates: still closed at the deadline
    framed = await node.client(http)
    await asyncio.sleep(DEADLINE_S / 2)
    await framed.send("authenticate", {"token": "cliente-31"}, frame_id="a")
    at_connect = await node.client(http, token="cliente-32")  # ?token=: verified from the start

    reply = await framed.wait_for(lambda f: f.get("id") == "a", timeout=DJANGO_S + 4)
    assert reply["event"] == "auth_success", reply
    first = await at_connect.wait_for(lambda f: True, timeout=DJANGO_S + 4)
    assert first["event"] == "auth_success", first
    assert await idle.wait_closed(timeout=3) == 4408
    for client in (framed, at_connect):
        assert client.close_code is None
        assert (await client.request("ping"))["event"] == "pong"
        await client.close()
    calls = await django_site.acalls()
    assert calls["profile_calls_by_token"] == {"cliente-31": 1, "cliente-32": 1}
