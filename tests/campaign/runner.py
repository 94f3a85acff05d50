"""One campaign run: start everything, publish steadily through the fault schedule, heal, fence,
judge. ``run_campaign`` returns a ``Result`` (it raises only when the run could not be set up).

Phases: (1) Redis, proxies, nodes, worker; (2) clients join and get their baselines; (3) the
publishers and the fault schedule run together; (4) everything is healed, the publishers finish
their retries; (5) every client settles, then one *fence* event per room must reach every client
(a room gone deaf shows here); (6) the oracle's final check against the ledger.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.exceptions import RedisError

from gateway.backend.keys import Keys
from tests.campaign.client import CampaignClient
from tests.campaign.faults import Injector, drain_violations
from tests.campaign.ledger import Ledger, Published, check_final
from tests.campaign.oracle import ClientOracle, Position, RoomLog, Violation
from tests.campaign.publishers import (
    ApiPublisher,
    DirectPublisher,
    IngestPublisher,
    Publish,
    steady,
)
from tests.campaign.report import Result
from tests.campaign.schedule import ALL_KINDS, Kind, Targets, make_schedule
from tests.campaign.topology import API_KEY, Settings, Topology

PUBLIC_ROOMS = ("service_1", "service_2", "service_3", "location_1")
SHARED_ROOMS = (*PUBLIC_ROOMS, "all_clientes")
SETTLE_S = 90.0  # generous: a loaded 2-core machine, nodes restarting
FENCE_S = 90.0
QUIET_S = 1.5
PUBLISH_SPAN_S = 10.0  # faults this long after a publish started are shown with its violations
# shares of the publish rate
SHARES = {"api": 0.4, "publisher": 0.3, "ingest": 0.22, "client": 0.08}


@dataclass(frozen=True)
class Config:
    seed: int = 1
    fault_s: float = 90.0  # length of the fault phase (faults start within it)
    nodes: int = 3
    clients: int = 30
    rate: float = 12.0  # publishes per second, all ways in together
    history_size: int = 2000
    min_each: int = 3
    mean_gap_s: float = 3.0
    kinds: tuple[Kind, ...] = ALL_KINDS  # CLUSTER_KINDS with cluster=True
    cluster: bool = False


@dataclass
class _Run:
    config: Config
    topology: Topology
    clock: Callable[[], float]
    log: RoomLog = field(default_factory=RoomLog)
    clients: list[CampaignClient] = field(default_factory=list)
    system: list[Violation] = field(default_factory=list)
    injector: Injector | None = None

    def attach_faults(self, violation: Violation) -> None:
        if self.injector is not None:
            violation.faults = self.injector.log.around(violation.at_s)

    def report(self, violation: Violation) -> None:
        self.attach_faults(violation)
        self.system.append(violation)


def _pick(clients: int) -> Callable[[random.Random], tuple[str, ...]]:
    def pick(rng: random.Random) -> tuple[str, ...]:
        if rng.random() < 0.2:
            return (f"cliente_{rng.randint(1, clients)}",)
        first = rng.choice(SHARED_ROOMS)
        if rng.random() < 0.15:
            return (first, rng.choice([r for r in SHARED_ROOMS if r != first]))
        return (first,)

    return pick


async def run_campaign(config: Config, run_dir: Path, django_base_url: str) -> Result:
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    settings = Settings(config.nodes, config.history_size, config.cluster)
    topology = Topology(run_dir, django_base_url, settings)
    run = _Run(config, topology, clock)
    started = time.time()
    try:
        await topology.start()
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as ws_session,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as api_session,
        ):
            result = await _run(run, ws_session, api_session)
    finally:
        await topology.stop()
    result.wall_s = time.time() - started
    result.log_errors = _log_errors(topology)
    result.save(run_dir)
    return result


async def _run(
    run: _Run, ws_session: aiohttp.ClientSession, api_session: aiohttp.ClientSession
) -> Result:
    config, topology, clock = run.config, run.topology, run.clock
    run.injector = Injector(topology, run.clients, clock, run.report)
    rng = random.Random(config.seed)
    for i in range(1, config.clients + 1):
        oracle = ClientOracle(f"c{i}", run.log, clock, run.attach_faults)
        rooms = rng.sample(PUBLIC_ROOMS, 2)
        client_rng = random.Random(config.seed * 1000 + i)
        run.clients.append(
            CampaignClient(
                f"c{i}",
                f"cliente-{i}",
                [f"cliente_{i}", "all_clientes"],
                rooms,
                topology.ws_urls,
                oracle,
                client_rng,
                ws_session,
            )
        )
    stop_clients = asyncio.Event()
    client_tasks = [asyncio.create_task(c.run(stop_clients)) for c in run.clients]
    ledger = Ledger(clock)
    direct = DirectPublisher(topology.publisher_url, config.history_size)
    ingest = IngestPublisher(topology.publisher_client())
    api = ApiPublisher(topology.http_urls, API_KEY, api_session)
    schedule = make_schedule(
        config.seed,
        config.fault_s,
        Targets(tuple(topology.nodes), tuple(topology.proxies), SHARED_ROOMS, config.cluster),
        min_each=config.min_each,
        mean_gap_s=config.mean_gap_s,
        kinds=config.kinds,
    )
    phases: dict[str, float] = {}
    fences: dict[str, Position] = {}
    try:
        await _until(lambda: all(c.settled for c in run.clients), SETTLE_S, "clients joined")
        phases["clients_ready"] = clock()
        stop_publishing, stop_faults = asyncio.Event(), asyncio.Event()
        publishers = _start_publishers(run, ledger, api, direct, ingest, stop_publishing)
        try:
            async with asyncio.timeout(config.fault_s + 180):
                await run.injector.run(schedule, stop_faults)
        except TimeoutError:
            stop_faults.set()
        phases["faults_done"] = clock()
        restarted = await topology.heal()
        stop_publishing.set()
        await asyncio.gather(*publishers)
        phases["publishers_done"] = clock()
        drained = await _ingest_drained(topology, SETTLE_S)
        phases["ingest_drained"] = clock()
        settled = await _until_soft(lambda: all(c.settled for c in run.clients), SETTLE_S)
        phases["settled"] = clock()
        fences = await _fence(run, ledger, direct)
        phases["fenced"] = clock()
        await asyncio.sleep(QUIET_S)
    finally:
        stop_clients.set()
        await asyncio.gather(*client_tasks, return_exceptions=True)
        await direct.aclose()
        await ingest.aclose()
    oracles = [c.oracle for c in run.clients]
    final = check_final(ledger.records, oracles, run.log, fences, clock)
    for violation in final:  # a publish is retried for a while: the faults around its life
        violation.faults = run.injector.log.around(
            violation.at_s + PUBLISH_SPAN_S, 5 + PUBLISH_SPAN_S
        )
    final += drain_violations(run.injector.log, run.clients)
    violations = [v for o in oracles for v in o.violations] + run.system + final
    notes = [f"restarted after the faults: {restarted}"] if restarted else []
    if not settled:
        notes.append("not every client settled before the fence")
    if not drained:
        notes.append("the worker had not published every ingest entry before the fence")
    return Result.build(
        config=config,
        schedule=schedule,
        applied=run.injector.log,
        ledger=ledger,
        oracles=oracles,
        clients=run.clients,
        violations=violations,
        phases=phases,
        notes=notes,
    )


def _start_publishers(
    run: _Run,
    ledger: Ledger,
    api: ApiPublisher,
    direct: DirectPublisher,
    ingest: IngestPublisher,
    stop: asyncio.Event,
) -> list[asyncio.Task[None]]:
    config = run.config
    pick = _pick(config.clients)
    ways: dict[str, Publish] = {
        "api": api.publish,
        "publisher": direct.publish,
        "ingest": ingest.publish,
        "client": _business(run.clients),
    }
    tasks = []
    for index, (source, publish) in enumerate(ways.items()):
        rng = random.Random(config.seed * 7919 + index)
        rate = config.rate * SHARES[source]
        chooser = _pick_service if source == "client" else pick
        tasks.append(asyncio.create_task(steady(ledger, source, publish, rate, chooser, rng, stop)))
    return tasks


def _pick_service(rng: random.Random) -> tuple[str, ...]:
    return (rng.choice(PUBLIC_ROOMS[:3]),)


def _business(clients: list[CampaignClient]) -> Publish:
    """Business events: ``comment_created`` from a random connected client (not retried: a
    client that lost its answer cannot know whether Django confirmed it)."""

    async def publish(pub: Published, rng: random.Random) -> None:
        ready = [c for c in clients if c.authenticated]
        if not ready:
            pub.error = "no client connected"
            return
        servicio = pub.rooms[0].removeprefix("service_")
        await rng.choice(ready).send_business(pub, servicio)

    return publish


async def _fence(run: _Run, ledger: Ledger, direct: DirectPublisher) -> dict[str, Position]:
    """Publish one fence per room; wait until every client delivered it; their positions."""
    rooms = sorted({room for c in run.clients for room in c.oracle.rooms})
    pubs = [ledger.new("fence", (room,)) for room in rooms]
    rng = random.Random(0)
    await asyncio.gather(*(direct.publish(pub, rng) for pub in pubs))
    wanted = {pub.rooms[0]: pub.offsets.get(pub.rooms[0], 0) for pub in pubs if pub.acked}

    def reached() -> bool:
        for client in run.clients:
            for room, track in client.oracle.rooms.items():
                if track.joining or track.offset < wanted.get(room, 0):
                    return False
        return True

    await _until_soft(reached, FENCE_S)
    fences: dict[str, Position] = {}
    for pub in pubs:
        room = pub.rooms[0]
        found = run.log.positions(room, tag=pub.tag)
        if found:
            fences[room] = max(found, key=lambda p: p[1])
        else:  # delivered to nobody: every member fails the fence check
            fences[room] = ("never-delivered", wanted.get(room, 0))
    return fences


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not await _until_soft(predicate, timeout_s):
        raise RuntimeError(f"campaign setup: timed out after {timeout_s:g} s waiting for {what}")


async def _until_soft(predicate: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _ingest_drained(topology: Topology, timeout_s: float) -> bool:
    """Until the worker has read every ingest entry and acknowledged it (a killed worker's
    entries are re-claimed after ``GATEWAY_INGEST_CLAIM_IDLE_S``): the fence must come after."""
    keys = Keys("gateway")
    admin = topology.admin()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while loop.time() < deadline:
            try:
                last = _stream_id((await admin.xinfo_stream(keys.ingest))["last-generated-id"])
                groups = await admin.xinfo_groups(keys.ingest)
            except (RedisError, KeyError):
                groups = None
            if groups is not None and all(_group_done(g, last) for g in groups):
                return True
            await asyncio.sleep(0.25)
    finally:
        await admin.aclose()
    return False


def _group_done(group: dict[str, Any], last: tuple[int, int]) -> bool:
    """Nothing pending and every entry delivered (``lag`` is unreliable after a failover)."""
    return group.get("pending") == 0 and _stream_id(group["last-delivered-id"]) >= last


def _stream_id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _log_errors(topology: Topology) -> dict[str, int]:
    """Tracebacks each process wrote (a restarted process appends to the same files)."""
    found: Counter[str] = Counter()
    for proc in topology.processes():
        count = proc.logs().count("Traceback (most recent call last)")
        if count:
            found[proc.name] = count
    return dict(found)
