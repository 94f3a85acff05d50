"""Instructions per connect of one server process, counted by valgrind's callgrind.

    python bench/callgrind_connect.py [--target gateway|reference] [--connections 300]

Timing a connect storm on a shared 2-core machine moves ±10 % between runs; an instruction
count does not (the same code gives the same count to a fraction of a percent), so it shows
what a change to the connect path bought. It starts Redis (and for the gateway the test Django
site) and one server under callgrind, makes a warm-up round of connections (tokens cached,
personal rooms subscribed: the bench's reconnect storm), then counts only the second round's
connect + authenticate + join, 10 handshakes in flight. The kernel's share (system calls) is
not counted: callgrind sees user space only. ``--tokens redis|jwt|django`` measures a connect
whose token the node has not seen: cached in Redis by another node, a JWT it verifies itself,
or a token Django verifies (Django's own work is not counted: another process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main() -> int:
    from bench.loadgen import Loadgen
    from bench.procs import BENCH_DIR
    from tests.support.django_site import DjangoSite
    from tests.support.ports import free_port
    from tests.support.processes import child_env
    from tests.support.redis_server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("gateway", "reference"), default="gateway")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument(
        "--tokens",
        choices=("memory", "redis", "jwt", "django"),
        default="memory",
        help="gateway: the measured round's tokens come from the node's memory (a warm "
        "reconnect), from the Redis cache (verified by another node in the warm-up), are "
        "fresh HS256 JWTs, or fresh tokens Django verifies (the warm-up uses other users)",
    )
    args = parser.parse_args()
    jwt_secret = "callgrind-connect-jwt-secret-0123456789abcdef"
    work = Path(tempfile.mkdtemp(prefix="callgrind-connect-"))
    redis = RedisServer(work / "redis")
    redis.start()
    started: list[object] = [redis]
    port = free_port()
    if args.target == "gateway":
        django = DjangoSite(work / "django")
        django.start()
        started.append(django)
        env = child_env(
            {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(port),
                "GATEWAY_DJANGO_BASE_URL": django.base_url,
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_MAX_CONNECTIONS_PER_IP": "1000000",
                "GATEWAY_AUTH_TIMEOUT_S": "60",
                "GATEWAY_JWT_SECRET": jwt_secret,
                # under valgrind a round takes tens of seconds: keep the warm-up's tokens
                # cached until the measured round (the default 30 s would not)
                "GATEWAY_AUTH_CACHE_S": "600",
            }
        )
        argv = [sys.executable, "-m", "gateway"]
    else:
        env = child_env()
        script = str(BENCH_DIR / "reference_server.py")
        argv = [sys.executable, script, "--port", str(port), "--redis-url", redis.url]
    out = work / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    with (work / "server.log").open("w") as log:
        server = subprocess.Popen(
            [*valgrind, *argv], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_healthy(port, server, work / "server.log")
        urls = [f"ws://127.0.0.1:{port}/ws"]

        jwt = args.tokens == "jwt"

        def loadgen(id_base: int, on: list[str]) -> Loadgen:
            return Loadgen(
                args.target,
                on,
                args.connections,
                work,
                id_base=id_base,
                room="service_1",
                concurrency=10,
                jwt_secret=jwt_secret if jwt else None,
            )

        # the warm-up: the same users (memory), the same users on another node (redis), or
        # other users (jwt, django): the server's heap and code paths are warm in every case
        warm_urls = _other_node(work, env, started) if args.tokens == "redis" else urls
        with loadgen(5000, warm_urls) as warm:
            warm.start(timeout_s=600)
        time.sleep(3 + args.connections / 25)  # its closes are done (valgrind is slow)
        fresh = args.tokens in ("jwt", "django")
        with loadgen(5000 + (args.connections if fresh else 0), urls) as measured:
            _control("-z", server.pid)  # zero the counters
            report = measured.start(timeout_s=600)
            _control("-d", server.pid)  # dump them
        dump = max(work.glob("callgrind.out*"), key=os.path.getmtime)
        total = next(
            int(line.split()[1])
            for line in dump.read_text(errors="replace").splitlines()
            if line.startswith(("summary:", "totals:"))
        )
        n = report["connected"]
        what = f"{args.target} ({args.tokens})" if args.target == "gateway" else args.target
        print(
            f"{what}: {total / max(1, n) / 1000:,.0f}k instructions per connect "
            f"({n} connects; profile: callgrind_annotate {dump})"
        )
        return 0
    finally:
        server.terminate()
        server.wait()
        for proc in reversed(started):
            proc.stop()  # type: ignore[attr-defined]


def _other_node(work: Path, env: dict[str, str], started: list[object]) -> list[str]:
    """A second gateway node (not under callgrind) on the same Redis, for the warm-up."""
    from tests.support.processes import GatewayProcess

    other_env = {k: v for k, v in env.items() if k not in ("GATEWAY_PORT", "GATEWAY_NODE_ID")}
    node = GatewayProcess(work / "other", env["GATEWAY_DJANGO_BASE_URL"], env=other_env)
    node.start()
    started.append(node)
    return [node.ws_url]


def _wait_healthy(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300  # a Python start under valgrind takes a while
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(1)


def _control(flag: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", flag, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    sys.exit(main())
