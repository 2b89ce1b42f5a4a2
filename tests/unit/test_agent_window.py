"""The forward window: order, in-flight bound, PUBACK and disconnect handling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.forward.window import ForwardWindow


def test_fills_up_to_its_size_in_seq_order() -> None:
    w = ForwardWindow(size=3)
    assert w.room() == 3
    for mid, seq in enumerate([5, 6, 9], start=1):
        w.sent(seq, mid)
    assert w.room() == 0 and w.cursor == 9
    with pytest.raises(ValueError, match="full"):
        w.sent(10, 4)


def test_out_of_order_publish_is_refused() -> None:
    w = ForwardWindow(size=3)
    w.sent(5, 1)
    with pytest.raises(ValueError, match="out of order"):
        w.sent(5, 2)
    with pytest.raises(ValueError, match="out of order"):
        w.sent(4, 2)


def test_duplicate_mid_is_refused() -> None:
    w = ForwardWindow(size=3)
    w.sent(1, 7)
    with pytest.raises(ValueError, match="already in flight"):
        w.sent(2, 7)


def test_puback_settles_its_seq_and_frees_a_slot() -> None:
    w = ForwardWindow(size=2)
    w.sent(1, 10)
    w.sent(2, 11)
    assert w.acked(11) == 2
    assert w.room() == 1
    assert w.cursor == 2  # the next read continues after 2, not after the acked one
    assert w.acked(11) is None  # a second PUBACK for the same mid settles nothing
    assert w.acked(99) is None


def test_disconnect_returns_in_flight_to_pending_and_rewinds() -> None:
    w = ForwardWindow(size=4)
    for mid, seq in [(1, 3), (2, 4), (3, 5)]:
        w.sent(seq, mid)
    w.acked(2)
    assert w.reset() == [3, 5]
    assert (w.room(), w.cursor) == (4, 0)
    w.sent(3, 1)  # the same seq may go out again on the new connection


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ForwardWindow(size=0)


@given(st.lists(st.sampled_from(["send", "ack-first", "ack-last", "reset"]), max_size=200))
def test_invariants_under_any_event_sequence(events: list[str]) -> None:
    """Never more than `size` in flight; seqs out per connection strictly increase;
    every seq is acknowledged at most once per connection."""
    w = ForwardWindow(size=5)
    next_seq, next_mid = 1, 1
    pending = list(range(1, 1000))
    sent_this_connection: list[int] = []
    acked: set[int] = set()
    for event in events:
        if event == "send" and w.room() > 0:
            seq = next(s for s in pending if s > w.cursor and s not in acked)
            w.sent(seq, next_mid)
            sent_this_connection.append(seq)
            next_mid += 1
        elif event.startswith("ack") and w.in_flight:
            mids = sorted(w.in_flight)
            mid = mids[0] if event == "ack-first" else mids[-1]
            seq = w.acked(mid)
            assert seq is not None and seq not in acked
            acked.add(seq)
        elif event == "reset":
            back = w.reset()
            assert not set(back) & acked
            sent_this_connection = []
        assert 0 <= len(w.in_flight) <= w.size
        assert sent_this_connection == sorted(set(sent_this_connection))
    del next_seq
