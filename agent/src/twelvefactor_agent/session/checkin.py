"""When a metered device checks in and when it goes back to sleep (pure; issue 18).

With `link.profile = "metered"` the agent's two sessions run only during a
check-in; between check-ins they are closed and nothing goes out. A check-in
starts at boot, every `link.checkin_interval` seconds after the last one
ended, early when the queue holds `link.early_bytes` or its oldest message is
`link.early_age` old, or when an application asks (the local API's
`checkin`). It ends as soon as it has done its work (settled: both sessions
up, the management service has acknowledged the greeting, which comes after
the retained configuration and update job, the queue is empty, no
configuration trial or update is under way), and at the latest after
`link.checkin_max` seconds. A check-in that ended unsettled (no link) is
tried again sooner: after min(interval, 10 x checkin_max).

No I/O and no clock: every method takes `now` (monotonic seconds).
"""

from __future__ import annotations

from typing import NamedTuple

from twelvefactor_agent.config.settings import LinkSettings


class Wake(NamedTuple):
    reason: str  # boot, scheduled, queue size, queue age, asked


class Sleep(NamedTuple):
    due: float  # the next scheduled check-in (monotonic)
    settled: bool  # False: ended at checkin_max with its work not done


class Progress(NamedTuple):
    sessions_up: bool
    greeted: bool
    queue_bytes: int
    oldest_age: float | None  # seconds, of the oldest queued message; None: empty
    busy: bool  # a configuration trial, an update job, or an update message or report in flight


Step = Wake | Sleep


class CheckinMachine:
    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.awake = False
        self.since = 0.0  # when the current check-in started
        self.due: float | None = None  # asleep: the next scheduled check-in
        self.early_after = 0.0  # early triggers wait until then (after an unsettled one)

    def start(self, now: float) -> list[Step]:
        return self._wake(now, "boot")

    def request(self, now: float) -> list[Step]:
        """An application asked for a check-in now."""
        return [] if self.awake else self._wake(now, "asked")

    def poll(self, now: float, p: Progress) -> list[Step]:
        s = self.settings
        if not self.awake:
            assert self.due is not None
            if now >= self.due:
                return self._wake(now, "scheduled")
            if now >= self.early_after:
                if s.early_bytes and p.queue_bytes >= s.early_bytes:
                    return self._wake(now, "queue size")
                if p.oldest_age is not None and p.oldest_age >= s.early_age:
                    return self._wake(now, "queue age")
            return []
        settled = p.sessions_up and p.greeted and p.queue_bytes == 0 and not p.busy
        if not settled and now - self.since < s.checkin_max:
            return []
        self.awake = False
        if settled:
            self.due = now + s.checkin_interval
            self.early_after = now
        else:
            retry = min(s.checkin_interval, 10 * s.checkin_max)
            self.due = now + retry
            self.early_after = self.due
        return [Sleep(self.due, settled)]

    def next_wakeup(self) -> float | None:
        """When `poll` must run at the latest (the queue triggers need polling anyway)."""
        if self.awake:
            return self.since + self.settings.checkin_max
        return self.due

    def _wake(self, now: float, reason: str) -> list[Step]:
        self.awake = True
        self.since = now
        self.due = None
        return [Wake(reason)]
