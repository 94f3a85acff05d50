"""Reconnect storm: clients on two nodes, one node is killed (SIGKILL) or drained (SIGTERM), its
clients reconnect to the other node and recover what they missed.

    python -m bench.storm [--clients 18000] [--signal kill|term|both] [--cache warm|expired|both]
                          [--auth django|jwt|both] [--events-per-s 1000] [--seconds 30]
                          [--json PATH]

Starts a private redis-server, the Django test site (which counts the token checks it answers),
two gateway nodes and the Node load generator in recover mode: every client is
``?token=cliente-<id>`` in its personal room; when the server closes it, it reconnects to the
other node (after 0-1 s of jitter, doubling per failed try) and joins its room again with
``since`` (the offset/epoch of the last event it processed). A publisher sends events round-robin
to every client's room at a steady rate before, during and after the storm; at the end every
client must have every event of its room exactly once.

``--auth django`` (the default): the tokens are opaque (``cliente-<id>``), the Django test site
verifies a token the first time, the node keeps it in memory and in the cluster-wide cache in
Redis (``GATEWAY_AUTH_CACHE_S``), so a client landing on the other node finds it there while it
lasts. ``--auth jwt``: every client has a HS256 JWT (SimpleJWT's claims, signed by the load
generator with the nodes' ``GATEWAY_JWT_SECRET``) that the nodes verify themselves.

Twice per signal: ``warm`` — the clients connected seconds before, so their tokens are in the
token cache; ``expired`` — the clients connected more than twice the cache TTL
(``GATEWAY_AUTH_CACHE_S``, set to ``--cache-ttl-s``) before the storm, as for long-lived
connections. Reported: time from the signal until every client is back (with what it missed),
p50/p99 of each client's reconnect time (close -> back in its room), Django token checks during
the storm (and per reconnecting client), Redis commands during the storm, events lost and
duplicated. Figures in docs/benchmarks.md ("Reconnect storms").
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.loadgen import Loadgen, publish  # noqa: E402
from bench.measure import CpuMeter  # noqa: E402
from bench.scale import raise_fd_limit  # noqa: E402
from bench.targets import GATEWAY_BENCH_ENV  # noqa: E402
from tests.support.django_site import DjangoSite  # noqa: E402
from tests.support.processes import GatewayProcess, child_env  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

STORM_AT_S = 5.0  # into the publishing, the node gets its signal


def redis_calls(admin: Any) -> Counter[str]:
    info = admin.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()})


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (this network
    namespace: every process's listeners, the other developers' tests too)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return 0


def run_delay_ns(pid: int) -> int:
    """Time the process's threads spent runnable but waiting for a CPU (``schedstat``)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway"], cwd=REPO_ROOT, capture_output=True
        ).stdout.strip()
    except OSError:
        return "?"
    return rev + ("+dirty" if dirty else "")


def one_run(
    args: argparse.Namespace, sig: str, cache: str, auth: str, first_id: int
) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"gateway-storm-{sig}-{cache}-{auth}-"))
    started: list[Any] = []
    out: dict[str, Any] = {
        "signal": sig,
        "cache": cache,
        "auth": auth,
        "clients": args.clients,
        "revision": revision(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    jwt_secret = secrets.token_urlsafe(32) if auth == "jwt" else None
    # warm: every token still cached at the signal, the first connected too (connecting 18,000
    # through Django takes about a minute); expired: the TTL passed twice after the last connect
    ttl_s = args.warm_cache_ttl_s if cache == "warm" else args.cache_ttl_s
    out["cache_ttl_s"] = ttl_s
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
            "GATEWAY_AUTH_CACHE_S": str(ttl_s),
            "GATEWAY_DRAIN_SECONDS": str(args.drain_s),
            **({"GATEWAY_JWT_SECRET": jwt_secret} if jwt_secret else {}),
            **args.gateway_env,
        }
        nodes = [GatewayProcess(log_dir / "gateway", django.base_url, env=env) for _ in range(2)]
        for node in nodes:
            started.append(node)
            node.start()
        n = args.clients
        events = int(args.events_per_s * args.seconds)
        lg = Loadgen(
            "gateway",
            [node.ws_url for node in nodes],
            n,
            log_dir,
            processes=args.loadgens,
            concurrency=200,
            id_base=first_id,
            room_mode="personal",
            expect=-(-events // n),
            events_total=events,
            recover=True,
            local_addresses=[f"127.0.0.{2 + k}" for k in range(2)],
            jwt_secret=jwt_secret,
        )
        try:
            report = lg.start(timeout_s=900)
            connected_at = time.time()
            out["connect"] = {
                k: report[k] for k in ("connected", "failed", "per_s", "seconds", "errors")
            }
            if cache == "expired":
                time.sleep(2 * ttl_s + 2)
            else:
                time.sleep(2)
            out.update(_storm(args, lg, nodes, django, redis, sig, first_id, events, log_dir))
            # token ages at the signal: the last client connected, the first one
            out["last_connect_before_signal_s"] = round(out["signalled"] - connected_at, 1)
            out["first_connect_before_signal_s"] = round(
                out["signalled"] - connected_at + report["seconds"], 1
            )
        finally:
            lg.close()
    finally:
        for proc in reversed(started):
            proc.stop()
        out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _storm(
    args: argparse.Namespace,
    lg: Loadgen,
    nodes: list[GatewayProcess],
    django: DjangoSite,
    redis: RedisServer,
    sig: str,
    first_id: int,
    events: int,
    log_dir: Path,
) -> dict[str, Any]:
    admin = redis.admin()
    victim, survivor = nodes
    # CPU by process, in the steady window before the signal and from the signal until every
    # client is back: who set the pace (a process near 100 % of a core)
    pids = {"survivor": survivor.pid, "redis": redis.pid, "django": django.pid}
    pids.update({f"loadgen{k}": pid for k, pid in enumerate(lg.pids)})
    config = {
        "method": "async-publisher",
        "redis_url": redis.url,
        "personal": {"first": first_id, "count": args.clients},
        "rounds": -(-events // args.clients),
        "events": events,
        "events_per_s": args.events_per_s,
        "concurrency": 32,
    }
    result: dict[str, Any] = {}
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: result.update(
            publish(config, log_dir, sys.executable, child_env(), ready.set, timeout_s=900)
        ),
        daemon=True,
    )
    thread.start()
    ready.wait(60)
    time.sleep(STORM_AT_S - 3)
    steady_from = redis_calls(admin)  # the publisher's steady load, to subtract
    steady_cpu = {name: CpuMeter([pid]).start() for name, pid in pids.items()}
    time.sleep(3)
    for meter in steady_cpu.values():
        meter.stop()
    django_before = django.calls()["profile_calls"]
    redis_before = redis_calls(admin)
    steady = {k: v / 3 for k, v in (redis_before - steady_from).items()}
    signalled = time.time()
    storm_cpu = {name: CpuMeter([pid]).start() for name, pid in pids.items()}
    overflows_before = listen_overflows()
    waited_before = run_delay_ns(survivor.pid)
    os.kill(victim.pid, signal.SIGKILL if sig == "kill" else signal.SIGTERM)
    deadline = time.monotonic() + 600
    storm: dict[str, Any] = {}
    previous = -1
    while time.monotonic() < deadline:
        time.sleep(1.0)
        storm = lg.storm()
        gone = sig == "kill" or not victim.alive  # a drain closes over GATEWAY_DRAIN_SECONDS
        settled = storm["closes"] == previous  # every close the load generators will see is in
        previous = storm["closes"]
        if gone and settled and storm["closes"] and storm["recovered"] >= storm["closes"]:
            break
    for meter in storm_cpu.values():
        meter.stop()
    waited_s = (run_delay_ns(survivor.pid) - waited_before) / 1e9
    overflows = listen_overflows() - overflows_before
    recovered_at = (storm["last_recovered_us"] or 0) / 1e6
    django_calls = django.calls()["profile_calls"] - django_before
    redis_delta = redis_calls(admin) - redis_before
    span = time.time() - signalled
    for command, rate in steady.items():
        redis_delta[command] = max(0, round(redis_delta[command] - rate * span))
    redis_delta = +redis_delta
    thread.join(900)
    got = lg.collect(timeout_s=300, quiet_s=10)
    return {
        "signalled": signalled,
        "victims": storm["closes"],
        "recovered": storm["recovered"],
        "not_recovered": storm["not_recovered"],
        "retries": storm["retries"],
        "seen_again": storm["seen_again"],
        "close_codes": storm["close_codes"],
        "all_back_s": recovered_at - signalled if recovered_at else None,
        "reconnect_p50_ms": storm["p50_ms"],
        "reconnect_p99_ms": storm["p99_ms"],
        "reconnect_max_ms": storm["max_ms"],
        "django_requests": django_calls,
        "django_requests_per_reconnect": django_calls / max(1, storm["closes"]),
        "redis_commands": sum(redis_delta.values()),  # minus the publisher's steady rate
        "redis_commands_per_reconnect": sum(redis_delta.values()) / max(1, storm["closes"]),
        "redis_top": dict(redis_delta.most_common(8)),
        # % of one core: steady (3 s before the signal), storm (signal -> all back, + <= 2 s)
        "cpu_pct_steady": {k: round(m.busiest_pct(), 1) for k, m in steady_cpu.items()},
        "cpu_pct_storm": {k: round(m.busiest_pct(), 1) for k, m in storm_cpu.items()},
        "storm_window_s": round(storm_cpu["survivor"].wall_s, 1),
        # the survivor's time runnable but waiting for a core (the machine's other work)
        "survivor_cpu_wait_s": round(waited_s, 1),
        "listen_overflows": overflows,
        "published": result.get("published"),
        "publish_errors": result.get("errors"),
        "deliveries": got["deliveries"],
        "lost": got["lost"],
        "dup": got["dup"],
        "unexpected": got["unexpected"],
        "errors": storm["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=18_000)
    p.add_argument("--signal", choices=("kill", "term", "both"), default="both")
    p.add_argument("--cache", choices=("warm", "expired", "both"), default="both")
    p.add_argument("--auth", choices=("django", "jwt", "both"), default="django")
    p.add_argument(
        "--cache-ttl-s", type=float, default=10.0, help="GATEWAY_AUTH_CACHE_S, expired runs (10)"
    )
    p.add_argument(
        "--warm-cache-ttl-s", type=float, default=120.0, help="the same, warm runs (120)"
    )
    p.add_argument("--drain-s", type=float, default=10.0, help="GATEWAY_DRAIN_SECONDS (10)")
    p.add_argument("--events-per-s", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=30.0, help="publishing time (30)")
    p.add_argument("--loadgens", type=int, default=4)
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    raise_fd_limit()
    runs = []
    signals = ("kill", "term") if args.signal == "both" else (args.signal,)
    caches = ("warm", "expired") if args.cache == "both" else (args.cache,)
    auths = ("django", "jwt") if args.auth == "both" else (args.auth,)
    first = 9_000_000
    for auth in auths:
        for sig in signals:
            for cache in caches:
                run = one_run(args, sig, cache, auth, first)
                first += args.clients
                print(json.dumps(run), flush=True)
                runs.append(run)
                if args.json:  # after every run: a long series keeps what it has
                    args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
