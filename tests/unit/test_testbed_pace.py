"""The host tiers' pace (testbed/pace.py): the slowdown is the slowest step's over its
reference, a limit scales the work's reference time by it and keeps fixed timers fixed."""

from __future__ import annotations

import pytest

from testbed.pace import FACTOR, REFERENCE, SLACK, SLOWEST_SEEN, Pace, PaceError

pytestmark = pytest.mark.unit


def test_before_any_step_the_slowest_machine_seen_is_assumed() -> None:
    pace = Pace()
    assert pace.ratio == SLOWEST_SEEN
    assert pace.limit(2.0) == FACTOR * 2.0 * SLOWEST_SEEN + SLACK
    assert pace.summary()[0].startswith("no step timed")


def test_the_slowest_step_over_its_reference_sets_the_ratio() -> None:
    pace = Pace(reference={"broker": 0.5, "cli": 2.0})
    pace.record("broker", 1.0)  # x2
    pace.record("cli", 8.0)  # x4
    pace.record("broker", 0.25)  # faster than the reference: the slowest still counts
    assert pace.ratio == 4.0
    assert pace.limit(1.5) == FACTOR * 1.5 * 4.0 + SLACK
    assert pace.steps_of("cli", 3) == FACTOR * 3 * 2.0 * 4.0 + SLACK
    assert "slowdown x4.0" in pace.summary()[0] and "cli 8.00 s" in pace.summary()[0]


def test_a_faster_machine_never_shortens_a_limit_below_the_reference() -> None:
    pace = Pace(reference={"broker": 1.0})
    pace.record("broker", 0.1)
    assert pace.ratio == 1.0
    assert pace.limit(1.0) == FACTOR + SLACK


def test_a_fixed_timer_is_not_scaled_by_the_slowdown() -> None:
    slow, quick = Pace(reference={"cli": 1.0}), Pace(reference={"cli": 1.0})
    slow.record("cli", 3.0)
    quick.record("cli", 1.0)
    # the same 25 s protocol timer: only the work around it grows with the slowdown
    assert slow.limit(1.0, fixed=25.0) - quick.limit(1.0, fixed=25.0) == FACTOR * 2.0
    assert quick.limit(0.0, fixed=25.0) == FACTOR * 25.0 + SLACK


def test_timed_records_the_step_and_returns_the_work_s_result() -> None:
    pace = Pace()
    assert pace.timed("cli", lambda: 42) == 42
    [(step, seconds)] = pace.steps
    assert step == "cli" and 0 <= seconds < REFERENCE["cli"] * SLOWEST_SEEN


def test_the_tightest_wait_is_reported() -> None:
    pace = Pace(reference={"cli": 1.0})
    pace.record("cli", 1.0)
    pace.waited("a", 1.0, 10.0)
    pace.waited("b", 6.0, 8.0)
    assert pace.summary()[1] == "2 waits; the tightest: b, 6.0 s of 8.0 s"


def test_bad_input_is_refused_with_the_reason() -> None:
    pace = Pace()
    with pytest.raises(PaceError, match="no reference figure for step 'boot' \\(known: "):
        pace.record("boot", 1.0)
    with pytest.raises(PaceError, match="cannot be negative"):
        pace.record("cli", -1.0)
    with pytest.raises(PaceError, match="times of 0 or more"):
        pace.limit(-1.0)
    with pytest.raises(PaceError, match="no reference figure"):
        pace.steps_of("nothing")
