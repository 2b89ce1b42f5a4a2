"""The hub forgets quiet peers (hub/stale.py): which, and when."""

from __future__ import annotations

import pytest
from twelvefactor_services.hub.service import HubError, check_stale_after
from twelvefactor_services.hub.stale import StaleTracker, parse_dump

DUMP = (
    "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n"
    "A=\t(none)\t192.0.2.10:51820\t10.99.0.2/32,fd00:99::2/128\t1795690000\t4096\t8192\t25\n"
    "B=\t(none)\t(none)\t10.99.0.3/32\t0\t0\t0\toff\n"
)


def test_dump_gives_received_bytes_per_peer() -> None:
    assert parse_dump(DUMP) == {"A=": 4096, "B=": 0}
    assert parse_dump(DUMP.splitlines()[0]) == {}
    with pytest.raises(ValueError, match="unexpected line"):
        parse_dump(DUMP + "C=\tbroken\n")


def test_a_peer_is_forgotten_after_going_quiet_and_then_left_alone() -> None:
    t = StaleTracker(after=60)
    assert t.observe({"A": 100}, 0) == []
    assert t.observe({"A": 100}, 59) == []
    assert t.observe({"A": 100}, 60) == ["A"]
    # added again: its counter starts at zero and it has nothing to forget
    assert t.observe({"A": 0}, 61) == []
    assert t.observe({"A": 0}, 1000) == []
    # it is heard again, then goes quiet again
    assert t.observe({"A": 148}, 1001) == []
    assert t.observe({"A": 148}, 1060) == []
    assert t.observe({"A": 148}, 1061) == ["A"]


def test_traffic_keeps_a_peer_and_new_peers_start_their_own_clock() -> None:
    t = StaleTracker(after=60)
    for second in range(0, 600, 25):  # a persistent keepalive every 25 s
        assert t.observe({"A": 1000 + second}, second) == []
    assert t.observe({"A": 2000, "B": 50}, 600) == []
    assert t.observe({"A": 2001, "B": 50}, 659) == []
    assert t.observe({"A": 2002, "B": 50}, 660) == ["B"]
    # a removed peer is dropped from the tracker
    assert t.observe({"A": 2003}, 700) == []
    assert t.observe({"A": 2003, "B": 50}, 701) == []


def test_a_peer_that_never_sent_anything_is_never_forgotten() -> None:
    t = StaleTracker(after=30)
    assert t.observe({"A": 0}, 0) == []
    assert t.observe({"A": 0}, 10_000) == []


def test_quiet_time_is_checked() -> None:
    with pytest.raises(ValueError):
        StaleTracker(after=0)
    check_stale_after(30)
    check_stale_after(120)
    for bad in (29.9, 0, -1, 86401):
        with pytest.raises(HubError, match="stale_after"):
            check_stale_after(bad)
