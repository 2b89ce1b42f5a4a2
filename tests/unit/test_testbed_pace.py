"""The host tiers' pace (testbed/pace.py): the slowdown is the slowest step's over its
reference, a limit scales the work's reference time by it and keeps fixed timers fixed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


def _module(tmp_path: Path, name: str, body: str) -> list[str]:
    (tmp_path / f"{name}.py").write_text(body)
    return [sys.executable, "-m", name]


def test_a_call_past_its_limit_on_a_machine_now_slower_gets_the_limit_at_the_new_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import costs 1.5 s here (a machine busier than the pace measured so far): past
    the call's first limit (about 1 s), the import timed alone sets the new pace."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    argv = _module(tmp_path, "slow_start", "import time\ntime.sleep(1.5)\nprint('done')\n")
    pace = Pace(reference={"cli": 0.001})
    pace.record("cli", 0.001)  # x1: the first limit is FACTOR * 0.001 + SLACK
    done = pace.run(argv)
    assert (done.returncode, done.stdout) == (0, "done\n")
    assert pace.ratio > 1000  # the probe, 1.5 s against 0.001 s, was recorded
    assert pace.steps[-1][0] == "cli" and pace.steps[-1][1] >= 1.5


def test_a_call_stuck_in_its_work_on_a_machine_as_fast_as_before_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    body = "import time\nif __name__ == '__main__':\n    time.sleep(60)\n"
    argv = _module(tmp_path, "stuck_work", body)
    pace = Pace(reference={"cli": 0.5})
    pace.record("cli", 0.5)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        pace.run(argv)
    assert time.monotonic() - started < 30  # killed at the limit, not after its sleep
    assert len(pace.steps) == 2 and pace.ratio < 2  # the probe was quick: no new pace


def test_input_check_and_bytes_are_passed_as_subprocess_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    argv = _module(
        tmp_path, "echo_fail", "import sys\nsys.stdout.write(sys.stdin.read())\nsys.exit(3)\n"
    )
    pace = Pace(reference={"cli": 0.5})
    pace.record("cli", 0.5)
    done = pace.run(argv, input=b"abc", text=False)
    assert (done.returncode, done.stdout) == (3, b"abc")
    with pytest.raises(subprocess.CalledProcessError):
        pace.run(argv, input="x", check=True)
    with pytest.raises(PaceError, match="python -m module"):
        pace.run(["ls"])
