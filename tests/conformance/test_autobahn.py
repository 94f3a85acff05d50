"""RFC 6455 conformance (issue 18): Autobahn|Testsuite's fuzzing-client cases of groups 2-7 against
a real ``python -m gateway`` on both WebSocket paths; every case whose OK outcome is a close or a
pong (not an echo of the client's message) ends OK, NON-STRICT or INFORMATIONAL, with a close
behaviour of OK or INFORMATIONAL (see tests/conformance/autobahn.py and docs/security.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.autobahn import run_cases, summary, verdicts

PATHS = {"ws": "/ws", "socketio": "/socket.io/?EIO=4&transport=websocket"}


@pytest.mark.slow
@pytest.mark.parametrize("transport", sorted(PATHS))
async def test_autobahn_cases_of_groups_2_to_7(
    gateway_process: Any, tmp_path: Path, transport: str
) -> None:
    gw = await gateway_process.astart()
    url = f"ws://127.0.0.1:{gw.port}{PATHS[transport]}"
    await asyncio.to_thread(run_cases, url, tmp_path)
    found = verdicts(tmp_path, socketio=transport == "socketio")
    judged = [v for v in found if v.kind == "close/pong"]
    assert len(found) == 230 and len(judged) == 140, summary(found)  # the whole of groups 2-7
    assert [v.case for v in found if not v.passed] == [], summary(found)
    # the protocol errors are answered with their own close codes
    codes = {v.case: v.remote_close_code for v in judged}
    assert codes["5.1"] == 1002 and codes["6.3.1"] == 1007 and codes["7.9.5"] == 1002
