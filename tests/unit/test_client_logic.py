"""The clients' decisions without a socket: backoff and jitter, URL rotation, per-room offsets
(duplicates, gaps, the merge of recovered and live events), and gateway-testclients' arithmetic
and options. The browser client's copies of the pure parts run the same scenarios under Node.

End-to-end behaviour against real nodes is tested in tests/integration.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client import Backoff, GatewayClient, RoomTracker, UrlRotation, Verdict
from gateway.testclients import (
    EXIT_CONNECT,
    EXIT_LOSS,
    EXIT_OK,
    Actor,
    Ledger,
    Options,
    Report,
    Scenario,
    format_report,
    parse_args,
    percentile,
    render_token,
    service_rooms_for,
)

REPO = Path(__file__).resolve().parents[2]
CLIENT_JS = REPO / "gateway" / "static" / "client.js"
EPOCH = "e1"


def ev(offset: int, room: str = "service_1", epoch: str = EPOCH) -> dict[str, Any]:
    return {
        "room": room,
        "type": "t",
        "payload": {},
        "id": f"{room}:{epoch}:{offset}",
        "offset": offset,
        "epoch": epoch,
    }


def offsets(events: list[dict[str, Any]]) -> list[int]:
    return [e["offset"] for e in events]


def joined_tracker(room: str = "service_1", offset: int = 0) -> RoomTracker:
    """A tracker that joined ``room`` fresh, the room's latest offset being ``offset``."""
    tracker = RoomTracker()
    assert tracker.begin_join(room) is None
    tracker.apply_joined(room, {"room": room, "epoch": EPOCH, "offset": offset}, None)
    return tracker


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_from_base_and_caps_at_max() -> None:
    backoff = Backoff(base_s=0.25, max_s=10.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.ceiling(10_000) == 10.0  # no overflow for a client retrying for days


@given(attempt=st.integers(0, 200), seed=st.integers(0, 2**32))
def test_backoff_delay_is_full_jitter_within_the_window(attempt: int, seed: int) -> None:
    backoff = Backoff(base_s=0.1, max_s=5.0)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= backoff.ceiling(attempt)


def test_backoff_jitter_spreads_a_storm_over_the_whole_window() -> None:
    backoff = Backoff(base_s=1.0, max_s=1.0)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(2000)]
    # Full jitter, not "ceiling plus a little": both halves of the window are well used.
    assert min(delays) < 0.05 and max(delays) > 0.95
    assert 0.45 < sum(delays) / len(delays) < 0.55
    assert len(set(delays)) == len(delays)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base_s=0, max_s=1)
    with pytest.raises(ValueError):
        Backoff(base_s=2, max_s=1)
    with pytest.raises(ValueError):
        Backoff().ceiling(-1)


# --- URL rotation -----------------------------------------------------------------------------


def test_url_rotation_moves_to_the_next_url_and_wraps() -> None:
    urls = UrlRotation(["ws://a:1/ws", "ws://b:2/ws", "wss://c/ws"])
    assert urls.current == "ws://a:1/ws"
    assert [urls.advance() for _ in range(4)] == [
        "ws://b:2/ws",
        "wss://c/ws",
        "ws://a:1/ws",
        "ws://b:2/ws",
    ]
    single = UrlRotation("ws://only/ws")
    assert single.advance() == single.current == "ws://only/ws"


@pytest.mark.parametrize("bad", [[], ["http://a/ws"], ["ws:///ws"], ["a/ws"]])
def test_url_rotation_rejects_what_is_not_a_websocket_url(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        UrlRotation(bad)


def test_client_rejects_bad_arguments_before_any_io() -> None:
    with pytest.raises(ValueError, match="token"):
        GatewayClient("ws://a/ws", "")
    with pytest.raises(ValueError, match="ws://"):
        GatewayClient("http://a/ws", "cliente-1")
    with pytest.raises(ValueError, match="lifecycle"):
        GatewayClient("ws://a/ws", "cliente-1").on_lifecycle("connect", print)


# --- room offsets: live events ------------------------------------------------------------------


def test_live_events_in_order_are_delivered_and_advance_since() -> None:
    tracker = joined_tracker(offset=4)
    assert tracker.since("service_1") == {"offset": 4, "epoch": EPOCH}
    assert [tracker.offer(ev(n)) for n in (5, 6, 7)] == [Verdict.DELIVER] * 3
    assert tracker.since("service_1") == {"offset": 7, "epoch": EPOCH}


def test_an_event_at_or_below_the_last_delivered_offset_is_a_duplicate() -> None:
    tracker = joined_tracker(offset=0)
    assert tracker.offer(ev(1)) is Verdict.DELIVER
    assert tracker.offer(ev(2)) is Verdict.DELIVER
    assert tracker.offer(ev(2)) is Verdict.DUPLICATE
    assert tracker.offer(ev(1)) is Verdict.DUPLICATE
    assert tracker.since("service_1") == {"offset": 2, "epoch": EPOCH}


def test_a_skipped_offset_asks_for_a_resync_and_buffers_until_the_join_answers() -> None:
    tracker = joined_tracker(offset=0)
    assert tracker.offer(ev(1)) is Verdict.DELIVER
    assert tracker.offer(ev(3)) is Verdict.RESYNC  # 2 is missing
    assert tracker.is_joining("service_1")
    assert tracker.offer(ev(4)) is Verdict.BUFFERED
    since = tracker.begin_join("service_1")
    assert since == {"offset": 1, "epoch": EPOCH}  # recover from the last delivered event
    answer = {"epoch": EPOCH, "offset": 4, "recovered": True, "missed": [ev(2), ev(3), ev(4)]}
    outcome = tracker.apply_joined("service_1", answer, since)
    assert offsets(outcome.deliver) == [2, 3, 4]  # buffered 3 and 4 were in missed: once each
    assert outcome.recovered is True and outcome.missed == 3 and not outcome.resync
    assert tracker.offer(ev(5)) is Verdict.DELIVER


def test_a_new_epoch_asks_for_a_resync_and_a_failed_recovery_starts_over() -> None:
    tracker = joined_tracker(offset=0)
    tracker.offer(ev(1))
    assert tracker.offer(ev(1, epoch="e2")) is Verdict.RESYNC  # history was lost
    since = tracker.begin_join("service_1")
    outcome = tracker.apply_joined(
        "service_1", {"epoch": "e2", "offset": 1, "recovered": False}, since
    )
    assert outcome.recovered is False
    assert outcome.deliver == [ev(1, epoch="e2")]  # it came live: new to us
    assert tracker.since("service_1") == {"offset": 1, "epoch": "e2"}
    assert tracker.offer(ev(2, epoch="e2")) is Verdict.DELIVER


def test_events_of_untracked_rooms_or_without_offsets_pass_through() -> None:
    tracker = joined_tracker()
    assert tracker.offer(ev(9, room="service_2")) is Verdict.DELIVER
    assert tracker.offer({"room": "service_1", "type": "t", "payload": {}}) is Verdict.DELIVER
    assert tracker.since("service_1") == {"offset": 0, "epoch": EPOCH}


# --- room offsets: joins and recovery ------------------------------------------------------------


def test_fresh_join_keeps_events_that_came_live_before_the_answer() -> None:
    tracker = RoomTracker()
    tracker.begin_join("service_1")
    # Published between the subscription and the offset read: offset 7 is not above the
    # baseline 7, yet it arrived live, so it is new to this client. The repeat is not.
    assert tracker.offer(ev(7)) is Verdict.BUFFERED
    assert tracker.offer(ev(7)) is Verdict.BUFFERED
    outcome = tracker.apply_joined("service_1", {"epoch": EPOCH, "offset": 7}, None)
    assert offsets(outcome.deliver) == [7]
    assert outcome.recovered is None
    assert tracker.offer(ev(8)) is Verdict.DELIVER


def test_reconnect_recovery_merges_missed_and_live_events_once_in_order() -> None:
    tracker = joined_tracker(offset=10)
    for n in (11, 12):
        tracker.offer(ev(n))
    since = tracker.begin_join("service_1")  # reconnecting: live events now wait
    assert since == {"offset": 12, "epoch": EPOCH}
    for n in (15, 16):  # the automatic subscription delivers before our join answers
        assert tracker.offer(ev(n)) is Verdict.BUFFERED
    answer = {"epoch": EPOCH, "offset": 15, "recovered": True, "missed": [ev(13), ev(14), ev(15)]}
    outcome = tracker.apply_joined("service_1", answer, since)
    assert offsets(outcome.deliver) == [13, 14, 15, 16]
    assert outcome.missed == 3
    assert tracker.since("service_1") == {"offset": 16, "epoch": EPOCH}


def test_a_gap_between_recovered_and_live_events_asks_for_another_resync() -> None:
    tracker = joined_tracker(offset=0)
    since = tracker.begin_join("service_1")
    tracker.offer(ev(5))
    outcome = tracker.apply_joined(
        "service_1",
        {"epoch": EPOCH, "offset": 2, "recovered": True, "missed": [ev(1), ev(2)]},
        since,
    )
    assert offsets(outcome.deliver) == [1, 2]
    assert outcome.resync and tracker.is_joining("service_1")
    since = tracker.begin_join("service_1")
    assert since == {"offset": 2, "epoch": EPOCH}
    outcome = tracker.apply_joined(
        "service_1",
        {"epoch": EPOCH, "offset": 5, "recovered": True, "missed": [ev(3), ev(4), ev(5)]},
        since,
    )
    assert offsets(outcome.deliver) == [3, 4, 5] and not outcome.resync


def test_a_late_second_join_answer_never_delivers_again() -> None:
    tracker = joined_tracker(offset=0)
    first = tracker.begin_join("service_1")
    second = tracker.begin_join("service_1")  # e.g. a rejoin frame while reconnecting
    missed = [ev(1), ev(2)]
    out1 = tracker.apply_joined(
        "service_1", {"epoch": EPOCH, "offset": 2, "recovered": True, "missed": missed}, first
    )
    assert tracker.offer(ev(3)) is Verdict.DELIVER
    out2 = tracker.apply_joined(
        "service_1",
        {"epoch": EPOCH, "offset": 3, "recovered": True, "missed": [*missed, ev(3)]},
        second,
    )
    assert offsets(out1.deliver) == [1, 2] and out2.deliver == []


def test_a_missing_recovered_flag_counts_as_not_recovered() -> None:
    tracker = joined_tracker(offset=3)
    since = tracker.begin_join("service_1")
    outcome = tracker.apply_joined("service_1", {"epoch": "e9", "offset": 0}, since)
    assert outcome.recovered is False
    assert tracker.since("service_1") == {"offset": 0, "epoch": "e9"}


def test_abandoned_join_forgets_the_room_or_hands_over_the_buffer() -> None:
    tracker = joined_tracker(offset=0)
    tracker.begin_join("service_1")
    tracker.offer(ev(1))
    assert tracker.abandon_join("service_1", forget=True) == []
    assert "service_1" not in tracker and tracker.since("service_1") is None

    tracker = joined_tracker(offset=0)
    tracker.begin_join("service_1")
    tracker.offer(ev(1))
    tracker.offer(ev(2))
    assert offsets(tracker.abandon_join("service_1", forget=False)) == [1, 2]
    assert tracker.since("service_1") == {"offset": 2, "epoch": EPOCH}
    assert tracker.offer(ev(2)) is Verdict.DUPLICATE


# The property the client exists for: whatever the network does to live delivery (drops,
# repeats), the handlers see every event of the room once and in order, given a final rejoin.
NETWORK_OPS = st.lists(st.sampled_from(["deliver", "drop", "repeat", "answer"]), max_size=80)


def run_room(tracker: RoomTracker, ops: list[str], total: int) -> list[int]:
    """Play ``ops`` against a room whose history holds every one of ``total`` events."""
    history = [ev(n) for n in range(1, total + 1)]
    handed: list[dict[str, Any]] = []
    published = 0
    last_sent: dict[str, Any] | None = None
    pending_since: list[dict[str, Any] | None] = []

    def answer() -> None:
        since = pending_since.pop(0)
        missed = [e for e in history[:published] if since and e["offset"] > since["offset"]]
        data = {"epoch": EPOCH, "offset": published, "recovered": True, "missed": missed}
        outcome = tracker.apply_joined("service_1", data, since)
        handed.extend(outcome.deliver)
        if outcome.resync:
            pending_since.append(tracker.begin_join("service_1"))

    def send(event: dict[str, Any]) -> None:
        verdict = tracker.offer(event)
        if verdict is Verdict.DELIVER:
            handed.append(event)
        elif verdict is Verdict.RESYNC:
            pending_since.append(tracker.begin_join("service_1"))

    for op in ops:
        if op == "answer":
            if pending_since:
                answer()
            continue
        if op == "repeat":
            if last_sent is not None:
                send(last_sent)
            continue
        if published == total:
            continue
        published += 1
        last_sent = history[published - 1]
        if op == "deliver":
            send(last_sent)
    while pending_since:
        answer()
    published = total
    pending_since.append(tracker.begin_join("service_1"))  # reconnect at the end
    answer()
    while pending_since:
        answer()
    return offsets(handed)


@settings(max_examples=300, deadline=None)
@given(ops=NETWORK_OPS, total=st.integers(0, 30))
def test_every_event_is_handed_over_once_and_in_order(ops: list[str], total: int) -> None:
    assert run_room(joined_tracker(offset=0), ops, total) == list(range(1, total + 1))


# --- gateway-testclients: arithmetic ----------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_loss_is_counted_against_expected_deliveries_not_arrivals() -> None:
    ledger = Ledger()
    for _ in range(3):
        ledger.record_sent("reservation_created")
    ledger.record_sent("comment_created")
    ledger.record_failed("django_unavailable")
    three = {
        ("cliente-1", "cliente_1"),
        ("proveedor-1", "proveedor_1"),
        ("admin-1", "admin_dashboard"),
    }
    ledger.record_acked("reservation_created", "A", 10.0, three)
    ledger.record_acked("reservation_created", "B", 20.0, three)
    ledger.record_acked(
        "comment_created", "C", 30.0, {("admin-1", "admin_dashboard"), ("admin-1", "service_1")}
    )
    # A: everywhere, to the cliente twice. B: the proveedor never got it. C: in both rooms.
    ledger.record_arrival("cliente-1", "A", "cliente_1", 10.004)
    ledger.record_arrival("cliente-1", "A", "cliente_1", 10.050)
    ledger.record_arrival("proveedor-1", "A", "proveedor_1", 10.002)
    ledger.record_arrival("admin-1", "A", "admin_dashboard", 10.003)
    ledger.record_arrival("cliente-1", "B", "cliente_1", 20.001)
    ledger.record_arrival("admin-1", "B", "admin_dashboard", 20.010)
    ledger.record_arrival("admin-1", "C", "admin_dashboard", 30.020)
    ledger.record_arrival("admin-1", "C", "service_1", 30.030)
    ledger.record_arrival("cliente-1", "Z", "cliente_1", 40.0)  # never acked to us
    report = ledger.report()
    assert (report.sent, report.acked, report.failed) == (4, 3, 1)
    assert report.expected == 8
    assert report.delivered == 7
    assert report.lost == 1
    assert report.duplicates == 1
    assert report.unexpected == 1
    assert report.failed_by_code == {"django_unavailable": 1}
    assert report.sent_by_type == {"reservation_created": 3, "comment_created": 1}
    # First arrivals, ms: 4, 2, 3, 1, 10, 20, 30 -> sorted 1 2 3 4 10 20 30.
    assert report.latency_ms == {"p50": 4.0, "p90": 30.0, "p99": 30.0, "max": 30.0}
    assert report.exit_code == EXIT_LOSS


def test_report_exit_codes() -> None:
    def report(**changes: Any) -> Report:
        base: dict[str, Any] = dict(
            sent=3,
            acked=3,
            failed=0,
            expected=9,
            delivered=9,
            lost=0,
            duplicates=0,
            unexpected=0,
            latency_ms={},
            sent_by_type={},
            failed_by_code={},
        )
        return Report(**(base | changes))

    assert report().exit_code == EXIT_OK
    assert report(lost=1, delivered=8).exit_code == EXIT_LOSS
    assert report(duplicates=2).exit_code == EXIT_LOSS
    assert report(failed=1).exit_code == EXIT_LOSS
    assert report(failed=1, max_failed=1).exit_code == EXIT_OK
    assert report(connect_failures=["cliente-1: authentication failed"]).exit_code == EXIT_CONNECT
    assert report(lost=5, connect_failures=["x"]).as_dict()["exit_code"] == EXIT_CONNECT


def test_text_report_shows_every_number() -> None:
    ledger = Ledger()
    ledger.record_sent("payment_created")
    ledger.record_acked("payment_created", "P", 1.0, {("cliente-1", "cliente_1")})
    ledger.record_arrival("cliente-1", "P", "cliente_1", 1.0125)
    options = parse_args(["--url", "ws://h:1/ws", "--clientes", "1", "--proveedores", "1"])
    text = format_report(ledger.report(), options)
    assert "events sent          1  (payment_created 1)" in text
    assert "expected deliveries  1" in text
    assert "lost                 0" in text
    assert "p50 12.5" in text
    assert text.endswith("result: OK")


# --- gateway-testclients: options and the scenario's plan ---------------------------------------


def test_parse_args_defaults_and_repeated_urls() -> None:
    options = parse_args(["--url", "ws://a:4000/ws", "--url", "ws://b:4000/ws", "--admin"])
    assert options == Options(urls=["ws://a:4000/ws", "ws://b:4000/ws"], admin=True)
    options = parse_args(
        [
            "--url",
            "ws://a/ws",
            "--clientes",
            "7",
            "--proveedores",
            "2",
            "--rounds",
            "4",
            "--token-template",
            "tok-{role}-{id}",
            "--settle-seconds",
            "0.5",
            "--json",
            "--max-failed",
            "3",
            "--first-id",
            "100",
        ]
    )
    assert (options.clientes, options.proveedores, options.rounds) == (7, 2, 4)
    assert (options.settle_s, options.json, options.max_failed) == (0.5, True, 3)
    assert render_token(options.token_template, "proveedor", 101) == "tok-proveedor-101"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--url"),
        (["--url", "http://a/ws"], "not a ws://"),
        (["--url", "ws://a/ws", "--clientes", "-1"], "must be 0 or more"),
        (["--url", "ws://a/ws", "--proveedores", "0"], "must be at least 1"),
        (["--url", "ws://a/ws", "--token-template", "{user}"], "{role} and {id}"),
        (["--url", "ws://a/ws", "--token-template", "fixed"], "must contain {id}"),
        (["--url", "ws://a/ws", "--services", "2", "--services-per-client", "3"], "cannot exceed"),
        (["--url", "ws://a/ws", "--settle-seconds", "nan"], "seconds"),
        (["--url", "ws://a/ws", "--request-timeout", "0"], "more than 0"),
    ],
)
def test_parse_args_rejects_bad_options_clearly(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--url",
        "--clientes",
        "--proveedores",
        "--admin",
        "--rounds",
        "--token-template",
        "--settle-seconds",
        "--json",
        "--max-failed",
    ):
        assert option in text
    assert "lost" in text and "Exit status" in text


def test_service_rooms_are_spread_round_robin() -> None:
    assert service_rooms_for(0, 3, 2) == ["service_1", "service_2"]
    assert service_rooms_for(2, 3, 2) == ["service_3", "service_1"]
    assert service_rooms_for(5, 3, 0) == []


def test_expected_recipients_follow_the_contracts_routing() -> None:
    options = parse_args(["--url", "ws://a/ws"])
    scenario = Scenario(options, session=None)  # type: ignore[arg-type]  # no I/O here

    def actor(name: str, rooms: set[str]) -> Actor:
        role, user_id = name.split("-")
        return Actor(name, role, user_id, GatewayClient("ws://a/ws", name), rooms)

    scenario.clientes = [
        actor("cliente-1", {"cliente_1", "all_clientes", "service_1"}),
        actor("cliente-2", {"cliente_2", "all_clientes", "service_2"}),
    ]
    scenario.proveedores = [actor("proveedor-1", {"proveedor_1", "all_proveedores", "service_1"})]
    scenario.admins = [actor("admin-1", {"admin_dashboard"})]
    reservation = {"clienteId": "1", "proveedorId": "1", "servicioId": "2", "fecha": "2030-01-01"}
    assert scenario.recipients("reservation_created", reservation) == {
        ("cliente-1", "cliente_1"),
        ("proveedor-1", "proveedor_1"),
        ("admin-1", "admin_dashboard"),
    }
    comment = {"servicioId": "1", "text": "ok"}
    assert scenario.recipients("comment_created", comment) == {
        ("cliente-1", "service_1"),
        ("proveedor-1", "service_1"),
        ("admin-1", "admin_dashboard"),
    }


# --- the browser client's pure parts, under Node ----------------------------------------------

NODE_SCRIPT = """
import { backoffCeiling, backoffDelay, UrlRotation, RoomTracker } from %(module)s;
const input = JSON.parse(process.argv[1]);
const out = {};
out.ceilings = [0, 1, 2, 3, 4, 5, 6, 7, 10000].map((n) => backoffCeiling(n, 250, 10000));
let seed = 1;
const rnd = () => ((seed = (seed * 16807) %% 2147483647) / 2147483647);
out.delays = Array.from({ length: 500 }, (_, i) => [i %% 9, backoffDelay(i %% 9, 250, 10000, rnd)]);
const urls = new UrlRotation(["ws://a/ws", "ws://b/ws"]);
out.rotation = [urls.current, urls.advance(), urls.advance()];
out.badUrl = (() => { try { new UrlRotation(["http://a/ws"]); return "accepted"; }
                      catch (e) { return e.name; } })();
out.runs = input.runs.map((ops) => {
  const t = new RoomTracker();
  const handed = [];
  const results = [];
  for (const [op, arg, extra] of ops) {
    if (op === "join") results.push(t.beginJoin(arg));
    else if (op === "offer") {
      const v = t.offer(arg);
      results.push(v);
      if (v === "deliver") handed.push(arg.offset);
    } else if (op === "joined") {
      const o = t.applyJoined("service_1", arg, extra);
      results.push([o.recovered, o.missed, o.resync]);
      handed.push(...o.deliver.map((e) => e.offset));
    }
  }
  return { results, handed, since: t.since("service_1") };
});
console.log(JSON.stringify(out));
"""


def python_run(ops: list[list[Any]]) -> dict[str, Any]:
    tracker = RoomTracker()
    handed: list[int] = []
    results: list[Any] = []
    for op, arg, extra in ops:
        if op == "join":
            results.append(tracker.begin_join(arg))
        elif op == "offer":
            verdict = tracker.offer(arg)
            results.append(verdict.value)
            if verdict is Verdict.DELIVER:
                handed.append(arg["offset"])
        else:
            outcome = tracker.apply_joined("service_1", arg, extra)
            results.append([outcome.recovered, outcome.missed, outcome.resync])
            handed.extend(offsets(outcome.deliver))
    return {"results": results, "handed": handed, "since": tracker.since("service_1")}


SINCE_2 = {"offset": 2, "epoch": EPOCH}
SHARED_RUNS: list[list[list[Any]]] = [
    # fresh join, live events, a duplicate, a gap, its recovery with a buffered event
    [
        ["join", "service_1", None],
        ["offer", ev(1), None],
        ["joined", {"epoch": EPOCH, "offset": 1}, None],
        ["offer", ev(2), None],
        ["offer", ev(2), None],
        ["offer", ev(5), None],
        ["offer", ev(6), None],
        [
            "joined",
            {
                "epoch": EPOCH,
                "offset": 6,
                "recovered": True,
                "missed": [ev(3), ev(4), ev(5), ev(6)],
            },
            SINCE_2,
        ],
        ["offer", ev(7), None],
    ],
    # recovery refused after an epoch change
    [
        ["join", "service_1", None],
        ["joined", {"epoch": EPOCH, "offset": 2}, None],
        ["offer", ev(3), None],
        ["offer", ev(1, epoch="e2"), None],
        ["joined", {"epoch": "e2", "offset": 1, "recovered": False}, {"offset": 3, "epoch": EPOCH}],
        ["offer", ev(2, epoch="e2"), None],
    ],
    # a recovered merge that still leaves a gap
    [
        ["join", "service_1", None],
        ["joined", {"epoch": EPOCH, "offset": 0}, None],
        ["join", "service_1", None],
        ["offer", ev(4), None],
        [
            "joined",
            {"epoch": EPOCH, "offset": 2, "recovered": True, "missed": [ev(1), ev(2)]},
            {"offset": 0, "epoch": EPOCH},
        ],
    ],
]


@pytest.mark.node
def test_browser_client_pure_parts_behave_like_the_python_ones() -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the browser client's tests"
    script = NODE_SCRIPT % {"module": json.dumps(CLIENT_JS.as_uri())}
    result = subprocess.run(
        [node, "--input-type=module", "-e", script, json.dumps({"runs": SHARED_RUNS})],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = json.loads(result.stdout)
    python = Backoff(0.25, 10.0)
    assert out["ceilings"] == [python.ceiling(n) * 1000 for n in (0, 1, 2, 3, 4, 5, 6, 7, 10000)]
    for attempt, delay in out["delays"]:
        assert 0 <= delay <= python.ceiling(attempt) * 1000
    assert len({round(d, 9) for _, d in out["delays"]}) > 400  # jittered, not fixed
    assert out["rotation"] == ["ws://a/ws", "ws://b/ws", "ws://a/ws"]
    assert out["badUrl"] == "TypeError"
    expected = [python_run(ops) for ops in SHARED_RUNS]
    assert out["runs"] == expected
    # And the scenarios say what they should, so agreeing is not agreeing on nonsense.
    assert expected[0]["handed"] == [1, 2, 3, 4, 5, 6, 7]
    assert expected[1]["handed"] == [3, 1, 2]
    assert expected[1]["since"] == {"offset": 2, "epoch": "e2"}
    assert expected[2]["handed"] == [1, 2] and expected[2]["results"][-1] == [True, 2, True]
