"""The console's data: each device's health series stays bounded, and the events feed gives
every source's changes once, oldest first, with a cursor that goes on from where it stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import ConsoleApi
from twelvefactor_services.management import operators, registry
from twelvefactor_services.management.logic import parse_report
from twelvefactor_services.management.operators import Principal
from twelvefactor_services.management.store import Db

pytestmark = pytest.mark.unit


def health(reg: registry.Registry, device: str, ts: float, load: float, dropped: int = 0) -> None:
    body = {
        "v": 1,
        "ts": ts,
        "uptime_s": 10.0,
        "load": [load, 0.0, 0.0],
        "memory": {"total_kb": 1000, "available_kb": 600},
        "data": {"path": "/data", "total_bytes": 5000, "free_bytes": 4000},
        "queue": {"depth": 3, "bytes": 10, "dropped": dropped, "oldest_ts": None, "fault": None},
    }
    reg.apply(device, parse_report(device, "health", json.dumps(body).encode()), ts)


def test_the_health_series_keeps_the_newest_samples_of_each_device(tmp_path: Path) -> None:
    reg = registry.Registry(Db(tmp_path / "registry.db"))
    health(reg, "dev-b", 1.0, 9.0)  # a bystander
    for i in range(registry.HEALTH_KEPT + 50):
        health(reg, "dev-a", float(i + 1), i / 100, dropped=i)
    # older than the newest report (sent again after newer ones: session/unheard.py): a
    # sample all the same, in its place by the device's time; the last kept is not moved
    health(reg, "dev-a", 5.0, 99.0)
    series = registry.health_series(reg.db, "dev-a")
    assert len(series) == registry.HEALTH_KEPT  # the last HEALTH_KEPT recorded
    assert [s["ts"] for s in series[:2]] == [5.0, 52.0]
    assert series[0]["load1"] == 99.0 and series[-1]["ts"] == float(registry.HEALTH_KEPT + 50)
    shown = registry.get_device(reg.db, "dev-a")
    assert shown is not None and shown["health_ts"] == float(registry.HEALTH_KEPT + 50)
    assert series[-1] == {
        "ts": float(registry.HEALTH_KEPT + 50),
        "load1": (registry.HEALTH_KEPT + 49) / 100,
        "memory_available_kb": 600,
        "memory_total_kb": 1000,
        "data_free_bytes": 4000,
        "data_total_bytes": 5000,
        "queue_depth": 3,
        "queue_dropped": registry.HEALTH_KEPT + 49,
    }
    assert [s["ts"] for s in registry.health_series(reg.db, "dev-a", since=1047.0)] == [
        1048.0,
        1049.0,
        1050.0,
    ]
    assert [s["ts"] for s in registry.health_series(reg.db, "dev-a", limit=2)] == [1049.0, 1050.0]
    assert len(registry.health_series(reg.db, "dev-b")) == 1
    reg.db.close()


def test_a_health_report_with_odd_fields_is_still_a_sample(tmp_path: Path) -> None:
    assert registry.health_sample({"load": "high", "memory": [], "queue": {"depth": True}}) == (
        (None,) * 7
    )
    # beyond what a 64-bit column holds: None, not a report that fails to be written
    assert registry.health_sample({"memory": {"total_kb": 10**30, "available_kb": -(2**63)}})[
        1:3
    ] == (-(2**63), None)


def tick() -> None:
    """Let the clock move on 2 ms: the job trigger takes SQLite's time, to the millisecond."""
    start = time.time()
    while time.time() < start + 0.002:
        pass


def online(reg: registry.Registry, device: str, up: bool, reason: str) -> None:
    now = time.time()
    raw = json.dumps({"v": 1, "online": up, "reason": reason, "ts": now}).encode()
    reg.apply(device, parse_report(device, "online", raw), now)


def test_the_events_feed_is_in_order_and_goes_on_from_its_cursor(api: ConsoleApi) -> None:
    # the operator API's registry, as it prepared it (its tables and the events' triggers)
    db = api.srv.db
    reg = registry.Registry(api.srv.db)
    admin = Principal("admin", "admin", "0" * 16)

    steps = [
        lambda: online(reg, "dev-a", True, ""),
        lambda: db.execute(
            "INSERT INTO device_jobs (job, device, state, updated)"
            " VALUES ('j-1', 'dev-a', 'queued', 0)"
        ),
        lambda: operators.record(db, time.time(), admin, "POST", "/jobs", 201, {"artifact": "x"}),
        lambda: operators.record(db, time.time(), admin, "POST", "/jobs", 409, {}),  # refused
        lambda: db.execute("UPDATE device_jobs SET state = 'downloading' WHERE job = 'j-1'"),
        lambda: db.execute("UPDATE device_jobs SET percent = 5 WHERE job = 'j-1'"),  # same state
        lambda: db.execute(
            "INSERT INTO rollout_events (rollout, ts, state, reason)"
            " VALUES ('r-1', ?, 'running', 'go')",
            (time.time(),),
        ),
        lambda: reg.apply("dev-a", parse_report("dev-a", "config", raw), time.time()),
        lambda: reg.apply("dev-a", parse_report("dev-a", "config", raw), time.time()),  # again
        lambda: online(reg, "dev-a", False, "keepalive timeout"),
    ]
    raw = json.dumps({"v": 1, "version": 1, "status": "applied", "error": None}).encode()
    db.execute(
        "INSERT INTO update_jobs (id, artifact, target, created) VALUES ('j-1', 'x', 't', 0)"
    )
    for step in steps:
        step()
        tick()

    first = registry.events(db, None, audit=True)
    kinds = [(e["kind"], e.get("state")) for e in first["events"]]
    assert kinds == [
        ("online", None),
        ("job", "queued"),
        ("audit", None),
        ("job", "downloading"),
        ("rollout", "running"),
        ("config", "applied"),
        ("offline", None),
    ]
    ts = [e["ts"] for e in first["events"]]
    assert ts == sorted(ts)
    assert len({e["id"] for e in first["events"]}) == len(kinds)
    assert first["events"][-1]["reason"] == "keepalive timeout"
    assert first["events"][2]["status"] == 201
    # a viewer gets the same without the audit log
    viewer = registry.events(db, None, audit=False)
    assert [e["kind"] for e in viewer["events"]] == [k for k, _ in kinds if k != "audit"]

    # nothing new after the cursor; then exactly what came since
    cursor = registry.parse_cursor(first["next"])
    assert cursor is not None
    assert registry.events(db, cursor, audit=True) == {"events": [], "next": first["next"]}
    db.execute("UPDATE device_jobs SET state = 'failed', reason = 'no space' WHERE job = 'j-1'")
    online(reg, "dev-a", True, "")
    later = registry.events(db, cursor, audit=True)
    assert [(e["kind"], e.get("reason")) for e in later["events"]] == [
        ("job", "no space"),
        ("online", ""),
    ]
    again = registry.parse_cursor(later["next"])
    assert again is not None and registry.events(db, again, audit=True)["events"] == []
    # a page at a time: the rest comes with the next cursor
    for _ in range(5):
        online(reg, "dev-b", True, "")
        online(reg, "dev-b", False, "gone")
    page = registry.events(db, again, audit=True, limit=4)
    assert len(page["events"]) == 4
    rest_cursor = registry.parse_cursor(page["next"])
    assert rest_cursor is not None
    assert len(registry.events(db, rest_cursor, audit=True)["events"]) == 6


def test_a_cursor_is_checked() -> None:
    assert registry.parse_cursor("o1_e2_r3_a4") == {"o": 1, "e": 2, "r": 3, "a": 4}
    for bad in ("", "o1_e2_r3", "o1_e2_r3_a-4", "o1;e2_r3_a4", "o1_e2_r3_a4 "):
        assert registry.parse_cursor(bad) is None, bad
