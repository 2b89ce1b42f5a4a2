"""Retention decisions: byte bound (oldest first) and age (with an unset clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twelvefactor_agent.forward.retention import (
    CLOCK_FLOOR,
    Row,
    age_cutoff,
    bytes_to_drop,
    is_expired,
)

NOW = CLOCK_FLOOR + 10 * 86400


def rows(*sizes: int) -> list[Row]:
    return [Row(seq, size, NOW) for seq, size in enumerate(sizes, start=1)]


def test_nothing_dropped_within_the_bound() -> None:
    assert bytes_to_drop(rows(10, 10), 20, 20) == []


def test_drops_oldest_until_it_fits() -> None:
    assert bytes_to_drop(rows(10, 10, 10, 10), 40, 25) == [1, 2]
    assert bytes_to_drop(rows(10, 10, 10, 10), 40, 30) == [1]


def test_one_big_old_row_is_enough() -> None:
    assert bytes_to_drop(rows(100, 1, 1), 102, 50) == [1]


def test_inconsistent_totals_are_an_error() -> None:
    with pytest.raises(ValueError):
        bytes_to_drop(rows(1, 1), 100, 10)


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=50), st.integers(0, 20000))
def test_result_is_the_shortest_oldest_prefix_that_fits(sizes: list[int], max_bytes: int) -> None:
    total = sum(sizes)
    drop = bytes_to_drop(rows(*sizes), total, max_bytes)
    assert drop == list(range(1, len(drop) + 1))
    assert total - sum(sizes[: len(drop)]) <= max_bytes
    if drop:
        assert total - sum(sizes[: len(drop) - 1]) > max_bytes


def test_age_expiry() -> None:
    assert age_cutoff(NOW, 3600) == NOW - 3600
    assert is_expired(NOW - 3601, NOW, 3600)
    assert not is_expired(NOW - 3600, NOW, 3600)
    assert not is_expired(NOW, NOW, 3600)


def test_messages_stamped_by_an_unset_clock_are_not_expired() -> None:
    assert not is_expired(5.0, NOW, 3600)  # accepted in 1970, clock set since


def test_no_expiry_while_the_clock_is_unset() -> None:
    assert age_cutoff(86400.0, 60) is None
    assert not is_expired(0.0, 86400.0, 60)
