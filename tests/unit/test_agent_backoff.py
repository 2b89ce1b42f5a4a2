"""Reconnect backoff: full jitter, exponential bound, cap, reset."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.util.backoff import Backoff


def upper(lo: float, hi: float) -> float:
    return hi


def test_bound_grows_exponentially_up_to_the_cap() -> None:
    b = Backoff(1.0, 2.0, 300.0, upper)
    delays = [b.next_delay() for _ in range(12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_full_jitter_draws_from_zero_to_the_bound() -> None:
    calls: list[tuple[float, float]] = []

    def record(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return (lo + hi) / 2

    b = Backoff(0.5, 3.0, 10.0, record)
    assert [b.next_delay() for _ in range(4)] == [0.25, 0.75, 2.25, 5.0]
    assert calls == [(0.0, 0.5), (0.0, 1.5), (0.0, 4.5), (0.0, 10.0)]


def test_reset_after_success_starts_again_from_initial() -> None:
    b = Backoff(1.0, 2.0, 300.0, upper)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.next_delay() == 1.0


def test_months_offline_never_overflow() -> None:
    b = Backoff(1.0, 10.0, 300.0, upper)
    assert [b.next_delay() for _ in range(4)] == [1.0, 10.0, 100.0, 300.0]
    assert all(b.next_delay() == 300.0 for _ in range(100_000))
    assert b.attempt == 3  # stops counting at the cap


def test_multiplier_one_is_constant() -> None:
    b = Backoff(2.0, 1.0, 2.0, upper)
    assert {b.next_delay() for _ in range(10)} == {2.0}


@pytest.mark.parametrize(("initial", "multiplier", "cap"), [(0, 2, 1), (1, 0.5, 2), (5, 2, 4)])
def test_nonsense_parameters_are_refused(initial: float, multiplier: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, multiplier, cap, upper)


@given(
    st.floats(0.01, 100),
    st.floats(1.0, 10),
    st.floats(0.01, 1000),
    st.integers(0, 2**32 - 1),
    st.integers(1, 60),
)
def test_delays_stay_within_zero_and_the_capped_bound(
    initial: float, multiplier: float, extra: float, seed: int, attempts: int
) -> None:
    cap = initial + extra
    rng = random.Random(seed)
    b = Backoff(initial, multiplier, cap, rng.uniform)
    for attempt in range(attempts):
        delay = b.next_delay()
        assert 0.0 <= delay <= min(cap, initial * multiplier**attempt) * (1 + 1e-9)


def test_jitter_spreads_a_fleet() -> None:
    rng = random.Random(7)
    delays = [Backoff(1.0, 2.0, 300.0, rng.uniform) for _ in range(200)]
    for b in delays:
        for _ in range(8):
            b.next_delay()
    eighth = [b.next_delay() for b in delays]  # bound 256
    assert min(eighth) < 64 and max(eighth) > 192
