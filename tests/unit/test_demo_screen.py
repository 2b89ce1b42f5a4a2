"""The demo's events and screen (testbed/demo_watch.py, demo_view.py), from snapshots."""

from __future__ import annotations

import io
import signal

from testbed.demo_view import Screen, cells, plain_table
from testbed.demo_watch import DeviceRow, Snapshot, age_text, changes, exit_text, snapshot

ROW = DeviceRow("dev-001", True, None, 12.0, None, "1.0", 0.5, 0, 0, None, None)


def snap(**rows: DeviceRow) -> Snapshot:
    return Snapshot({r.device: r for r in rows.values()})


def test_changes_say_what_happened_once() -> None:
    first = snap(a=ROW)
    assert changes(Snapshot(), first) == ["dev-001 registered", "dev-001 online"]
    assert changes(first, first) == []
    gone = snap(a=ROW.__class__(**{**ROW.__dict__, "online": False, "reason": "lost"}))
    assert changes(first, gone) == ["dev-001 OFFLINE (lost)"]
    cfg = snap(a=ROW.__class__(**{**ROW.__dict__, "config": "v2 rejected: port out of range"}))
    assert changes(first, cfg) == ["dev-001 configuration v2 rejected: port out of range"]
    pending = snap(a=ROW.__class__(**{**ROW.__dict__, "config": "v3 pending"}))
    assert changes(first, pending) == []  # said when the device answers
    job = snap(a=ROW.__class__(**{**ROW.__dict__, "job_state": ("j-1", "downloading")}))
    assert changes(first, job) == ["dev-001 update j-1: downloading"]
    assert changes(job, job) == []  # percent moves are not events


def test_an_api_outage_is_one_event_each_way() -> None:
    down = Snapshot(ok=False, error="GET /devices answered 503")
    first = snap(a=ROW)
    assert changes(first, down) == ["management API: GET /devices answered 503"]
    assert changes(down, down) == []
    assert changes(down, first)[0] == "management API answers again"


def test_snapshot_reads_the_api_as_an_operator_would() -> None:
    answers = {
        "/devices": (200, [{"id": "dev-001", "online": False}]),
        "/jobs": (200, [{"id": "j-1", "devices": [{"device": "dev-001", "state": "queued"}]}]),
        "/devices/dev-001": (
            200,
            {"health": {"uptime_s": 5.0, "slot": "B", "os_version": "1.2", "load": [0.25]}},
        ),
        "/devices/dev-001/history?limit=1": (200, [{"online": False, "reason": "will"}]),
        "/devices/dev-001/config": (
            200,
            {"version": 4, "reported": {"version": 4, "status": "applied", "error": None}},
        ),
    }
    got = snapshot(lambda path: answers.get(path, (404, None)))
    r = got.rows["dev-001"]
    assert (r.online, r.reason, r.slot, r.version, r.load) == (False, "will", "B", "1.2", 0.25)
    assert (r.config, r.job, r.job_state) == ("v4 applied", "j-1 queued", ("j-1", "queued"))
    assert not snapshot(lambda path: (503, None)).ok


def test_texts() -> None:
    assert exit_text(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_text(3) == "exited with status 3"
    assert [age_text(s) for s in (None, 42, 300, 7500, 90000)] == [
        "-",
        "42 s",
        "5 min",
        "2 h 05",
        "1 d 01 h",
    ]
    line = cells(ROW, 7, "killed by SIGKILL")
    assert line[:4] == ["dev-001", "online (agent killed by SIGKILL)", "12 s", "none"]
    assert plain_table([line])[0].startswith("DEVICE")


def test_the_live_view_keeps_the_pinned_lines_and_the_events_on_screen() -> None:
    out = io.StringIO()
    with Screen(["console  https://127.0.0.1:1/console/"], live=True, out=out) as screen:
        screen.table([cells(ROW, 3, None)])
        screen.event("dev-001 online")
    text = out.getvalue()
    assert "console  https://127.0.0.1:1/console/" in text
    assert "dev-001 online" in text and "│ dev-001 │ online │ 12 s │ none" in text
    plain = io.StringIO()
    with Screen(["pinned"], live=False, out=plain) as screen:
        screen.event("dev-001 online")
    assert plain.getvalue().splitlines()[0] == "pinned"
    assert plain.getvalue().splitlines()[1].endswith("  dev-001 online")
