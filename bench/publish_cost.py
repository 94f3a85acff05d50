"""What one publish costs Redis, part by part: the publish script with everything on, then
without each part (dedupe key, dashboard summary, history), against a bare ``PUBLISH`` (what
Socket.IO's Redis emitter sends per event).

    python -m bench.publish_cost [--rooms 2000] [--events 20000] [--repeat 3]

Starts a private redis-server, publishes ``--events`` events round-robin over ``--rooms`` rooms
(pipelined, 100 per round trip, no subscribers, rooms warmed by one publish each first) per
variant, and reads Redis's own accounting: ``INFO commandstats`` (microseconds per call of the
script, commands inside it included) and ``used_cpu_user + used_cpu_sys``. Medians of
``--repeat`` runs; variants interleaved. Figures in docs/benchmarks.md ("Publishing to many
rooms").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.backend import scripts  # noqa: E402
from gateway.backend.keys import Keys  # noqa: E402
from gateway.backend.redis_publish import HistoryPolicy, build_calls  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

BATCH = 100
BODY = b'{"seq":1,"t":1733333333333333,"pad":"' + b"x" * 90 + b'"}'

# variant -> what build_calls' arguments are changed to (ARGV index from 0)
VARIANTS: dict[str, dict[int, Any]] = {
    "full": {},
    "no dedupe key": {6: ""},
    "no dashboard summary": {10: "0"},
    "no history": {2: 0},
    "no dedupe, summary or history": {6: "", 10: "0", 2: 0},
}


def calls_for(keys: Keys, rooms: list[str], events: int) -> list[tuple[list[str], list[Any]]]:
    out = []
    for i in range(events):
        _, [call] = build_calls(
            keys, HistoryPolicy(), [rooms[i % len(rooms)]], "bench", BODY, "bench", sharded=False
        )
        out.append((call.keys, call.args))
    return out


def cpu_us(admin: Any) -> float:
    info = admin.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


def run_variant(admin: Any, name: str, calls: list[tuple[list[str], list[Any]]]) -> dict[str, Any]:
    script = scripts.load(scripts.PUBLISH)
    changes = VARIANTS.get(name, {})
    admin.config_resetstat()
    cpu0 = cpu_us(admin)
    t0 = time.perf_counter()
    for start in range(0, len(calls), BATCH):
        pipe = admin.pipeline(transaction=False)
        for keys, args in calls[start : start + BATCH]:
            if name == "bare PUBLISH":
                pipe.execute_command("PUBLISH", args[0], args[1])
                continue
            args = [changes.get(i, a) for i, a in enumerate(args)]
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.execute()
    wall = time.perf_counter() - t0
    cpu = cpu_us(admin) - cpu0
    stats = admin.info("commandstats")
    inner = {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config|resetstat")
    }
    n = len(calls)
    main = stats.get("cmdstat_evalsha") or stats.get("cmdstat_publish")
    return {
        "redis_cpu_us_per_event": cpu / n,
        "usec_per_call": float(main["usec_per_call"]),
        "commands_per_event": 1 + sum(inner.values()) / n if name != "bare PUBLISH" else 1,
        "events_per_s_one_client": n / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=2000)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    keys = Keys("gateway")
    server = RedisServer(Path(tempfile.mkdtemp(prefix="gateway-publish-cost-")) / "redis")
    server.start()
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        admin = server.admin()
        admin.script_load(scripts.load(scripts.PUBLISH).source)
        names = [*VARIANTS, "bare PUBLISH"]
        for rep in range(args.repeat):
            rooms = [f"cliente_{rep}_{i}" for i in range(args.rooms)]
            run_variant(admin, "full", calls_for(keys, rooms, args.rooms))  # rooms exist
            for name in names:
                calls = calls_for(keys, rooms, args.events)  # fresh event ids
                results.setdefault(name, []).append(run_variant(admin, name, calls))
    finally:
        server.stop()
    summary = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    print("| variant | commands/event | Redis µs/call | Redis CPU µs/event | events/s (1 client) |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['commands_per_event']:.2f} | {s['usec_per_call']:.2f} | "
            f"{s['redis_cpu_us_per_event']:.2f} | {s['events_per_s_one_client']:,.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
