"""50,000 authenticated connections on one gateway node.

    python -m bench.scale [--connections 50000] [--loadgens 4] [--sources 4] [--idle-s 30]
                          [--events 10] [--json PATH]

Starts a private redis-server, the Django test site, the worker and ONE gateway node, raises the
file-descriptor limit (``resource.setrlimit``; children inherit it), and connects the clients
from several loopback source addresses (127.0.0.2 …, ~28,000 ephemeral ports each) with the Node
load generator: every client is ``?token=cliente-<id>``, authenticated, in ``cliente_<id>`` and
``all_clientes``. Then it measures:

- connect rate (all handshakes, 200 in flight, tokens new to the gateway: Django verifies each);
- RSS of the node per connection (VmRSS after - before);
- idle CPU of the node over ``--idle-s`` seconds (WebSocket pings every
  ``GATEWAY_WS_HEARTBEAT_S``/2, node heartbeats), as % of one core;
- fan-out: ``--events`` events to ``all_clientes``, i.e. to every connection; deliveries/s and
  lost/dup per connection;
- personal rooms: one event to each ``cliente_<id>`` (as many rooms as connections) with
  ``AsyncPublisher``, 32 in flight; deliveries/s, lost/dup.

Figures in docs/benchmarks.md ("50,000 connections on one node").
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.loadgen import Loadgen, publish  # noqa: E402
from bench.measure import CpuMeter, rss_bytes  # noqa: E402
from bench.targets import GATEWAY_BENCH_ENV  # noqa: E402
from tests.support.django_site import DjangoSite  # noqa: E402
from tests.support.processes import GatewayProcess, WorkerProcess, child_env  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

FD_LIMIT = 400_000


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(hard, FD_LIMIT)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):  # not root: as high as the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"connections": args.connections, "fd_limit": raise_fd_limit()}
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-scale-"))
    started: list[Any] = []
    try:
        redis = RedisServer(log_dir / "redis", extra_args=["--maxclients", "100000"])
        started.append(redis)
        redis.start()
        django = DjangoSite(log_dir / "django")
        started.append(django)
        django.start()
        env = {
            "GATEWAY_REDIS_URL": redis.url,
            **GATEWAY_BENCH_ENV,
            "GATEWAY_MAX_CONNECTIONS": str(args.connections + 10_000),
            **args.gateway_env,
        }
        node = GatewayProcess(log_dir / "gateway", django.base_url, env=env)
        started.append(node)
        node.start()
        worker = WorkerProcess(log_dir / "worker", django.base_url, env=env)
        started.append(worker)
        worker.start()
        out.update(measure(args, node, redis.url, log_dir))
        out["node_alive_at_end"] = node.alive
    finally:
        for proc in reversed(started):
            proc.stop()
    return out


def measure(
    args: argparse.Namespace, node: GatewayProcess, redis_url: str, log_dir: Path
) -> dict[str, Any]:
    n = args.connections
    sources = [f"127.0.0.{2 + k}" for k in range(args.sources)]
    out: dict[str, Any] = {"sources": sources}
    time.sleep(1.0)
    rss0 = rss_bytes(node.pid)
    first = 7_000_000
    lg = Loadgen(
        "gateway",
        [node.ws_url],
        n,
        log_dir,
        processes=args.loadgens,
        concurrency=args.concurrency,
        id_base=first,
        room_mode="personal",
        local_addresses=sources,
    )
    try:
        cpu = CpuMeter([node.pid]).start()
        report = lg.start(timeout_s=900)
        cpu.stop()
        out["connect"] = {
            "connected": report["connected"],
            "failed": report["failed"],
            "errors": report["errors"],
            "per_s": report["per_s"],
            "p50_ms": report["p50_ms"],
            "p99_ms": report["p99_ms"],
            "node_cpu_us_per_connect": cpu.used_us / max(1, report["connected"]),
        }
        time.sleep(3.0)
        rss1 = rss_bytes(node.pid)
        out["rss"] = {
            "before_mib": rss0 / 2**20,
            "after_mib": rss1 / 2**20,
            "kib_per_connection": (rss1 - rss0) / 1024 / max(1, report["connected"]),
        }
        idle = CpuMeter([node.pid]).start()
        time.sleep(args.idle_s)
        idle.stop()
        out["idle"] = {"seconds": idle.wall_s, "cpu_pct_of_a_core": idle.busiest_pct()}
        out["fanout"] = _fanout(args, lg, node, redis_url, log_dir)
        out["personal"] = _personal(lg, node, redis_url, log_dir, first, n)
    finally:
        lg.close()
    return out


def _publish(config: dict[str, Any], log_dir: Path, meter: CpuMeter) -> dict[str, Any]:
    return publish(config, log_dir, sys.executable, child_env(), meter.start, timeout_s=900)


def _fanout(
    args: argparse.Namespace, lg: Loadgen, node: GatewayProcess, redis_url: str, log_dir: Path
) -> dict[str, Any]:
    lg.expect("all_clientes", args.events)
    cpu = CpuMeter([node.pid])
    pub = _publish(
        {
            "method": "publisher",
            "redis_url": redis_url,
            "rooms": ["all_clientes"],
            "rounds": args.events,
        },
        log_dir,
        cpu,
    )
    got = lg.collect(timeout_s=600, quiet_s=15)
    cpu.stop()
    return _delivery(got, pub, cpu)


def _personal(
    lg: Loadgen, node: GatewayProcess, redis_url: str, log_dir: Path, first: int, n: int
) -> dict[str, Any]:
    lg.expect(None, 1)
    cpu = CpuMeter([node.pid])
    pub = _publish(
        {
            "method": "async-publisher",
            "redis_url": redis_url,
            "personal": {"first": first, "count": n},
            "rounds": 1,
            "concurrency": 32,
        },
        log_dir,
        cpu,
    )
    got = lg.collect(timeout_s=600, quiet_s=15)
    cpu.stop()
    result = _delivery(got, pub, cpu)
    result["publishes_per_s"] = pub["published"] / max(
        1e-9, (pub["end_us"] - pub["start_us"]) / 1e6
    )
    return result


def _delivery(got: dict[str, Any], pub: dict[str, Any], cpu: CpuMeter) -> dict[str, Any]:
    span_s = ((got["last_recv_us"] or pub["end_us"]) - pub["start_us"]) / 1e6
    return {
        "deliveries": got["deliveries"],
        "deliveries_per_s": got["deliveries"] / max(span_s, 1e-9),
        "node_cpu_us_per_delivery": cpu.used_us / max(1, got["deliveries"]),
        "p50_ms": got["p50_ms"],
        "p99_ms": got["p99_ms"],
        "lost": got["lost"],
        "dup": got["dup"],
        "unexpected": got["unexpected"],
        "closed": got["closed"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=50_000)
    p.add_argument("--loadgens", type=int, default=4, help="load generator processes (4)")
    p.add_argument("--sources", type=int, default=4, help="loopback source addresses (4)")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight (200)")
    p.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window (30 s)")
    p.add_argument("--events", type=int, default=10, help="events fanned out to everyone (10)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    started = time.monotonic()
    out = run(args)
    out["elapsed_s"] = time.monotonic() - started
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
