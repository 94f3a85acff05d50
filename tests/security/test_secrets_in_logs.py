"""Secrets never reach the logs (CONTRACT sections 1 and 2): a real ``python -m gateway`` process
with JSON logs at DEBUG level, driven with every kind of secret, good and bad; afterwards no
secret appears in anything it wrote, and every line it wrote is one JSON object."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
from yarl import URL

from tests.support import DjangoSite, GatewayProcess, ProcessFactory
from tests.support.wsclient import WsClient

DASHBOARD_TOKEN = "dash-Secret-7Q2vXbN4kP"
API_KEY = "api-Secret-Mz81LrT5wH"
REDIS_PASSWORD = "redis-Secret-Kd4Nq8Zs"
QUERY_TOKEN = "cliente-918273645"  # valid, given as ?token=
FRAME_TOKEN = "proveedor-564738291"  # valid, given in authenticate
BAD_TOKENS = ["bad-Secret-Zx9Qw3", "query-bad-Secret-Lp0Oi9"]
WRONG_SECRETS = ["wrong-dash-Secret-Aa1", "wrong-api-Secret-Bb2"]


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


SECRETS = [
    DASHBOARD_TOKEN,
    API_KEY,
    REDIS_PASSWORD,
    QUERY_TOKEN,
    FRAME_TOKEN,
    *BAD_TOKENS,
    *WRONG_SECRETS,
    basic(DASHBOARD_TOKEN).split()[1],
    basic(WRONG_SECRETS[0]).split()[1],
]


async def exercise(gw: GatewayProcess, http: aiohttp.ClientSession, site: DjangoSite) -> None:
    by_query = WsClient(await http.ws_connect(URL(gw.ws_url).with_query(token=QUERY_TOKEN)))
    assert (await by_query.expect("auth_success"))["data"]["userId"] == "918273645"
    by_frame = WsClient(await http.ws_connect(gw.ws_url))
    await by_frame.authenticate(FRAME_TOKEN)
    # a business event forwards the user's token to Django
    ack = await by_query.request("comment_created", {"servicioId": "1", "text": "hola"})
    assert ack["event"] == "ack"
    # bad tokens, in a frame and in the URL
    bad = WsClient(await http.ws_connect(gw.ws_url))
    reply = await bad.request("authenticate", {"token": BAD_TOKENS[0]})
    assert reply["data"]["code"] == "invalid_token"
    bad_query = WsClient(await http.ws_connect(URL(gw.ws_url).with_query(token=BAD_TOKENS[1])))
    assert (await bad_query.expect("auth_error"))["data"]["code"] == "invalid_token"
    # Django failing while a token is checked: the warnings must not name it
    await site.acontrol(profile_mode="fail")
    failing = WsClient(await http.ws_connect(gw.ws_url))
    reply = await failing.request("authenticate", {"token": BAD_TOKENS[0] + "-2"})
    assert reply["data"]["code"] == "auth_unavailable"
    await site.acontrol(profile_mode="ok")
    # dashboard and server API, with right and wrong secrets
    requests = [
        ("GET", "/dashboard/stats", f"Bearer {DASHBOARD_TOKEN}", 200),
        ("GET", "/dashboard/clients", basic(DASHBOARD_TOKEN), 200),
        ("GET", "/dashboard/stats", f"Bearer {WRONG_SECRETS[0]}", 401),
        ("GET", "/dashboard/stats", basic(WRONG_SECRETS[0]), 401),
        ("POST", "/dashboard/cleanup", f"Bearer {DASHBOARD_TOKEN}", 200),
        ("POST", "/api/publish", f"Bearer {API_KEY}", 200),
        ("POST", "/api/publish", f"Bearer {WRONG_SECRETS[1]}", 401),
    ]
    body = {"room": "service_1", "type": "notice", "payload": {"n": 1}}
    for method, path, auth, status in requests:
        async with http.request(
            method, gw.http_url + path, headers={"Authorization": auth}, json=body
        ) as resp:
            assert resp.status == status, (method, path, await resp.text())
    for client in (by_query, by_frame, bad, bad_query, failing):
        await client.close()


async def test_no_secret_in_json_logs(
    gateway_process: ProcessFactory[GatewayProcess],
    redis_factory: Any,
    django_site: DjangoSite,
    http: aiohttp.ClientSession,
) -> None:
    redis = redis_factory(extra_args=["--requirepass", REDIS_PASSWORD])
    env = {
        "GATEWAY_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_LOG_LEVEL": "DEBUG",
        "GATEWAY_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
        "GATEWAY_PUBLISH_API_KEY": API_KEY,
        "GATEWAY_DRAIN_SECONDS": "0.2",
    }
    gw = await gateway_process.astart(env)
    await exercise(gw, http, django_site)
    gw.term()
    assert gw.wait(10) == 0
    logs = gw.logs()
    lines = [line for line in logs.splitlines() if line.strip()]
    assert len(lines) > 10, logs  # the process did log: access lines, auth results, drain
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict) and {"ts", "level", "msg"} <= set(entry), line
    joined = "\n".join(lines)
    assert "authentication failed" in joined  # the failures were logged, without the tokens
    assert "/dashboard/stats" in joined and "/ws" in joined  # access lines, without queries
    for secret in SECRETS:
        assert secret not in logs, secret
    assert "token=" not in logs


UNPARSABLE_TOKEN = "cliente-Unparsable-Qz81"
UNPARSABLE = [  # request heads aiohttp cannot parse, each carrying the token
    f"GET /ws?token={UNPARSABLE_TOKEN} x HTTP/1.1\r\nHost: a\r\n\r\n",  # a raw space
    f"GET /ws?token={UNPARSABLE_TOKEN}\x01 HTTP/1.1\r\nHost: a\r\n\r\n",  # a control byte
    f"GET /ws?token={UNPARSABLE_TOKEN}\x7f HTTP/1.1\r\n\r\n",
    f"GET /socket.io/?EIO=4&transport=websocket&token={UNPARSABLE_TOKEN} HTTP/1.1 x\r\n\r\n",
    f"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Bad\x01: {UNPARSABLE_TOKEN}\r\n\r\n",  # a header
    f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer {UNPARSABLE_TOKEN}\r\nBad Header\r\n\r\n",
]


async def test_an_unparsable_request_is_logged_and_answered_without_its_token(
    gateway_process: ProcessFactory[GatewayProcess],
) -> None:
    """Issue 18 item 9: a request line aiohttp cannot parse was logged at ERROR with the whole
    line, token included, and echoed in the 400 body. Text and JSON logs, every line checked;
    the request is sent on a fresh connection and after a request on a kept-alive one."""
    for log_format in ("text", "json"):
        gw = await gateway_process.astart({"GATEWAY_LOG_FORMAT": log_format})
        for request in UNPARSABLE:
            for first in (b"", b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(first + request.encode("latin-1"))
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                assert b" 400 Bad Request\r\n" in answer and answer.endswith(b"400 Bad Request\n")
                assert UNPARSABLE_TOKEN.encode() not in answer, answer
        gw.term()
        assert gw.wait(10) == 0
        lines = [line for line in gw.logs().splitlines() if line.strip()]
        unparsable = [line for line in lines if "unparsable HTTP request" in line]
        assert len(unparsable) == 2 * len(UNPARSABLE), lines
        for line in lines:
            assert UNPARSABLE_TOKEN not in line, line
            if log_format == "json":
                assert json.loads(line)["level"] in ("debug", "info", "warning"), line
            else:
                assert "Traceback" not in line and " ERROR " not in line, line
