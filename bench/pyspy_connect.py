"""Where a node's CPU goes per connect, by Python function, sampled by py-spy.

    python bench/pyspy_connect.py [--tokens jwt|django|redis|memory] [--connections 2000]
                                  [--rounds 5] [--top 40]

Needs ``py-spy`` (``pip install py-spy``; not a dependency of the project) and permission to
ptrace the node (root in a container is enough). Starts a private Redis, the Django test site and
two gateway nodes (the one measured and, for ``--tokens redis``, the one the tokens were verified
on), then ``--rounds`` rounds of ``--connections`` connect + authenticate + join (``service_1``,
50 handshakes in flight, every client closes at the end of its round) while py-spy samples the
measured node. ``callgrind_connect.py`` counts instructions (stable, but of the interpreter's C
functions); this one names the Python code, with sampling's noise (±1-2 % of the samples).

Printed: samples per connect and the share of the samples in each part of the path (the first
frame of the stack that is in one of the named modules, from the innermost out), then the
``--top`` functions by own samples. Idle samples (the event loop waiting in ``select``/``epoll``)
are counted apart and left out of the shares.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.loadgen import Loadgen  # noqa: E402
from bench.targets import GATEWAY_BENCH_ENV  # noqa: E402
from tests.support.django_site import DjangoSite  # noqa: E402
from tests.support.processes import GatewayProcess  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

# Parts of the connect path, by the file a frame is in. A sample goes to the innermost frame of
# the stack in a named part (the gateway's code that caused the work, or PyJWT / redis-py);
# only a stack with none of them goes to the generic parts (asyncio, aiohttp, logging). With
# uvloop the loop itself is C: its samples (socket reads and writes, callbacks) are the bare
# ``Runner.run`` frame.
PARTS = [
    ("auth: JWT (PyJWT)", ("(jwt/",)),
    ("auth: gateway.auth", ("gateway/auth/",)),
    ("Django client", ("gateway/djangoapi.py",)),
    ("redis-py", ("(redis/",)),
    ("Redis: group commit (backend/batch.py)", ("gateway/backend/batch.py",)),
    ("Redis: state, online status, scripts", ("gateway/backend/",)),
    ("caps/accounting", ("gateway/accounting.py",)),
    ("metrics", ("gateway/metrics.py", "(prometheus_client/")),
    ("rooms, join, history", ("gateway/rooms.py", "gateway/hub.py", "gateway/session.py")),
    ("WebSocket upgrade, frames, writes", ("gateway/ws",)),
    ("node (connection lifecycle)", ("gateway/",)),
]
GENERIC = [
    ("logging", ("(logging/",)),
    ("aiohttp", ("(aiohttp/",)),
    ("event loop (uvloop, C: socket I/O, callbacks)", ("Runner.run (",)),
    ("asyncio (Python)", ("(asyncio/",)),
]
IDLE = ("select (selectors.py", "poll (selectors.py", "_run_once (asyncio/base_events.py")


OUTER = ("gateway/__main__.py", "gateway/cli.py", "(runpy.py")  # the process's main: not a part


def part_of(stack: list[str]) -> str:
    if stack[-1].startswith("Runner.run ("):
        return GENERIC[2][0]
    stack = [frame for frame in stack if not any(o in frame for o in OUTER)]
    for table in (PARTS, GENERIC):
        for frame in reversed(stack):  # innermost last in py-spy's collapsed format
            for name, needles in table:
                if any(n in frame for n in needles):
                    return name
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", choices=("jwt", "django", "redis", "memory"), default="jwt")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyspy-connect-"))
    secret = secrets.token_urlsafe(32)
    started: list[object] = []
    try:
        redis = RedisServer(work / "redis")
        redis.start()
        started.append(redis)
        django = DjangoSite(work / "django")
        django.start()
        started.append(django)
        env = {
            "GATEWAY_REDIS_URL": redis.url,
            **GATEWAY_BENCH_ENV,
            "GATEWAY_JWT_SECRET": secret,
            "GATEWAY_AUTH_CACHE_S": "600",  # memory/redis: the first round's tokens stay
        }
        nodes = [GatewayProcess(work / "gateway", django.base_url, env=env) for _ in range(2)]
        for node in nodes:
            node.start()
            started.append(node)
        measured, other = nodes
        jwt = secret if args.tokens == "jwt" else None

        def round_(first: int, url: str) -> float:
            with Loadgen(
                "gateway",
                [url],
                args.connections,
                work,
                processes=2,
                concurrency=50,
                id_base=first,
                room="service_1",
                jwt_secret=jwt,
            ) as lg:
                report = lg.start(timeout_s=600)
                if report["connected"] != args.connections:
                    raise SystemExit(f"connects failed: {report}")
                return float(report["per_s"])

        base = 7_000_000
        firsts = [base + k * args.connections for k in range(args.rounds)]
        if args.tokens in ("memory", "redis"):  # the same users, seen once before
            for first in firsts:
                round_(first, measured.ws_url if args.tokens == "memory" else other.ws_url)
            time.sleep(6)  # past the online-status grace of the first rounds' closes
        else:
            round_(base - args.connections, measured.ws_url)  # warm the node once
            time.sleep(3)
        out = work / "pyspy.txt"
        spy_argv = ["py-spy", "record", "--pid", str(measured.pid), "--rate", str(args.rate)]
        spy = subprocess.Popen(
            [*spy_argv, "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=(work / "pyspy.log").open("w"),
        )
        time.sleep(1)
        rates = [round_(first, measured.ws_url) for first in firsts]
        time.sleep(1)
        spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
        spy.wait(60)
    finally:
        for proc in reversed(started):
            proc.stop()  # type: ignore[attr-defined]
    report(out, args, rates)
    return 0


def report(path: Path, args: argparse.Namespace, rates: list[float]) -> None:
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    idle = 0
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        if any(stack[-1].startswith(i) for i in IDLE):
            idle += count
            continue
        parts[part_of(stack)] += count
        own[stack[-1]] += count
    busy = sum(parts.values())
    n = args.connections * args.rounds
    print(
        f"{args.tokens}: {n} connects, {sorted(round(r) for r in rates)} connects/s by round; "
        f"{busy} busy samples at {args.rate}/s = {busy / args.rate / n * 1e6:.0f} µs of "
        f"wall time busy per connect (idle samples: {idle})"
    )
    for name, count in parts.most_common():
        print(f"  {100 * count / busy:5.1f} %  {count / args.rate / n * 1e6:6.0f} µs  {name}")
    print(f"top {args.top} functions by own samples:")
    for frame, count in own.most_common(args.top):
        print(f"  {100 * count / busy:5.1f} %  {frame[:150]}")
    print(f"profile: {path} (py-spy raw/collapsed format)")


if __name__ == "__main__":
    sys.exit(main())
