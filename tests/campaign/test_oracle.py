"""The oracle and the schedule on synthetic traces: each kind of violation is caught, a correct
stream (recovery with overlaps included) is not flagged, the schedule is a function of the seed."""

from __future__ import annotations

from typing import Any

from tests.campaign.ledger import Published, check_final
from tests.campaign.oracle import ClientOracle, RoomLog, RoomTrack
from tests.campaign.schedule import (
    ALL_KINDS,
    CLUSTER_KINDS,
    Kind,
    Targets,
    counts,
    make_schedule,
)

ROOM = "service_1"


def ev(offset: int, epoch: str = "e1", room: str = ROOM, tag: str = "") -> dict[str, Any]:
    return {
        "room": room,
        "type": "campaign",
        "payload": {"tag": tag or f"t{offset}"},
        "id": f"{epoch}-{offset}-{tag}",
        "offset": offset,
        "epoch": epoch,
    }


def joined(offset: int, epoch: str = "e1", missed: list[Any] | None = None, **kw: Any) -> Any:
    data = {"room": ROOM, "epoch": epoch, "offset": offset, **kw}
    if missed is not None:
        data["missed"] = missed
        data.setdefault("recovered", True)
    return data


def oracle(name: str = "c1", log: RoomLog | None = None) -> ClientOracle:
    return ClientOracle(name, log or RoomLog(), clock=lambda: 1.0)


def member(offset: int = 0, name: str = "c1", log: RoomLog | None = None) -> ClientOracle:
    """A client whose first join answered at ``offset``."""
    o = oracle(name, log)
    assert o.begin_join(ROOM) is None
    o.on_joined(ROOM, joined(offset), None)
    return o


def kinds(o: ClientOracle) -> list[str]:
    return [v.kind for v in o.violations]


def recover(o: ClientOracle, answer: dict[str, Any], *buffered: dict[str, Any]) -> None:
    since = o.begin_join(ROOM)
    for event in buffered:
        o.on_event(event)
    o.on_joined(ROOM, answer, since)


# --- live streams ---------------------------------------------------------------------------
def test_a_clean_stream_has_no_violation_and_counts_every_event() -> None:
    o = member(0)
    for offset in range(1, 6):
        o.on_event(ev(offset))
    assert kinds(o) == []
    assert o.count.delivered == 5
    assert o.position(ROOM) == ("e1", 5)


def test_a_gap_is_caught_with_the_missing_offsets_and_a_trace() -> None:
    o = member(0)
    for offset in (1, 2, 4, 5):
        o.on_event(ev(offset))
    assert kinds(o) == ["gap"]
    violation = o.violations[0]
    assert "3..3 missing" in violation.detail
    assert any("e1:2" in line for line in violation.before)  # what came before it
    assert any("e1:5" in line for line in violation.after)  # and after
    assert "gap" in violation.render() and ">>> here <<<" in violation.render()


def test_a_duplicate_is_caught() -> None:
    o = member(0)
    for offset in (1, 2, 2, 3):
        o.on_event(ev(offset))
    assert kinds(o) == ["duplicate"]
    assert o.count.delivered == 3


def test_a_reordering_is_caught_as_a_gap_then_a_late_event() -> None:
    o = member(0)
    for offset in (1, 3, 2, 4):
        o.on_event(ev(offset))
    assert kinds(o) == ["gap", "reorder"]
    assert o.delivered(ROOM, "e1", 2)


def test_a_new_epoch_in_the_live_stream_is_a_violation() -> None:
    o = member(0)
    o.on_event(ev(1))
    o.on_event(ev(1, epoch="e2"))
    assert kinds(o) == ["new_epoch"]


def test_the_first_publish_of_an_unpublished_room_ends_its_placeholder_epoch() -> None:
    """A room nothing was published to answers offset 0 of epoch "0" (docs/cluster.md): offset 1
    of any epoch comes next, live or recovered; after that a new epoch is a violation again."""
    o = oracle()
    o.begin_join(ROOM)
    o.on_joined(ROOM, joined(0, epoch="0"), None)
    o.on_event(ev(1, epoch="e1"))
    assert kinds(o) == [] and o.position(ROOM) == ("e1", 1)
    late = oracle()
    late.begin_join(ROOM)
    late.on_joined(ROOM, joined(0, epoch="0"), None)
    recover(late, joined(2, epoch="e1", missed=[ev(1), ev(2)]))
    assert kinds(late) == [] and late.position(ROOM) == ("e1", 2)
    o.on_event(ev(2, epoch="e2"))
    assert kinds(o) == ["new_epoch"]


def test_an_event_of_a_room_never_joined_is_stray() -> None:
    o = member(0)
    o.on_event(ev(1, room="location_9"))
    assert kinds(o) == ["stray_event"]


# --- recovery -------------------------------------------------------------------------------
def test_recovery_with_live_events_overlapping_missed_is_clean() -> None:
    """After a reconnect the automatic rooms' live events come before the join's answer: they
    are buffered, and those ``missed`` covers are overlaps, not duplicates."""
    o = member(0)
    o.on_event(ev(1))
    o.on_event(ev(2))
    recover(o, joined(5, missed=[ev(3), ev(4), ev(5)]), ev(4), ev(5), ev(6))
    assert kinds(o) == []
    assert o.count.overlaps == 2
    assert o.count.delivered == 6
    assert o.position(ROOM) == ("e1", 6)


def test_events_before_the_answer_to_authenticate_wait_for_the_rejoin() -> None:
    """A node may send an automatic room's events before ``auth_success``: a client that
    reconnected holds them from the moment the connection opens."""
    o = member(0)
    o.on_event(ev(1))
    o.hold([ROOM])
    o.on_event(ev(3))  # 2 was published while the client was away
    recover(o, joined(3, missed=[ev(2), ev(3)]))
    assert kinds(o) == [] and o.count.overlaps == 1 and o.position(ROOM) == ("e1", 3)


def test_an_old_event_sent_again_during_a_join_is_a_duplicate_not_an_overlap() -> None:
    o = member(0)
    o.on_event(ev(1))
    o.on_event(ev(2))
    recover(o, joined(3, missed=[ev(3)]), ev(2), ev(3))
    assert kinds(o) == ["duplicate"] and o.count.overlaps == 1


def test_old_events_sent_before_auth_success_on_a_new_connection_are_stale_duplicates() -> None:
    """A node whose live stream lagged sends a reconnecting client's automatic room events it
    already had, before ``auth_success``: the client gets them twice."""
    o = member(0)
    for offset in (1, 2, 3):
        o.on_event(ev(offset))
    o.hold([ROOM])
    o.on_event(ev(2), early=True)
    o.on_event(ev(3), early=True)
    o.on_event(ev(4), early=True)
    recover(o, joined(4, missed=[ev(4)]))
    assert kinds(o) == ["stale_duplicate", "stale_duplicate"]
    assert o.count.overlaps == 1 and o.position(ROOM) == ("e1", 4)


def test_rejoin_that_loses_events_is_caught() -> None:
    """Issue 16 item 1: answered recovered with nothing missed, then live event 3: 2 is lost."""
    o = member(0)
    o.on_event(ev(1))
    recover(o, joined(1, missed=[]))
    o.on_event(ev(3))
    assert kinds(o) == ["gap"]


def test_an_event_in_missed_delivered_again_live_is_a_duplicate() -> None:
    """Issue 16 item 3: history and pub/sub race; the live copy comes after the answer."""
    o = member(0)
    recover(o, joined(2, missed=[ev(1), ev(2)]))
    o.on_event(ev(2))
    assert kinds(o) == ["duplicate"]


def test_an_answer_whose_missed_stops_short_is_incomplete() -> None:
    o = member(0)
    recover(o, joined(4, missed=[ev(1), ev(2)]))
    o.on_event(ev(5))
    assert kinds(o) == ["missed_incomplete"]
    assert o.accounted(ROOM, "e1", 3)


def test_recovered_false_and_a_new_epoch_on_join_are_violations() -> None:
    o = member(0)
    o.on_event(ev(1))
    recover(o, joined(9, missed=[], recovered=False))
    recover(o, joined(1, epoch="e2", missed=[]))
    assert kinds(o) == ["not_recovered", "new_epoch"]
    o.on_event(ev(2, epoch="e2"))
    assert kinds(o) == ["not_recovered", "new_epoch"]  # and the client goes on from there


def test_two_events_at_one_position_are_a_conflict_across_clients() -> None:
    log = RoomLog()
    a, b = member(0, "a", log), member(0, "b", log)
    a.on_event(ev(1, tag="x"))
    b.on_event(ev(1, tag="y"))
    assert kinds(a) == [] and kinds(b) == ["conflict"]


# --- the end of a run -----------------------------------------------------------------------
def test_final_check_finds_lost_double_and_undelivered_publishes() -> None:
    log = RoomLog()
    a, b = member(0, "a", log), member(0, "b", log)
    for offset in (1, 2, 3):
        a.on_event(ev(offset))
        b.on_event(ev(offset))
    a.on_event(ev(4, tag="twice"))
    a.on_event(ev(5, tag="twice"))
    ledger = [
        Published("t1", "api", (ROOM,), acked=True, offsets={ROOM: 1}),
        Published("t2", "api", (ROOM,), acked=True, offsets={ROOM: 3}),  # answered 3, is at 2
        Published("lost", "ingest", (ROOM,), acked=True),
        Published("twice", "publisher", (ROOM,), acked=True),
        Published("t3", "client", (ROOM,), acked=False),
    ]
    found = check_final(ledger, [a, b], log, {}, clock=lambda: 9.0)
    assert sorted(v.kind for v in found) == ["double_offset", "lost", "wrong_offset"]


def test_final_check_names_the_client_an_acknowledged_publish_never_reached() -> None:
    """The safety net behind the step checks: a hole that no gap accounted for."""
    log = RoomLog()
    a, b = member(0, "a", log), member(0, "b", log)
    for offset in (1, 2, 3):
        a.on_event(ev(offset))
    b.rooms[ROOM] = RoomTrack("e1", 3, spans=[["e1", 1, 1], ["e1", 3, 3]])
    acked = [Published("t2", "api", (ROOM,), acked=True, offsets={ROOM: 2})]
    [missing] = check_final(acked, [a, b], log, {}, clock=lambda: 9.0)
    assert (missing.kind, missing.client) == ("not_delivered", "b")
    b.rooms[ROOM].skipped.add(("e1", 2))  # a gap already counted it: not counted twice
    assert check_final(acked, [a, b], log, {}, clock=lambda: 9.0) == []


def test_final_check_flags_a_client_that_never_got_the_fence() -> None:
    log = RoomLog()
    a, b = member(0, "a", log), member(0, "b", log)
    a.on_event(ev(1, tag="fence"))
    found = check_final([], [a, b], log, {ROOM: ("e1", 1)}, clock=lambda: 9.0)
    assert found == []  # the fence is flagged on the client's own oracle
    assert kinds(a) == [] and kinds(b) == ["fence_missing"]


# --- the schedule ---------------------------------------------------------------------------
TARGETS = Targets(nodes=("node-1", "node-2", "node-3"), proxies=("node-1", "worker"))


def test_the_seed_fixes_the_schedule() -> None:
    assert make_schedule(7, 90, TARGETS) == make_schedule(7, 90, TARGETS)
    assert make_schedule(7, 90, TARGETS) != make_schedule(8, 90, TARGETS)


def test_every_kind_is_injected_at_least_three_times_within_the_window() -> None:
    for seed in range(20):
        schedule = make_schedule(seed, 60, TARGETS)
        assert all(counts(schedule)[str(kind)] >= 3 for kind in ALL_KINDS)
        assert all(2.0 <= f.at_s <= 58.0 for f in schedule)
        assert [f.at_s for f in schedule] == sorted(f.at_s for f in schedule)


def test_faults_name_valid_targets_and_resources() -> None:
    schedule = make_schedule(3, 300, TARGETS)
    for fault in schedule:
        if fault.kind in (Kind.NODE_KILL, Kind.NODE_TERM):
            assert fault.target in TARGETS.nodes and fault.resource == "nodes"
        elif fault.kind in (Kind.PROXY_CUT, Kind.PROXY_DELAY, Kind.PROXY_STALL):
            assert fault.target in TARGETS.proxies and fault.resource == f"proxy:{fault.target}"
        else:
            assert fault.target == ""
    stalls = [f.duration_s for f in schedule if f.kind is Kind.REDIS_STALL]
    assert max(stalls) > 5.0  # some outlast the nodes' 5 s socket timeout


def test_a_cluster_schedule_keeps_stalls_under_the_node_timeout_and_names_rooms() -> None:
    targets = Targets(TARGETS.nodes, (), rooms=("service_1", "location_1"), cluster=True)
    schedule = make_schedule(5, 120, targets, kinds=CLUSTER_KINDS)
    assert all(counts(schedule)[str(kind)] >= 3 for kind in CLUSTER_KINDS)
    assert not {Kind.PROXY_CUT, Kind.PROXY_DELAY, Kind.PROXY_STALL} & {f.kind for f in schedule}
    for fault in schedule:
        if fault.kind is Kind.REDIS_STALL:
            assert fault.duration_s < 3.0  # cluster-node-timeout: no failover mid-write
        if fault.kind is Kind.SLOT_MIGRATION:
            assert fault.params["room"] in targets.rooms
        if fault.kind in (Kind.CLUSTER_FAILOVER, Kind.MASTER_CRASH):
            assert fault.params["master"] in (0, 1, 2)
