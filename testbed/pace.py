"""How fast this machine runs the cloud side and the host agents, measured in this
run, and every time limit of the host tiers (integration, network) derived from it.

The boot tier learned it first (testbed/boot/pace.py): a limit tuned on one
machine fails on a busier one. The integration tier waited with fixed guesses
(30, 60, 120 s) that were needlessly long on a quiet machine and, on a machine
shared by several runs, not derived from anything. So this tier measures too:
the steps every test takes anyway are timed as they happen (`Stack` times the
broker's start and the services' start; the agent tests time an agent's start
with `timed`), each is
compared with its REFERENCE figure, and a limit is FACTOR x (the work's
reference time x this run's slowdown + any fixed time no machine's speed
changes) + SLACK. The slowest ratio so far counts, as in the boot tier: the
machine may be busier later in the run than at its start. Before the first
step is measured, SLOWEST_SEEN is assumed.

A test names the work it waits for in reference seconds (`PACE.limit(...)`):
a step below (`PACE.steps_of("cli")` for one CLI run: `PACE.run` runs one), a round trip
(ROUND_TRIP, `wait_until`'s default), or a figure of its own measured in the
reference run and written next to it (a rollout over 20 devices, 10,000
messages drained). A protocol's own timer (a keepalive, a confirmation window,
a health interval, a backoff cap, a service's call timeout) stays fixed and
goes in `fixed`.

Reference figures (seconds), on a 2-core machine of the CI kind, measured on
2026-12-03 while other work shared the machine (load average 2.5 on 2 cores):

    broker     Stack.start_broker(): mosquitto with TLS and the plugin, listening
    services   Stack.start_all(): one management + one solution copy, both ready
    agent      HostAgent.start(): a real agent until its local API answers
    online     HostAgent.start() until the registry shows the device online
    cli        one management CLI call (a Python start, one HTTPS request)

Measured with a script that runs the steps in turn in a fresh Stack (the
broker, start_all, a HostAgent until its local API answers and until the
registry says online, one `job list` CLI call), five times over; each figure
is the fastest of the five, the closest this shared machine came to a quiet
one (the slowest were 0.13, 0.83, 0.51, 0.72 and 0.38 s). ROUND_TRIP and the
tests' own figures come from a run of the whole integration tier with every
wait timed (158 tests, 7.9 min, its steps at most x2.8 the figures above):
nearly every wait for a report, an archive line or a registry change ended
within 0.05-0.2 s, so ROUND_TRIP is 0.5 s; the waits that took longer name
their own figure. The slowest ratio seen so far is x2.8; SLOWEST_SEEN leaves
room for a machine twice as busy as that.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# The fastest of five runs of each step (see the docstring), seconds.
REFERENCE: dict[str, float] = {
    "broker": 0.12,
    "services": 0.82,
    "agent": 0.31,
    "online": 0.36,
    "cli": 0.26,
}
# A message through the broker and a service, seen in the registry or the archive
# (a device's report, a configuration applied): what `wait_until` allows by default.
ROUND_TRIP = 0.5
# The slowest ratio seen on a machine of this kind, assumed before the first step is timed.
SLOWEST_SEEN = 6.0
# Headroom over the expected time: a limit is for a step that will not end. Short host
# steps vary more than boots do (a garbage collection, a scheduler's time slice, a
# process start), hence more headroom than the boot tier's 3.
FACTOR = 10.0
# How short a limit may be: one poll of `wait_until` and one scheduler's slice,
# even when the work itself takes nothing.
SLACK = 1.0


class PaceError(ValueError):
    """A step without a reference figure, or a negative time."""


@dataclass
class Pace:
    """Step times of this run, and limits in proportion to them."""

    reference: dict[str, float] = field(default_factory=lambda: dict(REFERENCE))
    steps: list[tuple[str, float]] = field(default_factory=list)
    # every wait that ended in time: (what, seconds taken, its limit)
    waits: list[tuple[str, float, float]] = field(default_factory=list)

    def record(self, step: str, seconds: float) -> None:
        """This run's `seconds` for `step` (one of `reference`)."""
        if step not in self.reference:
            known = ", ".join(sorted(self.reference))
            raise PaceError(f"no reference figure for step {step!r} (known: {known})")
        if seconds < 0:
            raise PaceError(f"step {step!r} took {seconds} s: a time cannot be negative")
        self.steps.append((step, seconds))

    def timed(self, step: str, work: Callable[[], T]) -> T:
        """Run `work`, record how long it took as `step`, return its result."""
        started = time.monotonic()
        result = work()
        self.record(step, time.monotonic() - started)
        return result

    @property
    def ratio(self) -> float:
        """This run's slowest step over its reference (never below 1)."""
        if not self.steps:
            return SLOWEST_SEEN
        return max(1.0, max(s / self.reference[step] for step, s in self.steps))

    def limit(self, reference: float, fixed: float = 0.0) -> float:
        """Seconds to allow for work that took `reference` s on the reference machine,
        plus `fixed` s that no machine's speed changes (a protocol's own timer)."""
        if reference < 0 or fixed < 0:
            raise PaceError(f"a limit needs times of 0 or more, not {reference} and {fixed}")
        return FACTOR * (reference * self.ratio + fixed) + SLACK

    def steps_of(self, step: str, count: float = 1.0) -> float:
        """The limit for `count` times the work of `step` (e.g. 3 CLI calls)."""
        if step not in self.reference:
            known = ", ".join(sorted(self.reference))
            raise PaceError(f"no reference figure for step {step!r} (known: {known})")
        return self.limit(count * self.reference[step])

    def run(
        self,
        argv: Sequence[str],
        *,
        step: str = "cli",
        input: str | bytes | None = None,  # subprocess.run's name
        text: bool = True,
        check: bool = False,
    ) -> subprocess.CompletedProcess[Any]:
        """Run a Python program (``python -m module ...``) whose work is one `step` (one
        CLI call), output captured, within the step's limit. When the limit passes, the
        machine may be busier than when this run's pace was last measured (the other
        sessions' image builds come and go): the module's import alone, in a new
        interpreter, is timed as `step` now, and the call gets the limit at that pace
        before it counts as stuck (subprocess.TimeoutExpired, the process killed)."""
        probe = _import_of(argv)
        started = time.monotonic()
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        with subprocess.Popen(
            list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text
        ) as proc:
            try:
                out, err = proc.communicate(input, timeout=self.steps_of(step))
            except subprocess.TimeoutExpired:
                self.timed(step, lambda: subprocess.run(probe, capture_output=True, check=False))
                rest = self.steps_of(step) - (time.monotonic() - started)
                try:
                    out, err = proc.communicate(timeout=max(rest, 0.0))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def waited(self, what: str, seconds: float, limit: float) -> None:
        """A wait for `what` ended after `seconds` of its `limit`."""
        self.waits.append((what, seconds, limit))

    def summary(self) -> list[str]:
        """Lines for the end of a run: the slowdown, its slowest step, the tightest wait."""
        if not self.steps:
            return [f"no step timed: limits assumed the slowest ratio seen ({SLOWEST_SEEN})"]
        step, seconds = max(self.steps, key=lambda s: s[1] / self.reference[s[0]])
        lines = [
            f"{len(self.steps)} steps timed, slowdown x{self.ratio:.1f} "
            f"(slowest: {step} {seconds:.2f} s against {self.reference[step]:.2f} s)"
        ]
        if self.waits:
            what, took, limit = max(self.waits, key=lambda w: w[1] / w[2])
            lines.append(
                f"{len(self.waits)} waits; the tightest: {what}, {took:.1f} s of {limit:.1f} s"
            )
        return lines


def _import_of(argv: Sequence[str]) -> list[str]:
    """What a call of ``python -m module ...`` costs before its work: the import."""
    if len(argv) < 3 or argv[1] != "-m":
        raise PaceError(f"not a `python -m module` call: {list(argv)}")
    return [argv[0], "-c", f"import {argv[2]}"]


PACE = Pace()
