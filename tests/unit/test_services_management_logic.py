"""Management decisions without I/O: payload checks and online transitions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twelvefactor_agent.protocol.topics import parse_up
from twelvefactor_services.management import devicelist
from twelvefactor_services.management.logic import (
    ConfigReport,
    HealthReport,
    MetaReport,
    OnlineReport,
    OnlineState,
    PayloadError,
    is_newer,
    online_transition,
    parse_report,
    presence,
)
from twelvefactor_services.topics import share_group, shared


def test_online_payloads_from_the_protocol() -> None:
    assert parse_report("d", "online", b'{"v":1,"online":true,"ts":5}') == OnlineReport(
        True, None, 5.0
    )
    will = parse_report("d", "online", b'{"v":1,"online":false,"reason":"lost"}')
    assert will == OnlineReport(False, "lost", None)
    stop = parse_report("d", "online", b'{"v":1,"online":false,"reason":"shutdown","ts":7.5}')
    assert stop == OnlineReport(False, "shutdown", 7.5)


def test_unknown_fields_are_ignored_and_kept() -> None:
    r = parse_report("dev-1", "health", b'{"v":1,"ts":3,"new_field":{"x":1}}')
    assert isinstance(r, HealthReport) and r.body["new_field"] == {"x": 1}
    m = parse_report("dev-1", "meta", b'{"v":1,"ts":3,"device":"dev-1"}')
    assert isinstance(m, MetaReport) and m.device_ts == 3.0


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        ("online", b"\xff", "not UTF-8"),
        ("online", b"{", "not JSON"),
        ("online", b"null", "not a JSON object"),
        ("online", b'"x"', "not a JSON object"),
        ("online", b'{"online":true}', "schema version"),
        ("online", b'{"v":"1","online":true}', "schema version"),
        ("online", b'{"v":true,"online":true}', "schema version"),
        ("online", b'{"v":1}', "'online' is not a boolean"),
        ("online", b'{"v":1,"online":1}', "'online' is not a boolean"),
        ("online", b'{"v":1,"online":true,"reason":5}', "'reason'"),
        ("online", b'{"v":1,"online":true,"ts":"now"}', "'ts'"),
        ("health", b'{"v":1}', "missing field 'ts'"),
        ("health", b'{"v":1,"ts":true}', "'ts'"),
        ("health", b'{"v":1,"ts":NaN}', "NaN is not a JSON number"),
        ("meta", b'{"v":1,"ts":1,"device":"other"}', "came from 'dev-1'"),
        ("config", b'{"v":1,"ts":1}', "'version' is not an integer in 1"),
        ("config", b'{"v":1,"version":2,"status":"done"}', "'status' is not one of"),
        ("job", b'{"v":1,"ts":1}', "unknown management topic"),
    ],
)
def test_bad_payloads_say_what_is_wrong(kind: str, raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_report("dev-1", kind, raw)


def test_online_transitions() -> None:
    never = OnlineState(None, None)
    up = OnlineReport(True, None, 1.0)
    down = OnlineReport(False, "lost", None)
    t = online_transition(never, up, 100.0)
    assert t is not None and t.online is True and t.at == 100.0 and t.device_ts == 1.0
    assert online_transition(OnlineState(True, 100.0), up, 200.0) is None  # retained again
    t = online_transition(OnlineState(True, 100.0), down, 200.0)
    assert t is not None and (t.online, t.reason, t.at) == (False, "lost", 200.0)
    assert online_transition(OnlineState(False, 200.0), down, 300.0) is None
    first_offline = online_transition(never, down, 5.0)
    assert first_offline is not None and first_offline.online is False


def test_latest_by_device_time_wins() -> None:
    assert is_newer(None, 1.0)
    assert is_newer(1.0, 1.0)
    assert not is_newer(2.0, 1.0)


def test_topics() -> None:
    up = parse_up("mgmt/dev-1/up/health")
    assert up is not None and (up.side, up.device, up.rest) == ("mgmt", "dev-1", ("health",))
    sol = parse_up("sol/dev-1/up/data/temp")
    assert sol is not None and sol.rest == ("data", "temp")
    for bad in ("mgmt/dev-1/down/x", "mgmt//up/x", "other/dev/up/x", "mgmt/dev/up", "$SYS/x"):
        assert parse_up(bad) is None
    assert shared("g", "mgmt/+/up/#") == "$share/g/mgmt/+/up/#"


def test_share_group_is_secret_and_stable(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"private key bytes")
    g = share_group("management", key)
    assert g == share_group("management", key) and g.startswith("management-")
    assert len(g) == len("management-") + 32
    assert share_group("solution", key) != g.replace("management", "solution")
    key.write_bytes(b"another key")
    assert share_group("management", key) != g


def test_a_nul_in_free_text_is_kept_as_a_replacement_character() -> None:
    """PostgreSQL's text cannot hold NUL; the report is kept, its text marked."""
    online = parse_report("dev-1", "online", b'{"v":1,"online":false,"reason":"a\\u0000b"}')
    assert isinstance(online, OnlineReport) and online.reason == "a\ufffdb"
    raw = b'{"v":1,"version":2,"status":"rejected","error":"bad \\u0000"}'
    config = parse_report("dev-1", "config", raw)
    assert isinstance(config, ConfigReport) and config.error == "bad \ufffd"


@settings(max_examples=300)
@given(
    st.none() | st.booleans(),
    st.none() | st.floats(0, 4e9),
    st.floats(0, 4e9),
    st.sampled_from([0.0, 120.0, 3600.0]),
)
def test_the_presence_the_device_list_filters_on_in_sql_is_logic_presence(
    online: bool | None, due: float | None, now: float, overdue_after: float
) -> None:
    """GET /devices filters and counts by presence in SQL (devicelist.PRESENCE_SQL): the same
    rule as logic.presence, written twice, kept equal here (SQLite; the store tests run
    every presence on PostgreSQL too)."""
    conn = sqlite3.connect(":memory:")
    try:
        in_sql = conn.execute(
            f"SELECT {devicelist.PRESENCE_SQL} FROM (SELECT ? AS online, ? AS checkin_due) AS d",
            (overdue_after, now, None if online is None else int(online), due),
        ).fetchone()[0]
    finally:
        conn.close()
    assert in_sql == presence(online, due, now, overdue_after)
