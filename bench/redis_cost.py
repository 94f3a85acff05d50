"""What connections and publishes cost Redis: commands per connect (``INFO commandstats``,
commands run inside scripts included), Redis memory per idle connection (``used_memory`` and
where it goes, by key pattern), commands per publish, and on a Redis Cluster the share of each
master.

    python -m bench.redis_cost [--connections 2000] [--cluster] [--nodes 2] [--publishes 2000]
                               [--gateway-env KEY=VALUE ...] [--json PATH]

Starts a private redis-server (or a 3-master Redis Cluster), the Django test site and real
gateway nodes; connects clients with the Node load generator (``?token=cliente-<id>``: each is
authenticated and in its automatic rooms ``cliente_<id>`` and ``all_clientes``), reconnects
them (tokens seen before), closes them, and publishes with ``Publisher.publish`` to as many
rooms as publishes. The background (heartbeats, liveness probes) is measured over a quiet window
first and subtracted per command. Figures in docs/benchmarks.md ("What Redis pays").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.loadgen import Loadgen  # noqa: E402
from bench.targets import GATEWAY_BENCH_ENV  # noqa: E402
from tests.support.django_site import DjangoSite  # noqa: E402
from tests.support.processes import GatewayProcess, ManagedProcess  # noqa: E402
from tests.support.redis_server import RedisCluster, RedisServer  # noqa: E402

QUIET_S = 6.0  # the background window
MAX_FAILED = 0.01  # share of failed connects above which the run is void (--max-failed-pct)
OWN = ("info", "config|resetstat", "config", "scan", "memory|usage", "type", "ping", "cluster|info")


class Shards:
    """Admin clients to every master (one on a single Redis)."""

    def __init__(self, clients: dict[str, redis.Redis]) -> None:
        self.clients = clients

    def reset(self) -> None:
        for client in self.clients.values():
            client.config_resetstat()

    def calls(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for name, client in self.clients.items():
            info = client.info("commandstats")
            calls: Counter[str] = Counter()
            for key, value in info.items():
                command = key.removeprefix("cmdstat_")
                if command not in OWN:
                    calls[command] = int(value["calls"])
            out[name] = calls
        return out

    def cpu_us(self) -> float:
        total = 0.0
        for client in self.clients.values():
            info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total * 1e6

    def used_memory(self) -> int:
        return sum(int(c.info("memory")["used_memory"]) for c in self.clients.values())

    def memory_by_pattern(self) -> dict[str, dict[str, int]]:
        """Keys grouped by their name with hash tags, hex digests and numbers blanked: count
        and bytes."""
        groups: dict[str, dict[str, int]] = {}
        for client in self.clients.values():
            for key in client.scan_iter(count=1000):
                name = key.decode(errors="replace")
                pattern = re.sub(r"\{[^}]*\}", "{…}", name)
                pattern = re.sub(r"[0-9a-f]{32,}", "<sha>", pattern)  # token cache keys
                pattern = re.sub(r"\d+", "N", pattern)
                entry = groups.setdefault(pattern, {"keys": 0, "bytes": 0})
                entry["keys"] += 1
                entry["bytes"] += int(client.memory_usage(key, samples=0) or 0)
        return groups


@contextmanager
def stack(args: argparse.Namespace, log_dir: Path) -> Iterator[tuple[Shards, list[str], str]]:
    started: list[Any] = []
    try:
        if args.cluster:
            cluster = RedisCluster(log_dir / "cluster", masters=3)
            started.append(cluster)
            cluster.start()
            url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}/0"
            shards = Shards(
                {f"master-{p}": cluster.nodes[i].admin() for i, p in enumerate(cluster.ports)}
            )
        else:
            server = RedisServer(log_dir / "redis")
            started.append(server)
            server.start()
            url = server.url
            shards = Shards({"redis": server.admin()})
        django = DjangoSite(log_dir / "django")
        started.append(django)
        django.start()
        env = {"GATEWAY_REDIS_URL": url, **GATEWAY_BENCH_ENV, **args.gateway_env}
        nodes = [
            GatewayProcess(log_dir / "gateway", django.base_url, env=env) for _ in range(args.nodes)
        ]
        for node in nodes:
            started.append(node)
            node.start()
        yield shards, [n.ws_url for n in nodes], url
    finally:
        for proc in reversed(started):
            if isinstance(proc, ManagedProcess):
                proc.stop()
            else:
                proc.stop()


def measure(
    shards: Shards, background: dict[str, float], run: Callable[[], None]
) -> dict[str, Any]:
    """Commands per shard while ``run`` ran, minus the background rate over the same time."""
    shards.reset()
    cpu0 = shards.cpu_us()
    t0 = time.monotonic()
    run()
    elapsed = time.monotonic() - t0
    cpu = shards.cpu_us() - cpu0
    per_shard = shards.calls()
    total: Counter[str] = Counter()
    for calls in per_shard.values():
        total.update(calls)
    for command, rate in background.items():
        total[command] = max(0, round(total[command] - rate * elapsed))
    return {
        "elapsed_s": elapsed,
        "redis_cpu_us": cpu,
        "by_command": {k: v for k, v in total.most_common() if v},
        "by_shard": {name: sum(calls.values()) for name, calls in per_shard.items()},
    }


def background_rate(shards: Shards) -> dict[str, float]:
    shards.reset()
    time.sleep(QUIET_S)
    total: Counter[str] = Counter()
    for calls in shards.calls().values():
        total.update(calls)
    return {command: n / QUIET_S for command, n in total.items()}


def per(result: dict[str, Any], n: int) -> dict[str, Any]:
    calls = sum(result["by_command"].values())
    shard_total = sum(result["by_shard"].values()) or 1
    return {
        "commands_per_op": calls / n,
        "redis_cpu_us_per_op": result["redis_cpu_us"] / n,
        "by_command_per_op": {k: round(v / n, 3) for k, v in result["by_command"].items()},
        "shard_share_pct": {
            name: round(100 * v / shard_total, 1) for name, v in result["by_shard"].items()
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.publish import Publisher

    n = args.connections
    out: dict[str, Any] = {"connections": n, "nodes": args.nodes, "cluster": args.cluster}
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-redis-cost-"))
    with stack(args, log_dir) as (shards, urls, url):
        time.sleep(2)
        background = background_rate(shards)
        out["background_per_s"] = {k: round(v, 2) for k, v in background.items()}
        mem0 = shards.used_memory()

        def clients() -> Loadgen:
            """The same users each time: the second round measures reconnects."""
            return Loadgen(
                "gateway",
                urls,
                n,
                log_dir,
                processes=2 if n >= 500 else 1,
                concurrency=args.concurrency,
                id_base=5_000_000,
                room_mode="personal",
            )

        lg = clients()
        report: dict[str, Any] = {}
        result = measure(shards, background, lambda: report.update(lg.start()))
        _check(report, out)
        out["connect"] = per(result, n)
        time.sleep(1.0)
        mem1 = shards.used_memory()
        out["memory"] = {
            "used_memory_delta_bytes": mem1 - mem0,
            "bytes_per_connection": (mem1 - mem0) / n,
            "by_pattern": shards.memory_by_pattern(),
        }
        # the nodes remove what a close leaves after the close: give them time in the window
        out["disconnect"] = per(measure(shards, background, lambda: _close(lg)), n)
        time.sleep(1.0)
        lg = clients()
        report = {}
        result = measure(shards, background, lambda: report.update(lg.start()))
        _check(report, out)
        out["reconnect"] = per(result, n)
        _close(lg)  # and its deferred unsubscribes, before the publish window
        publisher = Publisher.from_url(url)
        p = args.publishes

        def publish() -> None:
            for i in range(p):
                publisher.publish(f"service_{i}", "bench", {"seq": i})
            publisher.event_log.flush()  # the dashboard's summaries (one call per second)

        out["publish"] = per(measure(shards, background, publish), p)
        publisher.close()
    return out


def _close(lg: Loadgen) -> None:
    lg.close()
    time.sleep(4.0)  # > the nodes' unsubscribe delay (2 s)


def _check(report: dict[str, Any], out: dict[str, Any]) -> None:
    """Failed connects are reported (``failed``), not hidden: above 1 % the run is void."""
    out.setdefault("failed", []).append({"failed": report["failed"], "errors": report["errors"]})
    if report["failed"] > MAX_FAILED * (report["failed"] + report["connected"]):
        raise RuntimeError(f"{report['failed']} connections failed: {report['errors']}")


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"{out['connections']} connections on {out['nodes']} nodes, "
        f"{'a 3-master Redis Cluster' if out['cluster'] else 'one Redis'}",
        "",
        "| step | commands / op | Redis CPU µs / op | top commands / op | shard share % |",
        "|---|---|---|---|---|",
    ]
    for step in ("connect", "reconnect", "disconnect", "publish"):
        r = out[step]
        top = ", ".join(f"{k} {v:g}" for k, v in list(r["by_command_per_op"].items())[:8])
        shares = ", ".join(f"{v:g}" for v in r["shard_share_pct"].values())
        cells = (
            step,
            f"{r['commands_per_op']:.2f}",
            f"{r['redis_cpu_us_per_op']:.1f}",
            top,
            shares,
        )
        lines.append("| " + " | ".join(cells) + " |")
    failed = [f["failed"] for f in out.get("failed", [])]
    if any(failed):
        lines += ["", f"Failed connects (connect, reconnect): {failed}"]
    mem = out["memory"]
    lines += ["", f"Redis memory per idle connection: {mem['bytes_per_connection']:.0f} B", ""]
    lines += ["| key pattern | keys | bytes | bytes / connection |", "|---|---|---|---|"]
    for pattern, g in sorted(mem["by_pattern"].items(), key=lambda kv: -kv[1]["bytes"]):
        each = g["bytes"] / out["connections"]
        lines.append(f"| `{pattern}` | {g['keys']} | {g['bytes']:,} | {each:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--publishes", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight (50)")
    p.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--max-failed-pct", type=float, default=1.0, help="failed connects (1 %%)")
    args = p.parse_args(argv)
    global MAX_FAILED
    MAX_FAILED = args.max_failed_pct / 100
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    out = run(args)
    print(markdown(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
