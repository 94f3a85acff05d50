"""RFC 6455 conformance of both WebSocket paths with Autobahn|Testsuite's fuzzing-client cases.

The PyPI package ``autobahntestsuite`` runs only on Python 2.7, which Debian 12 and PyPI no
longer provide (no ``python2``, no ``pypy`` 2.7 package). ``kosoku`` (PyPI) runs the same case
files of the suite (``autobahntestsuite/case/*.py``, translated to Python 3) with a runner of its
own and writes Autobahn's JSON reports. This module runs it against a node and judges the cases
the gateway can pass: the gateway is not an echo server (it answers JSON frames, or Engine.IO
packets), so the cases whose OK outcome is an echo of the client's message cannot end OK, and
are listed as "echo" without a verdict. Every other case of groups 2-7 (pings, reserved bits,
opcodes, fragmentation, UTF-8, closing) must end OK, NON-STRICT or INFORMATIONAL, with a close
behaviour of OK or INFORMATIONAL.

On the Socket.IO path the server's first message is Engine.IO's OPEN packet (``0{"sid":...}``),
which the protocol sends on every connection before anything else: it is removed from the
received events before they are compared with the case's expectations; nothing else changes.

    python -m tests.conformance.autobahn ws://127.0.0.1:4000/ws
    python -m tests.conformance.autobahn "ws://127.0.0.1:4000/socket.io/?EIO=4&transport=websocket"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUPS = ("2", "3", "4", "5", "6", "7")
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}


@dataclass(frozen=True)
class Verdict:
    case: str
    kind: str  # "close/pong" (judged) or "echo" (the OK outcome echoes a message: not judged)
    behavior: str
    behavior_close: str
    remote_close_code: int | None

    @property
    def passed(self) -> bool:
        return self.kind == "echo" or (
            self.behavior in PASSING and self.behavior_close in PASSING_CLOSE
        )


def run_cases(url: str, outdir: Path, groups: tuple[str, ...] = GROUPS, parallel: int = 8) -> None:
    """Run the fuzzing client (``kosoku``) on ``url``; Autobahn's JSON reports go to
    ``outdir``. Its exit code says whether every case passed, which the echo cases cannot."""
    argv = [sys.executable, "-c", "from kosoku._cli import main; main()", url]
    for group in groups:
        argv += ["-i", f"{group}.*"]
    argv += ["-p", str(parallel), "-o", str(outdir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode not in (0, 1) or not list(outdir.glob("*_case_*.json")):
        raise RuntimeError(f"kosoku failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def judge(report: dict[str, Any], socketio: bool) -> Verdict:
    expected: dict[str, list[Any]] = report["expected"]
    ok = expected.get("OK", [])
    kind = "echo" if any(event[0] == "message" for event in ok) else "close/pong"
    behavior = report["behavior"]
    received = [list(event) for event in report["received"] or []]
    if socketio and received and received[0][0] == "message" and received[0][1][:2] == "0{":
        received = received[1:]  # Engine.IO's OPEN packet
        if behavior not in ("INFORMATIONAL", "UNIMPLEMENTED"):
            behavior = "FAILED"
            for verdict in ("OK", "NON-STRICT"):
                if verdict in expected and [list(e) for e in expected[verdict]] == received:
                    behavior = verdict
                    break
    return Verdict(
        report["id"], kind, behavior, report["behaviorClose"], report.get("remoteCloseCode")
    )


def verdicts(outdir: Path, socketio: bool) -> list[Verdict]:
    reports = [json.loads(p.read_text()) for p in outdir.glob("*_case_*.json")]
    found = [judge(report, socketio) for report in reports]
    return sorted(found, key=lambda v: [int(part) for part in v.case.split(".")])


def summary(found: list[Verdict]) -> str:
    """One line per group: how many cases of each kind, and their verdicts."""
    lines = []
    for group in sorted({v.case.split(".")[0] for v in found}, key=int):
        cases = [v for v in found if v.case.split(".")[0] == group]
        judged = Counter(
            f"{v.behavior}/{v.behavior_close}" for v in cases if v.kind == "close/pong"
        )
        echo = sum(1 for v in cases if v.kind == "echo")
        parts = ", ".join(f"{n} {label}" for label, n in sorted(judged.items()))
        lines.append(f"group {group}: {len(cases)} cases; close/pong: {parts or '-'}; echo: {echo}")
    failed = [v.case for v in found if not v.passed]
    lines.append(f"failed close/pong cases: {', '.join(failed) if failed else 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws://host:port/ws or .../socket.io/?EIO=4&transport=websocket")
    parser.add_argument("-o", "--outdir", help="keep the JSON reports here")
    args = parser.parse_args()
    socketio = "/socket.io/" in args.url
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(args.outdir or tmp)
        run_cases(args.url, outdir)
        found = verdicts(outdir, socketio)
    print(summary(found))
    sys.exit(0 if all(v.passed for v in found) else 1)


if __name__ == "__main__":
    main()
