"""Apply, confirm and revert the managed configuration: a state machine without I/O.

The management service publishes the desired configuration, retained, on
`mgmt/<id>/down/config` as `{"v":1,"version":N,"config":{...}}`. For each
version the machine decides one of:

- **rejected**: not a valid document, or the overlay does not validate on top
  of the device's file; the configuration in force stays;
- **applied** at once: nothing that decides connectivity changed (same
  settings, or only the queue's bounds);
- **trial**: endpoints, keepalive, health interval or backoff changed. The
  sessions restart on the new configuration, which is saved as the *trial*
  beside the one in force. If the management session (and the solution
  session, when its endpoint moved) connects within `agent.confirm_window`
  seconds the trial becomes the configuration in force (**applied**);
  otherwise the sessions restart on the previous one (**reverted**).

Everything the machine needs after a restart is in `Stored`, written
atomically (Save action) before the action that depends on it. A trial found
in `Stored` at start means the agent stopped (crash, power cut, watchdog)
inside the window: the previous configuration, the only one known to reach
the management service, is used and the trial is reported as reverted. The
version is not tried again (a configuration that crashes the agent must not
crash it for ever); a new version is. Any version not newer than the last
one handled is ignored, so the retained copy that every reconnect brings
changes nothing.

Every method takes `now` (monotonic seconds) and returns the actions for the
I/O layer to carry out, in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from twelvefactor_agent.config.overlay import Overlay, check_shape, effective, needs_confirmation
from twelvefactor_agent.config.settings import Config, ConfigError
from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.states import (
    APPLIED,
    CONFIG_STATUSES,
    CONFIG_VERSION_MAX,
    REJECTED,
    REVERTED,
)

MAX_DOCUMENT = 64 * 1024
MAX_VERSION = CONFIG_VERSION_MAX
STATUSES = CONFIG_STATUSES
# Error texts are bounded: a report is one MQTT message.
MAX_ERROR = 2000


class Version(NamedTuple):
    """One version of the managed overlay."""

    version: int
    config: Overlay

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "config": self.config}


class Report(NamedTuple):
    version: int
    status: str  # applied | rejected | reverted
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"v": 1, "version": self.version, "status": self.status, "error": self.error}


class Stored(NamedTuple):
    """What survives a restart (the I/O layer keeps it in one file, replaced atomically)."""

    in_force: Version | None = None
    trial: Version | None = None
    report: Report | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "in_force": None if self.in_force is None else self.in_force.as_json(),
            "trial": None if self.trial is None else self.trial.as_json(),
            "report": None if self.report is None else self.report.as_json(),
        }

    @staticmethod
    def from_json(doc: object) -> Stored:
        """The stored state from its JSON form; ValueError if it is not one."""
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("not a managed-configuration state (v 1)")
        return Stored(
            in_force=_version_from(doc.get("in_force")),
            trial=_version_from(doc.get("trial")),
            report=_report_from(doc.get("report")),
        )


def _version_from(doc: object) -> Version | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError("version entry is not an object")
    version, config = doc.get("version"), doc.get("config")
    if type(version) is not int or not isinstance(config, dict) or check_shape(config):
        raise ValueError("version entry is malformed")
    return Version(version, config)


def _report_from(doc: object) -> Report | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError("report is not an object")
    version, status, error = doc.get("version"), doc.get("status"), doc.get("error")
    if type(version) is not int or status not in STATUSES:
        raise ValueError("report is malformed")
    if error is not None and not isinstance(error, str):
        raise ValueError("report error is not a string")
    return Report(version, str(status), error)


# Actions


class Save(NamedTuple):
    """Write `stored` atomically (before carrying out what follows it)."""

    stored: Stored


class Restart(NamedTuple):
    """Stop both sessions and start them again on `config`, tagged `generation`."""

    config: Config
    generation: int


class ApplyLive(NamedTuple):
    """Take `config` without touching the sessions (only the queue's bounds changed)."""

    config: Config


class Publish(NamedTuple):
    """Report on `mgmt/<id>/up/config` (retained), now if online, else at the next connect."""

    report: Report


class Ignore(NamedTuple):
    """Nothing to do; log why."""

    reason: str


Action = Save | Restart | ApplyLive | Publish | Ignore


class DesiredError(ValueError):
    def __init__(self, reason: str, version: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version = version


def parse_desired(raw: bytes) -> Version:
    """The desired document to a Version, or DesiredError (with the version if one was readable).

    The version is read before the schema version, so that a refusal can name it.
    The overlay's shape and values are checked later, against the device's file."""
    try:
        doc = envelope.decode(raw, max_bytes=MAX_DOCUMENT)
    except envelope.ProtocolError as exc:
        raise DesiredError(str(exc)[:MAX_ERROR], None) from None
    if not isinstance(doc, dict):
        raise DesiredError("not a JSON object", None)
    version = doc.get("version")
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise DesiredError(f"version must be an integer in 1..2^53, got {version!r}"[:200], None)
    try:
        envelope.check_version(doc)
    except envelope.ProtocolError as exc:
        raise DesiredError(str(exc), version) from None
    config = doc.get("config")
    if not isinstance(config, dict):
        raise DesiredError("config must be an object (a table of tables)", version)
    return Version(version, config)


class _Trial:
    __slots__ = ("config", "deadline", "previous", "version", "waiting")

    def __init__(
        self, version: Version, config: Config, previous: Config, deadline: float, waiting: set[str]
    ) -> None:
        self.version = version
        self.config = config
        self.previous = previous
        self.deadline = deadline
        self.waiting = waiting


class ConfigMachine:
    def __init__(self, base: Mapping[str, Any], stored: Stored, window: float) -> None:
        self.base = base
        self.window = window
        self.stored = stored
        self.generation = 0
        self._trial: _Trial | None = None
        self._deferred: tuple[bytes, float] | None = None
        self.config = effective(base, {})  # replaced by start()

    # -- state ------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The version in force (None: only the device's file)."""
        return None if self.stored.in_force is None else self.stored.in_force.version

    @property
    def in_trial(self) -> bool:
        return self._trial is not None

    def _last_handled(self) -> int:
        versions = [0]
        for entry in (self.stored.in_force, self.stored.trial, self.stored.report):
            if entry is not None:
                versions.append(entry.version)
        return max(versions)

    def next_wakeup(self) -> float | None:
        return None if self._trial is None else self._trial.deadline

    def status(self) -> dict[str, Any]:
        """For the local API's status answer."""
        report = self.stored.report
        return {
            "version": self.version,
            "trial": None if self._trial is None else self._trial.version.version,
            "last_report": None if report is None else report.as_json(),
        }

    # -- events -----------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Decide the configuration to start on; the first actions (Save before Restart)."""
        actions: list[Action] = []
        stored = self.stored
        if stored.trial is not None:
            # Stopped inside the confirmation window: back to the known-good one.
            report = Report(
                stored.trial.version,
                REVERTED,
                "the agent restarted during the confirmation window; "
                "the previous configuration is in force",
            )
            stored = Stored(stored.in_force, None, report)
            actions += [Save(stored), Publish(report)]
        if stored.in_force is not None:
            try:
                self.config = effective(self.base, stored.in_force.config)
            except ConfigError as exc:
                # The device's file changed under it (re-provisioned): the file wins.
                report = Report(stored.in_force.version, REJECTED, _error(exc))
                stored = Stored(None, None, report)
                actions += [Save(stored), Publish(report)]
                self.config = effective(self.base, {})
        else:
            self.config = effective(self.base, {})
        self.stored = stored
        return [*actions, Restart(self.config, self.generation)]

    def desired(self, raw: bytes, now: float) -> list[Action]:
        """A desired-configuration message (retained copies included)."""
        if not raw:
            return [Ignore("desired configuration cleared; the one in force stays")]
        if self._trial is not None:
            # Only the newest waits; it is looked at once the trial ends.
            self._deferred = (raw, now)
            return [Ignore("a configuration is under trial; the new one waits for its outcome")]
        try:
            wanted = parse_desired(raw)
        except DesiredError as exc:
            if exc.version is None or exc.version <= self._last_handled():
                return [Ignore(f"desired configuration dropped: {exc.reason}")]
            return self._reject(exc.version, f"config: {exc.reason}")
        if wanted.version <= self._last_handled():
            return [Ignore(f"version {wanted.version} already handled")]
        try:
            new = effective(self.base, wanted.config)
        except ConfigError as exc:
            return self._reject(wanted.version, _error(exc))
        sessions = needs_confirmation(self.config, new)
        if not sessions:
            report = Report(wanted.version, APPLIED)
            self.stored = Stored(wanted, None, report)
            live = [] if new == self.config else [ApplyLive(new)]
            self.config = new
            return [Save(self.stored), *live, Publish(report)]
        self.generation += 1
        self._trial = _Trial(wanted, new, self.config, now + self.window, set(sessions))
        self.stored = Stored(self.stored.in_force, wanted, self.stored.report)
        self.config = new
        return [Save(self.stored), Restart(new, self.generation)]

    def session_up(self, session: str, generation: int, now: float) -> list[Action]:
        """A session connected (CONNACK success) in the given generation."""
        trial = self._trial
        if trial is None or generation != self.generation:
            return []
        trial.waiting.discard(session)
        if trial.waiting:
            return []
        self._trial = None
        report = Report(trial.version.version, APPLIED)
        self.stored = Stored(trial.version, None, report)
        return [Save(self.stored), Publish(report), *self._resume(now)]

    def poll(self, now: float) -> list[Action]:
        trial = self._trial
        if trial is None or now < trial.deadline:
            return []
        self._trial = None
        missing = " and ".join(sorted(trial.waiting))
        report = Report(
            trial.version.version,
            REVERTED,
            f"{missing} not reached within {self.window:g} s on version "
            f"{trial.version.version}; the previous configuration is in force",
        )
        self.stored = Stored(self.stored.in_force, None, report)
        self.config = trial.previous
        self.generation += 1
        return [
            Save(self.stored),
            Restart(trial.previous, self.generation),
            Publish(report),
            *self._resume(now),
        ]

    def _reject(self, version: int, error: str) -> list[Action]:
        report = Report(version, REJECTED, error[:MAX_ERROR])
        self.stored = Stored(self.stored.in_force, None, report)
        return [Save(self.stored), Publish(report)]

    def _resume(self, now: float) -> list[Action]:
        deferred, self._deferred = self._deferred, None
        return [] if deferred is None else self.desired(deferred[0], now)


def _error(exc: ConfigError) -> str:
    return "; ".join(exc.problems)[:MAX_ERROR]
