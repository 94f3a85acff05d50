"""``gateway-testclients``: the marketplace scenario against running gateway nodes.

Clientes and proveedores connect (``GatewayClient``, so reconnects and recovery are exercised),
join a few ``service_<k>`` rooms and, round after round: each cliente creates a reservation for a
proveedor, the proveedor accepts it when it arrives, and the cliente pays and comments on the
service when the acceptance arrives. Every acknowledged event is expected in the rooms the
contract routes it to (``gateway.rooms.default_rooms``), at every connection in those rooms.

Loss is counted against those expected deliveries (what was acked), not against what arrived.
Exit status: 0 when everything expected arrived exactly once, 1 when something was lost or
duplicated (or more requests failed than ``--max-failed``), 2 when a client could not connect
or authenticate, or was disconnected for good.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from gateway.client import (
    AuthError,
    ClientStats,
    GatewayClient,
    GatewayError,
    JsonObject,
    UrlRotation,
)
from gateway.rooms import ADMIN_ROOM, default_rooms

log = logging.getLogger("gateway.testclients")

EXIT_OK, EXIT_LOSS, EXIT_CONNECT = 0, 1, 2
AMOUNT = "25.00"
CURRENCY = "EUR"


# --- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    urls: list[str]
    clientes: int = 5
    proveedores: int = 2
    admin: bool = False
    services: int = 3
    services_per_client: int = 2
    rounds: int = 3
    token_template: str = "{role}-{id}"
    first_id: int = 1
    settle_s: float = 2.0
    round_timeout_s: float = 30.0
    request_timeout_s: float = 10.0
    connect_concurrency: int = 50
    max_failed: int = 0
    seed: int | None = None
    json: bool = False


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {value}")
    return number


def render_token(template: str, role: str, user_id: int) -> str:
    return template.format(role=role, id=user_id)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the uninformative ``None``/``False`` of flags and --url."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway-testclients",
        description=(
            "Run the marketplace scenario against running gateway nodes: clientes create "
            "reservations, proveedores accept them, clientes pay and comment. Reports events "
            "sent and acknowledged, expected deliveries (every connection in every room the "
            "contract routes an acknowledged event to), delivered, lost, duplicated, and "
            "latency percentiles (from just before the send to the arrival). Exit status: 0 "
            "all delivered exactly once; 1 something lost or duplicated, or more failed "
            "requests than --max-failed; 2 a client could not connect or authenticate."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--url",
        dest="urls",
        action="append",
        required=True,
        metavar="WS_URL",
        help="a node's WebSocket URL, e.g. ws://127.0.0.1:4000/ws; repeat for several nodes "
        "(clients start on different ones and rotate through all when reconnecting)",
    )
    parser.add_argument("--clientes", type=_non_negative, default=5, help="cliente connections")
    parser.add_argument("--proveedores", type=_positive, default=2, help="proveedor connections")
    parser.add_argument(
        "--admin", action="store_true", help="add an admin connection (room admin_dashboard)"
    )
    parser.add_argument("--services", type=_positive, default=3, help="service_<k> rooms in use")
    parser.add_argument(
        "--services-per-client",
        type=_non_negative,
        default=2,
        help="service rooms each cliente and proveedor joins (round-robin)",
    )
    parser.add_argument(
        "--rounds", type=_positive, default=3, help="reservations each cliente makes"
    )
    parser.add_argument(
        "--token-template",
        default="{role}-{id}",
        help="how a user's token is made: {role} is cliente, proveedor or admin, {id} the "
        "user id. The default suits the Django test site (tests/django_site), which accepts "
        "tokens like cliente-7: `python deploy/launch.py up --test-django` runs a cluster with it",
    )
    parser.add_argument(
        "--first-id",
        type=_non_negative,
        default=1,
        help="user ids are first-id, first-id+1, … within each role",
    )
    parser.add_argument(
        "--settle-seconds",
        dest="settle_s",
        type=_seconds,
        default=2.0,
        help="wait this long after the last round for late deliveries",
    )
    parser.add_argument(
        "--round-timeout",
        dest="round_timeout_s",
        type=_seconds,
        default=30.0,
        help="longest wait for a round's reservations to be accepted, paid and commented",
    )
    parser.add_argument(
        "--request-timeout",
        dest="request_timeout_s",
        type=_seconds,
        default=10.0,
        help="longest wait for one request's answer",
    )
    parser.add_argument(
        "--connect-concurrency",
        type=_positive,
        default=50,
        help="connections opened at the same time",
    )
    parser.add_argument(
        "--max-failed",
        type=_non_negative,
        default=0,
        help="requests that may fail (error, timeout, lost connection) before exit status 1; "
        "when nodes are killed or drained during the run, requests in flight fail with "
        "connection_lost (reported, not counted as loss): allow a few",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the reconnect jitter")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log client activity")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        UrlRotation(args.urls)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        sample = render_token(args.token_template, "cliente", 1)
    except (KeyError, IndexError, ValueError) as exc:
        parser.error(f"--token-template: only {{role}} and {{id}} may be used ({exc})")
    if "{id}" not in args.token_template or not sample:
        parser.error("--token-template must contain {id}")
    if args.services_per_client > args.services:
        parser.error("--services-per-client cannot exceed --services")
    if args.request_timeout_s <= 0:
        parser.error("--request-timeout must be more than 0")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    values = vars(args)
    values.pop("verbose")
    return Options(**values)


# --- the ledger and the report: pure arithmetic -------------------------------------------------

DeliveryKey = tuple[str, str, str]  # (eventId, recipient connection, room)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (need not be sorted); None when there are none."""
    if not values:
        return None
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Report:
    sent: int
    acked: int
    failed: int
    expected: int
    delivered: int
    lost: int
    duplicates: int
    unexpected: int
    latency_ms: dict[str, float | None]
    sent_by_type: dict[str, int]
    failed_by_code: dict[str, int]
    clients: dict[str, int] = field(default_factory=dict)
    connect_failures: list[str] = field(default_factory=list)
    max_failed: int = 0
    hint: str | None = None  # what to pass when every connection failed the same way

    @property
    def exit_code(self) -> int:
        if self.connect_failures:
            return EXIT_CONNECT
        if self.lost or self.duplicates or self.failed > self.max_failed:
            return EXIT_LOSS
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"exit_code": self.exit_code}


class Ledger:
    """What was sent, acknowledged and expected, and what arrived where and when."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._sent_at: dict[str, float] = {}  # eventId -> time just before its send
        self._expected: set[DeliveryKey] = set()
        self._arrivals: dict[DeliveryKey, list[float]] = {}

    def record_sent(self, event_type: str) -> None:
        self.sent[event_type] += 1

    def record_failed(self, code: str) -> None:
        self.failed[code] += 1

    def record_acked(
        self, event_type: str, event_id: str, sent_at: float, recipients: set[tuple[str, str]]
    ) -> None:
        """``recipients``: the (connection, room) pairs the event must reach."""
        self.acked[event_type] += 1
        self._sent_at[event_id] = sent_at
        self._expected.update((event_id, who, room) for who, room in recipients)

    def record_arrival(self, recipient: str, event_id: str, room: str, at: float) -> None:
        self._arrivals.setdefault((event_id, recipient, room), []).append(at)

    def report(self, max_failed: int = 0) -> Report:
        latencies: list[float] = []
        delivered = duplicates = 0
        for key in self._expected:
            times = self._arrivals.get(key, [])
            if times:
                delivered += 1
                duplicates += len(times) - 1
                latencies.append((min(times) - self._sent_at[key[0]]) * 1000)
        unexpected = sum(len(t) for k, t in self._arrivals.items() if k not in self._expected)
        return Report(
            sent=sum(self.sent.values()),
            acked=sum(self.acked.values()),
            failed=sum(self.failed.values()),
            expected=len(self._expected),
            delivered=delivered,
            lost=len(self._expected) - delivered,
            duplicates=duplicates,
            unexpected=unexpected,
            latency_ms={
                name: None if (v := percentile(latencies, p)) is None else round(v, 3)
                for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
            sent_by_type=dict(self.sent),
            failed_by_code=dict(self.failed),
            max_failed=max_failed,
        )


def sum_stats(stats: Sequence[ClientStats]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for one in stats:
        total.update(asdict(one))
    return dict(total)


def format_report(report: Report, options: Options) -> str:
    lat = report.latency_ms

    def ms(name: str) -> str:
        value = lat.get(name)
        return "-" if value is None else f"{value:.1f}"

    by_type = ", ".join(f"{k} {v}" for k, v in sorted(report.sent_by_type.items()))
    failed = ", ".join(f"{k} {v}" for k, v in sorted(report.failed_by_code.items()))
    c = report.clients
    verdict = {EXIT_OK: "OK", EXIT_LOSS: "FAILED", EXIT_CONNECT: "CONNECTION FAILED"}
    lines = [
        f"gateway-testclients: {options.clientes} clientes, {options.proveedores} proveedores"
        f"{', 1 admin' if options.admin else ''}, {options.rounds} rounds, "
        f"{len(options.urls)} URL(s)",
        f"events sent          {report.sent}" + (f"  ({by_type})" if by_type else ""),
        f"acked                {report.acked}",
        f"failed requests      {report.failed}" + (f"  ({failed})" if failed else ""),
        f"expected deliveries  {report.expected}",
        f"delivered            {report.delivered}",
        f"lost                 {report.lost}",
        f"duplicates           {report.duplicates}",
        f"unexpected           {report.unexpected}  (arrivals of events not acked to us)",
        f"latency ms           p50 {ms('p50')}  p90 {ms('p90')}  p99 {ms('p99')}  max {ms('max')}",
        f"clients              reconnects {c.get('reconnects', 0)}, recoveries "
        f"{c.get('recoveries', 0)}, recovery failures {c.get('recovery_failures', 0)}, "
        f"duplicates dropped {c.get('duplicates_dropped', 0)}, gaps {c.get('gaps_detected', 0)}",
    ]
    lines += [f"connect failure      {failure}" for failure in report.connect_failures]
    if report.hint:
        lines.append(f"hint: {report.hint}")
    lines.append(f"result: {verdict[report.exit_code]}")
    return "\n".join(lines)


TEST_SITE_HINT = (
    "`python deploy/launch.py up --test-django` starts a local cluster whose Django (the test "
    "site in tests/django_site) accepts them"
)


def auth_hint(failures: Sequence[str], template: str) -> str | None:
    """One line telling what to pass when the tokens were refused or could not be checked."""
    if not failures:
        return None
    if any("(invalid_token)" in f or "(identity_mismatch)" in f for f in failures):
        return (
            f"Django refused the tokens. --token-template {template!r} makes tokens like "
            f"{render_token(template, 'cliente', 1)!r}; pass --token-template with tokens your "
            f"Django accepts, or use a Django that accepts these: {TEST_SITE_HINT}"
        )
    if any("(auth_unavailable)" in f for f in failures):
        return (
            "the gateway could not reach Django to check the tokens: set the nodes' "
            f"GATEWAY_DJANGO_BASE_URL to a running Django, or {TEST_SITE_HINT}"
        )
    return None


# --- the scenario -------------------------------------------------------------------------------


@dataclass
class Actor:
    name: str  # e.g. "cliente-3": one connection
    role: str
    user_id: str
    client: GatewayClient
    rooms: set[str] = field(default_factory=set)


def service_rooms_for(index: int, services: int, per_client: int) -> list[str]:
    """Round-robin: actor ``index`` joins ``per_client`` consecutive service rooms."""
    return [f"service_{(index + j) % services + 1}" for j in range(per_client)]


class Scenario:
    def __init__(self, options: Options, session: aiohttp.ClientSession) -> None:
        self.options = options
        self.session = session
        self.ledger = Ledger()
        self.rng = random.Random(options.seed)
        self.clientes: list[Actor] = []
        self.proveedores: list[Actor] = []
        self.admins: list[Actor] = []
        self.connect_failures: list[str] = []
        self._failed_names: set[str] = set()
        self._outstanding = 0  # reservations of the round not yet commented (or failed)
        self._round_done = asyncio.Event()
        self._round = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def actors(self) -> list[Actor]:
        return [*self.clientes, *self.proveedores, *self.admins]

    # --- setup --------------------------------------------------------------------------------

    def _make_actor(self, role: str, number: int, index: int) -> Actor:
        urls = self.options.urls
        start = index % len(urls)
        user_id = str(self.options.first_id + number)
        client = GatewayClient(
            urls[start:] + urls[:start],
            render_token(self.options.token_template, role, int(user_id)),
            session=self.session,
            request_timeout_s=self.options.request_timeout_s,
            connect_attempts=3 * len(urls),  # ride out a node restarting while we set up
            rng=random.Random(self.rng.random()),
        )
        actor = Actor(f"{role}-{user_id}", role, user_id, client)
        client.on("*", lambda data: self._on_event(actor, data))
        return actor

    async def connect_all(self) -> bool:
        o = self.options
        index = 0
        for role, count, bucket in (
            ("cliente", o.clientes, self.clientes),
            ("proveedor", o.proveedores, self.proveedores),
            ("admin", 1 if o.admin else 0, self.admins),
        ):
            for number in range(count):
                bucket.append(self._make_actor(role, number, index))
                index += 1
        gate = asyncio.Semaphore(o.connect_concurrency)
        await asyncio.gather(*(self._connect(a, i, gate) for i, a in enumerate(self.actors)))
        return not self.connect_failures

    async def _connect(self, actor: Actor, index: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                auth = await actor.client.connect()
                actor.rooms.update(r for r in auth.get("rooms") or [] if isinstance(r, str))
                if actor.role != "admin":
                    o = self.options
                    for room in service_rooms_for(index, o.services, o.services_per_client):
                        await actor.client.join(room)
                        actor.rooms.add(room)
            except AuthError as exc:
                self._fail(actor, f"authentication failed ({exc.code})")
            except (GatewayError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                self._fail(actor, repr(exc))

    def _fail(self, actor: Actor, reason: str) -> None:
        self._failed_names.add(actor.name)
        self.connect_failures.append(f"{actor.name}: {reason}")

    # --- who must receive what ----------------------------------------------------------------

    def recipients(self, event_type: str, payload: JsonObject) -> set[tuple[str, str]]:
        rooms = set(default_rooms(event_type, payload))
        return {(a.name, room) for a in self.actors for room in a.rooms & rooms}

    # --- the rounds ---------------------------------------------------------------------------

    async def run_rounds(self) -> None:
        o = self.options
        for self._round in range(1, o.rounds + 1):
            self._round_done.clear()
            # Counted before anything is sent: a chain that finishes while another cliente's
            # reservation is still waiting for its ack must not end the round early.
            self._outstanding = len(self.clientes)
            await asyncio.gather(*(self._reserve(i, c) for i, c in enumerate(self.clientes)))
            if self._outstanding:
                try:
                    async with asyncio.timeout(o.round_timeout_s):
                        await self._round_done.wait()
                except TimeoutError:
                    log.warning("round %d: %d chains unfinished", self._round, self._outstanding)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=o.round_timeout_s)
        await asyncio.sleep(o.settle_s)

    async def _reserve(self, index: int, cliente: Actor) -> None:
        proveedor = self.proveedores[(index + self._round) % len(self.proveedores)]
        servicio = (index + self._round) % self.options.services + 1
        day = dt.date.today() + dt.timedelta(days=7 + self._round)
        payload = {
            "clienteId": cliente.user_id,
            "proveedorId": proveedor.user_id,
            "servicioId": str(servicio),
            "fecha": day.isoformat(),
        }
        if not await self._send(cliente, "reservation_created", payload):
            self._chain_finished()

    async def _send(self, actor: Actor, event_type: str, payload: JsonObject) -> bool:
        loop = asyncio.get_running_loop()
        self.ledger.record_sent(event_type)
        sent_at = loop.time()
        try:
            ack = await actor.client.send_business(event_type, payload)
        except GatewayError as exc:
            log.warning("%s %s failed: %s", actor.name, event_type, exc)
            self.ledger.record_failed(exc.code)
            return False
        event_id = str(ack.get("eventId"))
        self.ledger.record_acked(
            event_type, event_id, sent_at, self.recipients(event_type, payload)
        )
        return True

    def _chain_finished(self) -> None:
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._round_done.set()

    def _on_event(self, actor: Actor, data: JsonObject) -> None:
        now = asyncio.get_running_loop().time()
        self.ledger.record_arrival(actor.name, str(data.get("id")), str(data.get("room")), now)
        payload = data.get("payload")
        if not isinstance(payload, dict) or data.get("room") == ADMIN_ROOM:
            return
        if not self._is_ours(payload) or str(payload.get(f"{actor.role}Id")) != actor.user_id:
            return  # only the parties of our own reservations act on them
        kind = data.get("type")
        if kind == "reservation_created" and actor.role == "proveedor":
            self._spawn(self._accept(actor, payload))
        elif kind == "reservation_accepted" and actor.role == "cliente":
            self._spawn(self._pay_and_comment(actor, payload))

    def _is_ours(self, payload: JsonObject) -> bool:
        clientes = {a.user_id for a in self.clientes}
        proveedores = {a.user_id for a in self.proveedores}
        return (
            str(payload.get("clienteId")) in clientes
            and str(payload.get("proveedorId")) in proveedores
        )

    async def _accept(self, proveedor: Actor, reservation: JsonObject) -> None:
        accepted = {
            "clienteId": str(reservation["clienteId"]),
            "proveedorId": proveedor.user_id,
            "servicioId": str(reservation.get("servicioId", "1")),
        }
        if reservation.get("id") is not None:
            accepted["reservationId"] = str(reservation["id"])
        if not await self._send(proveedor, "reservation_accepted", accepted):
            self._chain_finished()

    async def _pay_and_comment(self, cliente: Actor, accepted: JsonObject) -> None:
        payment = {
            "clienteId": cliente.user_id,
            "proveedorId": str(accepted["proveedorId"]),
            "amount": AMOUNT,
            "currency": CURRENCY,
        }
        reservation_id = accepted.get("reservationId", accepted.get("id"))
        if reservation_id is not None:
            payment["reservationId"] = str(reservation_id)
        if await self._send(cliente, "payment_created", payment):
            comment = {
                "servicioId": str(accepted.get("servicioId", "1")),
                "text": f"Round {self._round}: great service",
                "clienteId": cliente.user_id,
                "rating": 5,
            }
            await self._send(cliente, "comment_created", comment)
        self._chain_finished()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await asyncio.gather(*(a.client.close() for a in self.actors))

    def report(self) -> Report:
        report = self.ledger.report(self.options.max_failed)
        report.clients = sum_stats([a.client.stats for a in self.actors])
        report.connect_failures = list(self.connect_failures)
        for actor in self.actors:
            error = actor.client.terminal_error
            if error is not None and actor.name not in self._failed_names:
                report.connect_failures.append(f"{actor.name}: gave up ({error})")
        report.hint = auth_hint(report.connect_failures, self.options.token_template)
        return report


async def run(options: Options) -> Report:
    async with aiohttp.ClientSession() as session:
        scenario = Scenario(options, session)
        try:
            if await scenario.connect_all():
                await scenario.run_rounds()
        finally:
            await scenario.close()
        return scenario.report()


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    report = asyncio.run(run(options))
    if options.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(format_report(report, options))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
