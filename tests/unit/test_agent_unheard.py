"""Health reports the broker had no subscriber for: kept, probed with backoff, sent again."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from twelvefactor_agent.session.unheard import Unheard, nobody_heard
from twelvefactor_agent.util.backoff import Backoff


def upper(lo: float, hi: float) -> float:
    return hi


def unheard(limit: int = 4) -> Unheard:
    return Unheard(Backoff(1.0, 2.0, 8.0, upper), limit)


def test_no_matching_subscribers_is_told_apart_from_success_and_refusals() -> None:
    assert nobody_heard(ReasonCode(PacketTypes.PUBACK, "No matching subscribers"))
    assert not nobody_heard(ReasonCode(PacketTypes.PUBACK, "Success"))
    assert not nobody_heard(ReasonCode(PacketTypes.PUBACK, "Not authorized"))


def test_the_oldest_is_probed_after_the_backoff_and_the_rest_follow_once_heard() -> None:
    u = unheard()
    u.refused(b"r1", 100.0)
    u.refused(b"r2", 100.5)
    assert u.retry_at == 101.0  # the first report set the timer; the second did not move it
    assert u.due(100.9) is None
    assert u.due(101.0) == b"r1"
    assert u.retry_at is None and len(u) == 1
    assert u.due(200.0) is None  # one probe at a time
    assert u.heard() == [b"r2"]
    assert len(u) == 0 and u.retry_at is None


def test_an_unheard_probe_goes_back_first_and_the_delay_grows_to_the_cap() -> None:
    u = unheard(limit=10)
    u.refused(b"r1", 0.0)
    now = 0.0
    delays = []
    for i in range(5):
        assert u.retry_at is not None
        delays.append(u.retry_at - now)
        now = u.retry_at
        probe = u.due(now)
        assert probe == b"r1"  # always the oldest
        u.refused(f"n{i}".encode(), now)  # a newer report, refused while the probe is out
        u.refused(probe, now, probe=True)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert u.heard() == [b"r1", b"n0", b"n1", b"n2", b"n3", b"n4"]  # in the order first sent


def test_a_heard_report_resets_the_backoff() -> None:
    u = unheard()
    for t in range(4):
        u.refused(b"r", float(t))
        probe = u.due(u.retry_at or 0.0)
        assert probe is not None
        u.refused(probe, float(t), probe=True)
    assert u.heard()
    u.refused(b"x", 50.0)
    assert u.retry_at == 51.0


def test_the_newest_are_kept_and_the_pushed_out_are_counted() -> None:
    u = unheard(limit=3)
    for i in range(5):
        u.refused(f"r{i}".encode(), float(i))
    assert u.dropped == 2
    assert u.heard() == [b"r2", b"r3", b"r4"]


def test_a_probe_lost_with_its_connection_lets_the_next_connection_probe_at_once() -> None:
    u = unheard()
    u.refused(b"r1", 0.0)
    u.refused(b"r2", 0.0)
    assert u.due(1.0) == b"r1"
    u.lost()  # its PUBACK never came: the broker may have delivered it
    assert u.retry_at == 0.0
    assert u.due(5.0) == b"r2"


def test_nothing_kept_means_nothing_due() -> None:
    u = unheard()
    assert u.due(1e9) is None
    u.lost()
    assert u.retry_at is None


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        unheard(limit=0)
