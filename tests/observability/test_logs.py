"""``GATEWAY_LOG_FORMAT=json``: every line one JSON object naming its node and logger;
connection lines name the connection; frames are not logged one by one at INFO."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.support.wsclient import WsClient

TOKEN = "cliente-5150"
BAD_TOKEN = "proveedor-nope"
PINGS = 40


def _json_lines(text: str, where: str) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where} line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{where} line {number} is not an object: {line!r}"
        entries.append(entry)
    return entries


async def test_json_logs(gateway_process: Any, http: aiohttp.ClientSession) -> None:
    proc = await gateway_process.astart(
        {"GATEWAY_LOG_FORMAT": "json", "GATEWAY_DASHBOARD_TOKEN": "logs-test-dashboard"}
    )
    client = await WsClient.connect(http, proc.ws_url, TOKEN)
    connection_id = (await client.expect("auth_success"))["data"]["connectionId"]
    await client.join("service_12")
    for _ in range(PINGS):
        await client.send("ping", {})
    for _ in range(PINGS):
        await client.expect("pong")
    await client.close()
    refused = await WsClient.connect(http, proc.ws_url)
    reply = await refused.request("authenticate", {"token": BAD_TOKEN})
    assert reply["data"]["code"] == "invalid_token"
    assert await refused.wait_closed() == 4401
    async with http.get(f"{proc.http_url}/dashboard/stats") as resp:
        assert resp.status == 401
    proc.term()
    assert proc.wait(15) == 0, proc.stderr()[-3000:]

    stdout, stderr = proc.stdout(), proc.stderr()
    entries = _json_lines(stdout, "stdout") + _json_lines(stderr, "stderr")
    assert len(entries) > 5, stderr
    for entry in entries:
        assert entry["node"] == proc.node_id, entry
        assert isinstance(entry["logger"], str) and entry["logger"], entry
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, entry
        assert isinstance(entry["msg"], str) and isinstance(entry["ts"], str), entry

    # the connection's life is in the log, each line naming the connection
    ours = [e for e in entries if connection_id in json.dumps(e)]
    messages = [e["msg"] for e in ours]
    assert any("authenticated" in m for m in messages), messages
    assert any("closed" in m for m in messages), messages
    for entry in entries:
        if entry["logger"] == "gateway.node" and entry["msg"].startswith("connection "):
            conn = entry["msg"].split()[1]
            assert len(conn) == len(connection_id) and conn.isalnum(), entry
    refusals = [e for e in entries if "authentication failed" in e["msg"]]
    assert len(refusals) == 1 and "invalid_token" in refusals[0]["msg"]

    # forty pings and forty pongs are not eighty lines: nothing is logged per frame at INFO
    assert len(ours) <= 4, messages
    assert not [e for e in entries if "ping" in e["msg"] or "pong" in e["msg"]]
    # the tokens and the query string that carried one never reach the log
    everything = stdout + stderr
    assert TOKEN not in everything and BAD_TOKEN not in everything
    assert "logs-test-dashboard" not in everything
    assert "?token=" not in everything
    access = [e for e in entries if e["logger"] == "aiohttp.access"]
    assert any("/dashboard/stats 401" in e["msg"] for e in access), access[-3:]
