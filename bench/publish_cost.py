"""What one publish costs Redis, part by part: the publish script with everything on, then
without each part (dedupe key, history, the per-event TTL refreshes), with the dashboard's event
log flushed once per 100 or per 1,000 events (what one process's ``FLUSH_S`` gathers at 100 or
1,000 publishes/s), against a bare ``PUBLISH`` (what Socket.IO's Redis emitter sends per event).

    python -m bench.publish_cost [--rooms 2000] [--events 20000] [--repeat 3]

Starts a private redis-server, publishes ``--events`` events round-robin over ``--rooms`` rooms
(pipelined, 100 per round trip, no subscribers; per variant an emptied Redis whose rooms are
warmed by one publish each first), and reads Redis's own accounting: ``INFO commandstats``
(calls, commands run inside scripts included) and ``used_cpu_user + used_cpu_sys``. Medians of
``--repeat`` runs; variants interleaved, in a rotated order each run. Figures in
docs/benchmarks.md ("Publishing to many rooms").
"""

from __future__ import annotations

import argparse
import hashlib
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

from gateway.backend import event_log, scripts  # noqa: E402
from gateway.backend.keys import Keys  # noqa: E402
from gateway.backend.redis_publish import HistoryPolicy, build_calls  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

BATCH = 100
BODY = b'{"seq":1,"t":1733333333333333,"pad":"' + b"x" * 90 + b'"}'

# variant -> what build_calls' arguments are changed to (ARGV index from 0)
VARIANTS: dict[str, dict[int, Any]] = {
    "previous release: summary written by the script, per publish": {},
    "full": {},
    "full + event log per 1,000 events": {},
    "full + event log per 100 events": {},
    "no dedupe key": {6: ""},
    "no history": {2: 0},
    "no dedupe or history": {6: "", 2: 0},
    "no TTL refreshes (not shipped: measured to decide)": {},
}
FLUSH_EVERY = {"full + event log per 1,000 events": 1000, "full + event log per 100 events": 100}
NO_TTL = "no TTL refreshes (not shipped: measured to decide)"


def no_ttl_script() -> scripts.LuaScript:
    """The publish script without its two per-event ``EXPIRE``s (room meta, history)."""
    source = scripts.load(scripts.PUBLISH).source
    for line in (
        'redis.call("EXPIRE", KEYS[1], ARGV[5])',
        'redis.call("EXPIRE", KEYS[2], ARGV[4])',
    ):
        assert line in source, line
        source = source.replace(line, "")
    return scripts.LuaScript("publish_no_ttl", source, hashlib.sha1(source.encode()).hexdigest())


PREVIOUS = "previous release: summary written by the script, per publish"
SUMMARY_LUA = """if ARGV[13] == "1" then
  redis.call("XADD", KEYS[4], "MAXLEN", "~", 1000, "*", "room", ARGV[17], "type", ARGV[14],
             "id", ARGV[10], "ts", ARGV[15], "source", ARGV[16])
  if redis.call("HINCRBY", KEYS[5], ARGV[14], 1) == 1 then
    redis.call("EXPIRE", KEYS[5], 7200)
  end
end
"""


def previous_script() -> scripts.LuaScript:
    """The publish script as the release before the event log had it: the dashboard's summary
    (``XADD {g}:events``, ``HINCRBY {g}:epm:<minute>``) written inline, per publish."""
    source = scripts.load(scripts.PUBLISH).source
    anchor = 'if ARGV[11] and ARGV[11] ~= "" then'
    assert anchor in source
    source = source.replace(anchor, SUMMARY_LUA + anchor)
    return scripts.LuaScript("publish_previous", source, hashlib.sha1(source.encode()).hexdigest())


def previous_call(keys: Keys, call: Call) -> tuple[list[str], list[Any]]:
    call_keys, args, (room, type_, _, ts, source, _) = call
    extra_keys = [keys.events, keys.events_minute(ts // 60000)]
    return [*call_keys, *extra_keys], [*args, "", "", "1", type_, ts, source, room]


Call = tuple[list[str], list[Any], tuple[str, str, str, int, str, int]]


def calls_for(keys: Keys, rooms: list[str], events: int) -> list[Call]:
    out = []
    for i in range(events):
        _, [call] = build_calls(
            keys, HistoryPolicy(), [rooms[i % len(rooms)]], "bench", BODY, "bench", sharded=False
        )
        out.append((call.keys, call.args, call.summary))
    return out


def cpu_us(admin: Any) -> float:
    info = admin.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


def run_variant(admin: Any, keys: Keys, name: str, calls: list[Call]) -> dict[str, Any]:
    script = {NO_TTL: no_ttl_script, PREVIOUS: previous_script}.get(
        name, lambda: scripts.load(scripts.PUBLISH)
    )()
    flush_script = scripts.load(scripts.EVENT_LOG)
    flush_every = FLUSH_EVERY.get(name, 0)
    pending = event_log.Pending()
    changes = VARIANTS.get(name, {})
    admin.config_resetstat()
    cpu0 = cpu_us(admin)
    t0 = time.perf_counter()
    for start in range(0, len(calls), BATCH):
        pipe = admin.pipeline(transaction=False)
        for n, (call_keys, args, summary) in enumerate(calls[start : start + BATCH], start):
            if name == "bare PUBLISH":
                pipe.execute_command("PUBLISH", args[0], args[1])
                continue
            args = [changes.get(j, a) for j, a in enumerate(args)]
            if name == PREVIOUS:
                call_keys, args = previous_call(keys, (call_keys, args, summary))
            pipe.evalsha(script.sha, len(call_keys), *call_keys, *args)
            if flush_every:
                pending.add(*summary)
                if (n + 1) % flush_every == 0 and (flush := pending.take()) is not None:
                    f_keys, f_args = flush.call(keys)
                    pipe.evalsha(flush_script.sha, len(f_keys), *f_keys, *f_args)
        pipe.execute()
    wall = time.perf_counter() - t0
    cpu = cpu_us(admin) - cpu0
    stats = admin.info("commandstats")
    calls_made = sum(
        int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_info", "cmdstat_config|resetstat")
    )
    n = len(calls)
    main = stats.get("cmdstat_evalsha") or stats.get("cmdstat_publish")
    return {
        "redis_cpu_us_per_event": cpu / n,
        "usec_per_call": float(main["usec_per_call"]),
        "commands_per_event": calls_made / n,
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
        admin.script_load(scripts.load(scripts.EVENT_LOG).source)
        admin.script_load(no_ttl_script().source)
        admin.script_load(previous_script().source)
        names = [*VARIANTS, "bare PUBLISH"]
        for rep in range(args.repeat):
            rooms = [f"cliente_{rep}_{i}" for i in range(args.rooms)]
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                # every variant from the same state (the keyspace's growth and rehashing
                # otherwise land on whichever variant runs when a table doubles)
                admin.flushall()
                run_variant(admin, keys, "full", calls_for(keys, rooms, args.rooms))  # warm
                calls = calls_for(keys, rooms, args.events)  # fresh event ids
                results.setdefault(name, []).append(run_variant(admin, keys, name, calls))
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
