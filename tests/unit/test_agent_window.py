"""The forward window: order, in-flight bound (in messages), PUBACK and disconnect handling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.forward.window import ForwardWindow


def test_fills_up_to_its_size_in_messages_in_seq_order() -> None:
    w = ForwardWindow(size=4)
    assert w.room() == 4
    w.sent((5,), 1)
    w.sent((6, 9), 2)  # a batch of two
    assert w.room() == 1 and w.cursor == 9
    with pytest.raises(ValueError, match="full"):
        w.sent((10, 11), 3)
    w.sent((10,), 3)
    assert w.room() == 0


def test_out_of_order_publish_is_refused() -> None:
    w = ForwardWindow(size=5)
    w.sent((5,), 1)
    with pytest.raises(ValueError, match="out of order"):
        w.sent((5,), 2)
    with pytest.raises(ValueError, match="out of order"):
        w.sent((4,), 2)
    with pytest.raises(ValueError, match="out of order"):
        w.sent((7, 6), 2)  # a batch's own seqs increase too
    with pytest.raises(ValueError, match="at least one"):
        w.sent((), 2)


def test_duplicate_mid_is_refused() -> None:
    w = ForwardWindow(size=3)
    w.sent((1,), 7)
    with pytest.raises(ValueError, match="already in flight"):
        w.sent((2,), 7)


def test_puback_settles_its_seqs_and_frees_their_slots() -> None:
    w = ForwardWindow(size=4)
    w.sent((1,), 10)
    w.sent((2, 3, 4), 11)
    assert w.acked(11) == (2, 3, 4)
    assert w.room() == 3
    assert w.cursor == 4  # the next read continues after 4, not after the acked ones
    assert w.acked(11) is None  # a second PUBACK for the same mid settles nothing
    assert w.acked(99) is None


def test_disconnect_returns_in_flight_to_pending_and_rewinds() -> None:
    w = ForwardWindow(size=6)
    for mid, seqs in [(1, (3,)), (2, (4, 5)), (3, (6, 7))]:
        w.sent(seqs, mid)
    w.acked(2)
    assert w.reset() == [3, 6, 7]
    assert (w.room(), w.cursor) == (6, 0)
    w.sent((3,), 1)  # the same seq may go out again on the new connection


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ForwardWindow(size=0)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(min_value=1, max_value=4)),
            st.tuples(st.sampled_from(["ack-first", "ack-last", "reset"]), st.just(0)),
        ),
        max_size=200,
    )
)
def test_invariants_under_any_event_sequence(events: list[tuple[str, int]]) -> None:
    """Never more than `size` messages in flight; seqs out per connection strictly increase;
    every seq is acknowledged at most once."""
    w = ForwardWindow(size=5)
    next_mid = 1
    sent_this_connection: list[int] = []
    acked: set[int] = set()
    for event, count in events:
        if event == "send" and w.room() > 0:
            fresh = [s for s in range(w.cursor + 1, 2000) if s not in acked]
            seqs = tuple(fresh[: min(count, w.room())])
            w.sent(seqs, next_mid)
            sent_this_connection.extend(seqs)
            next_mid += 1
        elif event.startswith("ack") and w.in_flight:
            mids = sorted(w.in_flight)
            mid = mids[0] if event == "ack-first" else mids[-1]
            seqs = w.acked(mid)
            assert seqs is not None and not set(seqs) & acked
            acked.update(seqs)
        elif event == "reset":
            back = w.reset()
            assert not set(back) & acked
            sent_this_connection = []
        in_flight = [s for seqs in w.in_flight.values() for s in seqs]
        assert len(in_flight) == w.count <= w.size
        assert sent_this_connection == sorted(set(sent_this_connection))
