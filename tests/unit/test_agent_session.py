"""The session state machine: every transition, with a scripted clock and random source."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.session.machine import Action, ClockWatch, Phase, SessionMachine
from twelvefactor_agent.util.backoff import Backoff

A = Action


def machine(now: float = 100.0, connack_timeout: float = 30.0) -> SessionMachine:
    backoff = Backoff(1.0, 2.0, 60.0, lambda lo, hi: hi)  # always the bound
    return SessionMachine(backoff, now, connack_timeout=connack_timeout, farewell_timeout=5.0)


def test_connects_at_once_on_start() -> None:
    m = machine()
    assert m.phase is Phase.DISCONNECTED and m.next_wakeup() == 100.0
    assert m.poll(100.0) == [A.CONNECT]
    assert m.phase is Phase.CONNECTING


def test_successful_connect() -> None:
    m = machine()
    m.poll(100.0)
    assert m.connected(100.5) == [A.UP]
    assert m.online and m.next_wakeup() is None
    assert m.poll(1000.0) == []


def test_failures_back_off_exponentially() -> None:
    m = machine()
    now = 100.0
    delays = []
    for _ in range(8):
        assert m.poll(now) == [A.CONNECT]
        assert m.connect_failed(now) == [A.ABORT]
        assert m.phase is Phase.DISCONNECTED
        wake = m.next_wakeup()
        assert wake is not None
        delays.append(wake - now)
        assert m.poll(wake - 0.001) == []  # not before it is due: no busy loop
        now = wake
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def test_success_resets_the_backoff() -> None:
    m = machine()
    for _ in range(5):
        m.poll(m.next_wakeup() or 0)
        m.connect_failed(0)
    m.poll(m.next_wakeup() or 0)
    m.connected(200.0)
    assert m.lost(300.0) == [A.ABORT, A.DOWN]
    assert m.next_wakeup() == 301.0


def test_missing_connack_times_out() -> None:
    m = machine(connack_timeout=30.0)
    m.poll(100.0)
    assert m.next_wakeup() == 130.0
    assert m.poll(129.0) == []
    assert m.poll(130.0) == [A.ABORT]
    assert m.phase is Phase.DISCONNECTED and m.next_wakeup() == 131.0


def test_loss_while_connecting_is_a_failed_attempt() -> None:
    m = machine()
    m.poll(100.0)
    assert m.lost(101.0) == [A.ABORT]
    assert m.phase is Phase.DISCONNECTED


def test_stop_while_connected_says_goodbye_then_disconnects() -> None:
    m = machine()
    m.poll(100.0)
    m.connected(100.0)
    assert m.stop(200.0) == [A.FAREWELL]
    assert m.phase is Phase.STOPPING and m.next_wakeup() == 205.0
    assert m.farewell_done(201.0) == [A.DISCONNECT, A.DOWN]
    assert m.phase is Phase.STOPPED and m.next_wakeup() is None


def test_stop_gives_up_on_the_farewell_after_the_timeout() -> None:
    m = machine()
    m.poll(100.0)
    m.connected(100.0)
    m.stop(200.0)
    assert m.poll(204.0) == []
    assert m.poll(205.0) == [A.DISCONNECT, A.DOWN]


def test_connection_lost_while_stopping() -> None:
    m = machine()
    m.poll(100.0)
    m.connected(100.0)
    m.stop(200.0)
    assert m.lost(201.0) == [A.ABORT, A.DOWN]
    assert m.phase is Phase.STOPPED


def test_stop_while_offline_just_closes() -> None:
    for setup in ("disconnected", "connecting"):
        m = machine()
        if setup == "connecting":
            m.poll(100.0)
        assert m.stop(100.0) == [A.ABORT]
        assert m.phase is Phase.STOPPED
        assert m.poll(1e9) == [] and m.next_wakeup() is None


def test_stale_events_are_ignored() -> None:
    m = machine()
    assert m.connected(100.0) == []  # CONNACK without a CONNECT
    assert m.connect_failed(100.0) == []
    assert m.lost(100.0) == []
    assert m.farewell_done(100.0) == []
    m.poll(100.0)
    m.connected(100.0)
    assert m.connected(101.0) == []
    assert m.stop(102.0) == [A.FAREWELL]
    assert m.stop(103.0) == []


EVENTS = st.sampled_from(["poll", "failed", "connected", "lost", "stop", "farewell_done"])


@given(st.lists(st.tuples(EVENTS, st.floats(0, 100)), max_size=100))
def test_up_and_down_alternate_and_connect_follows_only_a_due_wakeup(
    events: list[tuple[str, float]],
) -> None:
    m = machine(now=0.0)
    now = 0.0
    up = False
    for name, dt in events:
        now += dt
        due = m.next_wakeup()
        actions: list[Action] = getattr(m, "connect_failed" if name == "failed" else name)(now)
        for action in actions:
            if action is A.UP:
                assert not up
                up = True
            elif action is A.DOWN:
                assert up
                up = False
            elif action is A.CONNECT:
                assert due is not None and now >= due
        assert up == (m.phase in (Phase.CONNECTED, Phase.STOPPING))


def test_clock_set_while_waiting_retries_at_once_with_a_fresh_backoff() -> None:
    m = machine()
    now = 100.0
    for _ in range(6):  # TLS refused: "certificate is not yet valid"
        m.poll(now)
        m.connect_failed(now)
        now = m.next_wakeup() or now
    m.poll(now)
    m.connect_failed(now)
    assert m.last_delay == 60.0 and m.next_wakeup() == now + 60.0
    assert m.clock_set(now + 1) == []
    assert m.next_wakeup() == now + 1 and m.last_delay is None
    assert m.poll(now + 1) == [A.CONNECT]
    assert m.connect_failed(now + 1) == [A.ABORT]
    assert m.last_delay == 1.0  # the backoff starts again


def test_clock_set_changes_nothing_unless_waiting() -> None:
    m = machine()
    m.poll(100.0)
    assert m.clock_set(101.0) == [] and m.phase is Phase.CONNECTING
    m.connected(102.0)
    assert m.clock_set(103.0) == [] and m.online and m.next_wakeup() is None


def test_clock_watch_sees_steps_not_slewing() -> None:
    w = ClockWatch(wall=1000.0, mono=50.0)
    assert w.step(1001.0, 51.0) == 0.0  # both clocks ran
    assert w.step(1002.0005, 52.0) == 0.0  # NTP slewing: half a millisecond
    assert w.step(1_800_000_000.0, 53.0) == 1_800_000_000.0 - 1003.0005  # set from 1970-ish
    assert w.step(1_800_000_001.0, 54.0) == 0.0
    assert w.step(1_799_999_000.0, 55.0) == -1002.0  # set back
