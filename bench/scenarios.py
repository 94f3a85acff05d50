"""The scenarios. Each takes a running ``Stack`` and returns rows of metrics (one row, or one
per publishing method). Rooms and user ids are fresh for every run, so history, caches and
subscriptions left by an earlier scenario never help a later one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Loadgen, LoadgenError, publish
from bench.measure import CpuMeter, rss_bytes
from bench.targets import Stack

SETTLE_S = 0.5  # after the last join, before measuring: same pause for every target
# between connect rounds: the previous round's closes and the rooms' deferred unsubscribes
# (GATEWAY_UNSUBSCRIBE_DELAY_S, 2 s) are done before the next round is measured
ROUND_GAP_S = 3.0


class ScenarioError(RuntimeError):
    """The scenario could not be measured (e.g. connections failed); the message says why."""


@dataclass(frozen=True)
class Sizes:
    connections: int  # subscribers / members / rooms / idle connections / connects
    fanout_events: int  # events published into the one room of the fan-out burst
    rate_per_s: float  # the fixed rate
    rate_seconds: float  # how long the fixed rate runs
    personal_rounds: int  # events per personal room
    publish_events: int  # events per publishing method
    connect_concurrency: int  # handshakes in flight
    many_rooms: int = 2000  # rooms_publish: clients, each in its own room
    many_events: int = 5000  # rooms_publish: events, one per room event, round-robin
    many_in_flight: int = 32  # rooms_publish: publishes in flight


SIZES = {
    "full": Sizes(2000, 100, 5, 20, 5, 2000, 50),
    "quick": Sizes(1000, 30, 5, 6, 2, 500, 50, 1000, 2500),
    "smoke": Sizes(200, 10, 5, 2, 2, 100, 50, 200, 500),
}


@dataclass
class Context:
    stack: Stack
    sizes: Sizes
    log_dir: Path
    loadgens: int
    id_base: int  # the next unused user id / room number
    commands: list[str] = field(default_factory=list)  # load generator / publisher commands

    def ids(self, n: int) -> int:
        """Reserve ``n`` fresh user ids (also used as room numbers); return the first."""
        first = self.id_base
        self.id_base += n
        return first

    def room(self) -> str:
        return f"service_{self.ids(1)}"

    def loadgen(self, connections: int, urls: list[str] | None = None, **kw: Any) -> Loadgen:
        kw.setdefault("processes", self.loadgens if connections >= 500 else 1)
        kw.setdefault("concurrency", self.sizes.connect_concurrency)
        urls = urls or self.stack.urls
        lg = Loadgen(self.stack.protocol, urls, connections, self.log_dir, **kw)
        self._note(lg.command)
        return lg

    def publish(self, on_ready: Callable[[], None], **kw: Any) -> dict[str, Any]:
        """Run the publisher; ``on_ready`` runs once it is connected, just before it starts."""
        config = self.stack.publish_config(**kw)
        stack = self.stack
        result = publish(
            config, self.log_dir, stack.python, stack.publish_env, on_ready, program=stack.publisher
        )
        self._note(result["command"])
        if result["errors"]:
            raise ScenarioError(f"{result['errors']} publishes failed: {result['first_error']}")
        return result

    def _note(self, command: str) -> None:
        if len(self.commands) < 40:
            self.commands.append(command)


def meters(*meters: CpuMeter) -> Callable[[], None]:
    """A callback that starts the meters (when the publisher is ready)."""

    def start() -> None:
        for meter in meters:
            meter.start()

    return start


def _connected(lg: Loadgen) -> dict[str, Any]:
    report = lg.start()
    if report["failed"]:
        raise ScenarioError(
            f"{report['failed']} of {report['failed'] + report['connected']} connections "
            f"failed: {report['errors']}"
        )
    return report


def _delivery_metrics(
    got: dict[str, Any], pub: dict[str, Any], server: CpuMeter, aux: CpuMeter
) -> dict[str, Any]:
    deliveries = got["deliveries"]
    span_s = ((got["last_recv_us"] or pub["end_us"]) - pub["start_us"]) / 1e6
    per = max(1, deliveries)
    return {
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / max(span_s, 1e-9),
        "cpu_us_per_delivery": server.used_us / per,
        "aux_cpu_us_per_delivery": aux.used_us / per,
        "p50_ms": got["p50_ms"],
        "p99_ms": got["p99_ms"],
        "lost": got["lost"],
        "dup": got["dup"],
        "unexpected": got["unexpected"],
        "closed": got["closed"],
        "close_codes": got["close_codes"],
    }


def _deliver(
    ctx: Context, connections: int, rounds: int, rate: float, personal: bool
) -> dict[str, Any]:
    """Connect, publish ``rounds`` rounds (one event per room each), collect: the metrics."""
    stack = ctx.stack
    first_id = ctx.ids(connections)
    room = ctx.room()
    rooms: dict[str, Any] = (
        {"personal": {"first": first_id, "count": connections}} if personal else {"rooms": [room]}
    )
    with ctx.loadgen(
        connections,
        id_base=first_id,
        room_mode="personal" if personal else "shared",
        room=room,
        expect=rounds,
    ) as lg:
        t0 = time.monotonic()
        _connected(lg)
        time.sleep(SETTLE_S)
        server = CpuMeter(stack.server_pids)
        aux = CpuMeter(stack.aux_pids.values())
        own = CpuMeter(lg.pids)
        t1 = time.monotonic()
        pub = ctx.publish(meters(server, aux, own), **rooms, rounds=rounds, rate=rate)
        t2 = time.monotonic()
        got = lg.collect()
        for meter in (server, aux, own):
            meter.stop()
        t3 = time.monotonic()
    metrics = _delivery_metrics(got, pub, server, aux)
    metrics["loadgen_cpu_us_per_delivery"] = own.used_us / max(1, got["deliveries"])
    metrics["loadgen_cpu_pct"] = own.busiest_pct()
    metrics["phase_s"] = {"connect": t1 - t0, "publish": t2 - t1, "collect": t3 - t2}
    metrics["server_cpu_pct"] = 100 * server.used_us / 1e6 / server.wall_s
    pub_s = (pub["end_us"] - pub["start_us"]) / 1e6
    metrics["publishes_per_s"] = pub["published"] / max(1e-9, pub_s)
    return metrics


# --- the scenarios --------------------------------------------------------------------------------
def fanout(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.sizes
    return [_deliver(ctx, s.connections, s.fanout_events, 0, personal=False)]


def fixed_rate(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.sizes
    rounds = max(1, round(s.rate_per_s * s.rate_seconds))
    return [_deliver(ctx, s.connections, rounds, s.rate_per_s, personal=False)]


def personal(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.sizes
    return [_deliver(ctx, s.connections, s.personal_rounds, 0, personal=True)]


def idle(ctx: Context) -> list[dict[str, Any]]:
    """RSS of the server processes before and after N authenticated connections in their rooms."""
    n = ctx.sizes.connections
    pids = ctx.stack.server_pids
    time.sleep(SETTLE_S)
    before = sum(rss_bytes(pid) for pid in pids)
    with ctx.loadgen(n, id_base=ctx.ids(n), room_mode="personal") as lg:
        _connected(lg)
        time.sleep(2 * SETTLE_S)
        after = sum(rss_bytes(pid) for pid in pids)
    return [
        {
            "connections": n,
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "rss_kib_per_conn": (after - before) / 1024 / n,
        }
    ]


def connect(ctx: Context) -> list[dict[str, Any]]:
    """N connections, ``connect_concurrency`` at a time: connect, authenticate, join a room —
    measured on a second round of the same users (tokens warm in the gateway's cache)."""
    n = ctx.sizes.connections
    server = CpuMeter(ctx.stack.server_pids)
    aux = CpuMeter(ctx.stack.aux_pids.values())
    first, room = ctx.ids(n), ctx.room()
    # Warm-up with the same users: the measured round is a reconnect storm, with each token
    # verified by Django once before (the gateway's token cache serves it), as in a deploy.
    with ctx.loadgen(n, id_base=first, room=room) as warm:
        _connected(warm)
    time.sleep(SETTLE_S)
    with ctx.loadgen(n, id_base=first, room=room) as lg:
        server.start()
        aux.start()
        report = _connected(lg)
        server.stop()
        aux.stop()
    return [
        {
            "connections": n,
            "connects_per_s": report["per_s"],
            "p50_ms": report["p50_ms"],
            "p99_ms": report["p99_ms"],
            "cpu_us_per_connect": server.used_us / n,
            "aux_cpu_us_per_connect": aux.used_us / n,
            "loadgen_cpu_us_per_connect": report["loadgen_cpu_us"] / n,
            "loadgen_cpu_pct": report["loadgen_cpu_pct"],
        }
    ]


def _connect_round(ctx: Context, first: int, room: str, variant: str, **kw: Any) -> dict[str, Any]:
    """One round of N connects (connect, authenticate, join), with the CPU of the servers, of
    Redis and of Django measured over it apart."""
    n = ctx.sizes.connections
    server = CpuMeter(ctx.stack.server_pids)
    helpers = {name: CpuMeter([pid]) for name, pid in ctx.stack.aux_pids.items()}
    with ctx.loadgen(n, id_base=first, room=room, **kw) as lg:
        server.start()
        for meter in helpers.values():
            meter.start()
        report = _connected(lg)
        server.stop()
        for meter in helpers.values():
            meter.stop()
    row = {
        "variant": variant,
        "connections": n,
        "connects_per_s": report["per_s"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "cpu_us_per_connect": server.used_us / n,
        "loadgen_cpu_us_per_connect": report["loadgen_cpu_us"] / n,
        "loadgen_cpu_pct": report["loadgen_cpu_pct"],
    }
    for name in ("redis", "django"):
        meter = helpers.get(name)
        row[f"{name}_cpu_us_per_connect"] = meter.used_us / n if meter else None
    return row


def connect_auth(ctx: Context) -> list[dict[str, Any]]:
    """Connect + authenticate + join by where the token is judged. The gateway: fresh HS256
    JWTs verified by the node itself; fresh tokens verified by Django (one request each); the
    same tokens again, each on the other node than before (its memory cache misses: the Redis
    cache answers, as in a storm after a node loss). The reference: one round, no auth."""
    n = ctx.sizes.connections
    if ctx.stack.jwt_secret is None:
        return [_connect_round(ctx, ctx.ids(n), ctx.room(), "")]
    secret = ctx.stack.jwt_secret
    # a round not measured first: the nodes' heaps grow to N sessions once (page faults are
    # system CPU), so that no measured round pays for it alone
    _connect_round(ctx, ctx.ids(n), ctx.room(), "warm-up", jwt_secret=secret)
    time.sleep(ROUND_GAP_S)
    rows = [_connect_round(ctx, ctx.ids(n), ctx.room(), "JWT", jwt_secret=secret)]
    time.sleep(ROUND_GAP_S)
    first, room = ctx.ids(n), ctx.room()
    rows.append(_connect_round(ctx, first, room, "Django"))
    time.sleep(ROUND_GAP_S)
    other_node = ctx.stack.urls[1:] + ctx.stack.urls[:1]
    rows.append(_connect_round(ctx, first, room, "Redis cache, other node", urls=other_node))
    return rows


def publish_throughput(ctx: Context) -> list[dict[str, Any]]:
    """K events as fast as one sequential publisher goes (the API: 8 requests in flight), one
    subscriber counting them: accepted/s at the publisher, delivered/s end to end."""
    rows: list[dict[str, Any]] = [
        {"variant": method, "error": why} for method, why in ctx.stack.missing_methods.items()
    ]
    k = ctx.sizes.publish_events
    for method in ctx.stack.publish_methods:
        room = ctx.room()
        with ctx.loadgen(1, id_base=ctx.ids(1), room=room, expect=k) as lg:
            _connected(lg)
            time.sleep(SETTLE_S)
            server = CpuMeter(ctx.stack.server_pids)
            aux = CpuMeter(ctx.stack.aux_pids.values())
            try:
                pub = ctx.publish(meters(server, aux), method=method, rooms=[room], rounds=k)
                got = lg.collect()
            except (ScenarioError, LoadgenError) as exc:
                rows.append({"variant": method, "error": str(exc)})
                continue
            server.stop()
            aux.stop()
        span_s = ((got["last_recv_us"] or pub["end_us"]) - pub["start_us"]) / 1e6
        rows.append(
            {
                "variant": method,
                "events": k,
                "accepted_per_s": pub["published"] / ((pub["end_us"] - pub["start_us"]) / 1e6),
                "delivered_per_s": got["deliveries"] / max(span_s, 1e-9),
                "p50_ms": got["p50_ms"],
                "p99_ms": got["p99_ms"],
                "cpu_us_per_event": server.used_us / k,
                "aux_cpu_us_per_event": aux.used_us / k,
                "lost": got["lost"],
                "dup": got["dup"],
                "unexpected": got["unexpected"],
                "closed": got["closed"],
                "close_codes": got["close_codes"],
            }
        )
    return rows


def rooms_publish(ctx: Context) -> list[dict[str, Any]]:
    """Many rooms, one event each at a time: ``many_rooms`` clients each in its own room,
    ``many_events`` events round-robin over the rooms, ``many_in_flight`` publishes in flight
    (the gateway: ``AsyncPublisher``; the reference: ``PUBLISH``; Socket.IO: its Redis emitter).
    Where the time goes: publisher, servers and Redis CPU per publish."""
    stack, s = ctx.stack, ctx.sizes
    if stack.concurrent_method is None:
        raise ScenarioError(f"{stack.name} has no concurrent publisher")
    n, events = s.many_rooms, s.many_events
    first = ctx.ids(n)
    rounds = -(-events // n)
    with ctx.loadgen(
        n, id_base=first, room_mode="personal", expect=rounds, events_total=events
    ) as lg:
        _connected(lg)
        time.sleep(SETTLE_S)
        server = CpuMeter(stack.server_pids)
        redis = CpuMeter([stack.aux_pids["redis"]])
        others = CpuMeter(pid for name, pid in stack.aux_pids.items() if name != "redis")
        pub = ctx.publish(
            meters(server, redis, others),
            method=stack.concurrent_method,
            personal={"first": first, "count": n},
            rounds=rounds,
            events=events,
            concurrency=s.many_in_flight,
        )
        got = lg.collect()
        for meter in (server, redis, others):
            meter.stop()
    span_s = ((got["last_recv_us"] or pub["end_us"]) - pub["start_us"]) / 1e6
    pub_s = (pub["end_us"] - pub["start_us"]) / 1e6
    return [
        {
            "publishes_per_s": pub["published"] / max(pub_s, 1e-9),
            "delivered_per_s": got["deliveries"] / max(span_s, 1e-9),
            "cpu_us_per_delivery": server.used_us / max(1, got["deliveries"]),
            "redis_cpu_us_per_publish": redis.used_us / max(1, pub["published"]),
            "publisher_cpu_us_per_publish": pub.get("cpu_us", 0) / max(1, pub["published"]),
            "p50_ms": got["p50_ms"],
            "p99_ms": got["p99_ms"],
            "lost": got["lost"],
            "dup": got["dup"],
            "unexpected": got["unexpected"],
            "closed": got["closed"],
            "close_codes": got["close_codes"],
        }
    ]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[Context], list[dict[str, Any]]]
    describe: Callable[[Sizes], str]
    columns: tuple[tuple[str, str, str], ...]  # (metric, header, "up"/"down"/"" = better)


_DELIVERY_COLUMNS = (
    ("deliveries_per_s", "deliveries/s", "up"),
    ("cpu_us_per_delivery", "server CPU µs/delivery", "down"),
    ("aux_cpu_us_per_delivery", "helpers CPU µs/delivery", "down"),
    ("p50_ms", "p50 ms", "down"),
    ("p99_ms", "p99 ms", "down"),
    ("lost", "lost", ""),
    ("dup", "dup", ""),
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "idle",
        "Idle connections: memory",
        idle,
        lambda s: (
            f"{s.connections} connections, each authenticated (gateway) and in its "
            "personal room `cliente_<id>`; VmRSS of the server processes before and after."
        ),
        (
            ("rss_kib_per_conn", "RSS KiB/connection", "down"),
            ("rss_before_mib", "RSS before MiB", ""),
            ("rss_after_mib", "RSS after MiB", ""),
        ),
    ),
    Scenario(
        "connect",
        "Connect + authenticate + join rate",
        connect,
        lambda s: (
            f"{s.connections} connections, {s.connect_concurrency} handshakes in flight: "
            "open, authenticate (gateway: `?token=`, verified by Django), join `service_<n>`, "
            "wait for `room_joined`. Measured on a second round of the same users, so each "
            "token was verified by Django once before (the gateway's token cache serves it)."
        ),
        (
            ("connects_per_s", "connects/s", "up"),
            ("p50_ms", "p50 ms", "down"),
            ("p99_ms", "p99 ms", "down"),
            ("cpu_us_per_connect", "server CPU µs/connect", "down"),
            ("aux_cpu_us_per_connect", "helpers CPU µs/connect", "down"),
            ("loadgen_cpu_us_per_connect", "loadgen CPU µs/connect", ""),
            ("loadgen_cpu_pct", "busiest loadgen CPU %", ""),
        ),
    ),
    Scenario(
        "connect_auth",
        "Connect + authenticate + join, by where the token is judged",
        connect_auth,
        lambda s: (
            f"{s.connections} connections, {s.connect_concurrency} handshakes in flight, each "
            "round with a fresh room, 3 s apart. Gateway, after a round not measured (fresh JWT "
            "users: the heap grows once), three rounds: fresh users with HS256 "
            "JWTs (SimpleJWT's claims, made by the load generator before it connects) verified "
            "by the node, no Django; fresh users with `?token=cliente-<id>` (Django verifies "
            "each: one `profile/` request per connect); the same users again, each on the "
            "other node than before (its memory cache misses; the cluster-wide Redis cache "
            "answers, as in a storm after a node loss). Reference: one round, no "
            "authentication. Redis / Django CPU: those processes alone."
        ),
        (
            ("connects_per_s", "connects/s", "up"),
            ("p50_ms", "p50 ms", "down"),
            ("p99_ms", "p99 ms", "down"),
            ("cpu_us_per_connect", "server CPU µs/connect", "down"),
            ("redis_cpu_us_per_connect", "Redis CPU µs/connect", ""),
            ("django_cpu_us_per_connect", "Django CPU µs/connect", ""),
            ("loadgen_cpu_us_per_connect", "loadgen CPU µs/connect", ""),
            ("loadgen_cpu_pct", "busiest loadgen CPU %", ""),
        ),
    ),
    Scenario(
        "fanout",
        "Fan-out burst",
        fanout,
        lambda s: (
            f"{s.connections} subscribers of one room spread over the server processes; "
            f"{s.fanout_events} events published as fast as one sequential publisher goes."
        ),
        (
            *_DELIVERY_COLUMNS,
            ("loadgen_cpu_us_per_delivery", "loadgen CPU µs/delivery", ""),
            ("loadgen_cpu_pct", "busiest loadgen CPU %", ""),
        ),
    ),
    Scenario(
        "fixed_rate",
        "Fixed rate",
        fixed_rate,
        lambda s: (
            f"{s.rate_per_s:g} events/s to one room of {s.connections} members for "
            f"{s.rate_seconds:g} s."
        ),
        (
            ("server_cpu_pct", "server CPU %", "down"),
            ("cpu_us_per_delivery", "server CPU µs/delivery", "down"),
            ("p50_ms", "p50 ms", "down"),
            ("p99_ms", "p99 ms", "down"),
            ("lost", "lost", ""),
            ("dup", "dup", ""),
        ),
    ),
    Scenario(
        "personal",
        "Many personal rooms",
        personal,
        lambda s: (
            f"{s.connections} rooms `cliente_<id>` with one member each; "
            f"{s.personal_rounds} rounds of one event to every room, as fast as possible."
        ),
        (("publishes_per_s", "publishes/s", "up"), *_DELIVERY_COLUMNS),
    ),
    Scenario(
        "publish",
        "Publish throughput",
        publish_throughput,
        lambda s: (
            f"{s.publish_events} events into one room with one subscriber, per way in: "
            "reference `PUBLISH`; gateway `Publisher.publish` (sync), `POST /api/publish` "
            "(8 in flight), `XADD gateway:ingest` (pipelined, via the worker); Channels "
            "`group_send`."
        ),
        (
            ("accepted_per_s", "accepted/s", "up"),
            ("delivered_per_s", "delivered/s", "up"),
            ("p50_ms", "p50 ms", "down"),
            ("p99_ms", "p99 ms", "down"),
            ("cpu_us_per_event", "server CPU µs/event", "down"),
            ("lost", "lost", ""),
            ("dup", "dup", ""),
        ),
    ),
)
SCENARIOS += (
    Scenario(
        "rooms_publish",
        "Publishing to many rooms",
        rooms_publish,
        lambda s: (
            f"{s.many_rooms} clients, each in its own room; {s.many_events} events, one per "
            f"room event (round-robin), {s.many_in_flight} publishes in flight: gateway "
            "`AsyncPublisher.publish` (history on), reference `PUBLISH`, Socket.IO "
            "`@socket.io/redis-emitter`. Redis CPU and publisher CPU per publish apart."
        ),
        (
            ("publishes_per_s", "publishes/s", "up"),
            ("delivered_per_s", "delivered/s", "up"),
            ("cpu_us_per_delivery", "server CPU µs/delivery", "down"),
            ("redis_cpu_us_per_publish", "Redis CPU µs/publish", "down"),
            ("publisher_cpu_us_per_publish", "publisher CPU µs/publish", "down"),
            ("p50_ms", "p50 ms", "down"),
            ("p99_ms", "p99 ms", "down"),
            ("lost", "lost", ""),
            ("dup", "dup", ""),
        ),
    ),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
