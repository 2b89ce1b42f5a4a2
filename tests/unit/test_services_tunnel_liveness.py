"""Liveness from the tunnel (issue 18, item 3): the hub's counters, the registry's online state;
and a sleeping device's presence (asleep until its announced check-in, then overdue)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from twelvefactor_services.hub.liveness import Change, LivenessTracker
from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.management import devicelist, registry, tunnelstate
from twelvefactor_services.management.logic import (
    OVERDUE_AFTER,
    OnlineReport,
    OnlineState,
    PayloadError,
    checkin_due,
    online_transition,
    parse_report,
    presence,
    tunnel_transition,
)
from twelvefactor_services.management.store import Db

pytestmark = pytest.mark.unit


def test_a_peer_whose_counter_stops_goes_quiet_after_the_bound_and_comes_back() -> None:
    t = LivenessTracker(after=75)
    assert t.observe({"k": 100}, 0.0) == []  # first sight: undecided
    assert t.observe({"k": 160}, 25.0) == [Change("k", True, 25.0)]
    assert t.observe({"k": 220}, 50.0) == []  # alive and still moving: no news
    assert t.observe({"k": 220}, 124.0) == []  # 74 s quiet: not yet
    assert t.observe({"k": 220}, 125.0) == [Change("k", False, 50.0)]
    assert t.observe({"k": 220}, 500.0) == []  # told once
    assert t.observe({"k": 280}, 501.0) == [Change("k", True, 501.0)]


def test_a_peer_that_never_sends_after_the_hub_starts_is_reported_quiet() -> None:
    t = LivenessTracker(after=75)
    t.observe({"k": 0, "j": 5}, 10.0)
    assert t.observe({"k": 0, "j": 5}, 85.0) == [Change("k", False, 10.0), Change("j", False, 10.0)]


def test_a_peer_added_again_starts_from_zero_without_counting_as_traffic() -> None:
    t = LivenessTracker(after=75)
    t.observe({"k": 500}, 0.0)
    t.observe({"k": 600}, 10.0)
    assert t.observe({"k": 600}, 85.0) == [Change("k", False, 10.0)]
    assert t.observe({"k": 0}, 130.0) == []  # hub/stale.py removed and re-added it
    assert t.observe({"k": 0}, 300.0) == []  # still quiet, told once
    assert t.observe({"k": 92}, 301.0) == [Change("k", True, 301.0)]
    assert t.observe({}, 302.0) == []  # a removed peer is forgotten quietly
    with pytest.raises(ValueError, match="positive"):
        LivenessTracker(after=0)


def test_tunnel_transitions_need_both_the_sessions_and_the_tunnel() -> None:
    up = OnlineState(True, 1.0, session=True)
    t = tunnel_transition(up, False, 1_000_000.0, 50.0)
    assert t is not None and t.online is False and t.at == 50.0
    assert t.reason == "tunnel quiet: nothing received since 1970-01-12T13:46:40Z"
    quiet = OnlineState(False, 50.0, session=True, tunnel_quiet_since=1.0)
    back = tunnel_transition(quiet, True, 60.0, 60.0)
    assert back is not None and (back.online, back.reason) == (True, "tunnel back")
    said_goodbye = OnlineState(False, 50.0, session=False)
    assert tunnel_transition(said_goodbye, True, 60.0, 60.0) is None
    assert tunnel_transition(said_goodbye, False, 60.0, 60.0) is None
    assert tunnel_transition(OnlineState(None, None), False, 1.0, 2.0) is None  # never seen
    assert tunnel_transition(up, True, 1.0, 2.0) is None


def test_a_retained_online_message_does_not_revive_a_device_whose_tunnel_is_quiet() -> None:
    quiet = OnlineState(False, 50.0, session=True, tunnel_quiet_since=1.0)
    assert online_transition(quiet, OnlineReport(True, None, 7.0), 60.0) is None
    fresh = OnlineState(None, None, tunnel_quiet_since=1.0)
    t = online_transition(fresh, OnlineReport(True, None, 7.0), 60.0)
    assert t is not None and t.online is False and t.reason is not None
    assert t.reason.startswith("tunnel quiet")


def report(
    reg: registry.Registry, device: str, online: bool, reason: str | None, at: float
) -> None:
    doc: dict[str, object] = {"v": 1, "online": online, "ts": at}
    if reason is not None:
        doc["reason"] = reason
    reg.apply(device, parse_report(device, "online", json.dumps(doc).encode()), at)


def apply_all(reg: registry.Registry, after: int, now: float) -> int:
    for change in reg.tunnel_changes(after):
        reg.apply_tunnel(change, now)
        after = change.seq
    return after


def states(reg: registry.Registry, device: str) -> list[tuple[bool, str | None]]:
    return [(e["online"], e["reason"]) for e in registry.history(reg.db, device)]


def test_the_hubs_word_reaches_the_registry_through_the_shared_database(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    peers = PeerStore(Db(path))  # the hub's connections
    reg = registry.Registry(Db(path))  # the management service's
    report(reg, "dev-a", True, None, 10.0)
    report(reg, "dev-b", True, None, 10.0)
    seq = apply_all(reg, 0, 11.0)
    peers.record_liveness("dev-a", False, 20.0)
    peers.record_liveness("dev-never", False, 20.0)  # a peer that never connected: ignored
    seq = apply_all(reg, seq, 100.0)
    assert states(reg, "dev-a") == [
        (True, None),
        (False, "tunnel quiet: nothing received since 1970-01-01T00:00:20Z"),
    ]
    assert states(reg, "dev-b") == [(True, None)]
    # The broker redelivers the retained "online" (a service restart): still offline.
    report(reg, "dev-a", True, None, 10.0)
    assert registry.get_device(reg.db, "dev-a")["online"] is False
    peers.record_liveness("dev-a", True, 130.0)
    seq = apply_all(reg, seq, 130.0)
    assert states(reg, "dev-a")[-1] == (True, "tunnel back")
    # A goodbye, then the tunnel's keepalives go on: stays offline.
    report(reg, "dev-b", False, "shutdown", 140.0)
    peers.record_liveness("dev-b", False, 140.0)
    peers.record_liveness("dev-b", True, 150.0)
    assert [c.device for c in reg.tunnel_changes(seq)] == ["dev-b"]  # the newest change only
    seq = apply_all(reg, seq, 150.0)
    assert states(reg, "dev-b")[-1] == (False, "shutdown")
    assert apply_all(reg, seq, 160.0) == seq
    peers.db.close()
    reg.db.close()


def test_an_older_registry_gets_the_columns_and_its_online_devices_follow_the_tunnel(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "registry.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE devices (id TEXT PRIMARY KEY, first_seen REAL NOT NULL, online INTEGER,"
        " last_online_change REAL, health TEXT, health_ts REAL, meta TEXT, meta_ts REAL);"
        "INSERT INTO devices (id, first_seen, online, last_online_change)"
        " VALUES ('dev-old', 1.0, 1, 1.0);"
    )
    old.close()
    reg = registry.Registry(Db(path))
    tunnelstate.record(reg.db, "dev-old", False, time.time() - 80)
    t = reg.apply_tunnel(reg.tunnel_changes(0)[0], time.time())
    assert t is not None and t.online is False
    tunnelstate.record(reg.db, "dev-old", True, time.time())
    t = reg.apply_tunnel(reg.tunnel_changes(1)[0], time.time())
    assert t is not None and t.online is True  # its sessions never said goodbye
    reg.db.close()


def test_a_goodbye_that_says_asleep_carries_its_next_check_in() -> None:
    raw = b'{"v":1,"online":false,"reason":"asleep","ts":100.0,"next_checkin":14500.0}'
    got = parse_report("d", "online", raw)
    assert got == OnlineReport(False, "asleep", 100.0, 14500.0)
    with pytest.raises(PayloadError, match="next_checkin"):
        parse_report("d", "online", b'{"v":1,"online":true,"ts":1,"next_checkin":5}')
    with pytest.raises(PayloadError, match="next_checkin"):
        parse_report("d", "online", b'{"v":1,"online":false,"next_checkin":5}')
    with pytest.raises(PayloadError, match="next_checkin"):
        parse_report("d", "online", b'{"v":1,"online":false,"ts":1,"next_checkin":"soon"}')


def test_presence_follows_the_announced_interval_on_the_services_clock() -> None:
    report = OnlineReport(False, "asleep", 100.0, 14500.0)  # the device's clock is off
    due = checkin_due(report, 1_000_000.0)
    assert due == 1_014_400.0  # four hours from when the service heard it
    assert presence(False, due, 1_014_400.0 + OVERDUE_AFTER) == "asleep"
    assert presence(False, due, 1_014_400.0 + OVERDUE_AFTER + 1) == "overdue"
    assert presence(False, None, 5.0) == "offline"
    assert presence(True, due, 5.0) == "online"
    assert presence(None, None, 5.0) is None
    assert checkin_due(OnlineReport(False, "lost", None), 5.0) is None


def test_the_registry_shows_a_sleeping_device_asleep_then_overdue(tmp_path: Path) -> None:
    reg = registry.Registry(Db(tmp_path / "registry.db"))
    now = time.time()

    def goodbye(device: str, said: float, back_in: float, heard: float) -> None:
        doc = {
            "v": 1,
            "online": False,
            "reason": "asleep",
            "ts": said,
            "next_checkin": said + back_in,
        }
        reg.apply(device, parse_report(device, "online", json.dumps(doc).encode()), heard)

    for device in ("dev-m", "dev-n"):
        report(reg, device, True, None, now - 8000)
    goodbye("dev-m", 50.0, 600, now)  # its clock says 1970: only the interval counts
    d = registry.get_device(reg.db, "dev-m")
    assert d is not None and (d["presence"], d["next_checkin"]) == ("asleep", now + 600)
    goodbye("dev-n", now - 7200, 600, now - 7200)  # two hours ago, for ten minutes
    d = registry.get_device(reg.db, "dev-n")
    assert d is not None and (d["presence"], d["next_checkin"]) == ("overdue", now - 6600)
    # The same retained goodbye again, now (a service restart): the due time stays.
    goodbye("dev-n", now - 7200, 600, now)
    listed = {x["id"]: x for x in devicelist.list_devices(reg.db)}
    assert (listed["dev-n"]["presence"], listed["dev-n"]["next_checkin"]) == ("overdue", now - 6600)
    report(reg, "dev-n", True, None, now)  # it checks in
    d = registry.get_device(reg.db, "dev-n")
    assert d is not None and (d["presence"], d["next_checkin"]) == ("online", None)
    reg.db.close()


def test_a_change_the_hub_could_not_record_is_reported_again() -> None:
    t = LivenessTracker(after=75)
    t.observe({"k": 100, "j": 5}, 0.0)
    assert t.observe({"k": 160, "j": 5}, 25.0) == [Change("k", True, 25.0)]
    t.undecide("k")  # the registry was busy
    assert t.observe({"k": 220, "j": 5}, 50.0) == [Change("k", True, 50.0)]
    assert t.observe({"k": 220, "j": 5}, 75.0) == [Change("j", False, 0.0)]
    t.undecide("j")
    assert t.observe({"k": 220, "j": 5}, 76.0) == [Change("j", False, 0.0)]  # at once
    t.undecide("gone")  # a peer it no longer knows: nothing to do
