"""The managed configuration: overlay checks and the apply/confirm/revert state machine."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from helpers import MINIMAL_AGENT_CONFIG
from twelvefactor_agent.config import overlay
from twelvefactor_agent.config.reconfig import (
    ApplyLive,
    ConfigMachine,
    Ignore,
    Publish,
    Report,
    Restart,
    Save,
    Stored,
    Version,
    parse_desired,
)
from twelvefactor_agent.config.settings import ConfigError

BASE: dict[str, Any] = tomllib.loads(MINIMAL_AGENT_CONFIG + "[agent]\nkeepalive = 30\n")
WINDOW = 60.0


def doc(version: int, config: dict[str, Any], v: int = 1) -> bytes:
    return json.dumps({"v": v, "version": version, "config": config}).encode()


def started(stored: Stored | None = None) -> ConfigMachine:
    m = ConfigMachine(BASE, stored or Stored(), WINDOW)
    actions = m.start(0.0)
    assert isinstance(actions[-1], Restart)
    return m


def typed(actions: list[Any]) -> list[tuple[type, Any]]:
    """Actions with their types: the records are NamedTuples, and two of different
    types with equal fields compare equal as plain tuples."""
    return [(type(a), a) for a in actions]


def reports(actions: list[Any]) -> list[Report]:
    return [a.report for a in actions if isinstance(a, Publish)]


# -- overlay -------------------------------------------------------------------


def test_overlay_refuses_a_third_endpoint_and_provisioned_keys() -> None:
    problems = overlay.check_shape(
        {
            "weather": {"host": "1.2.3.4"},
            "device": {"id": "other"},
            "agent": {"data_dir": "/tmp", "socket": "/tmp/s", "confirm_window": 5},
            "queue": {"colour": 1},
            "backoff": 3,
            "update": {"allow_downgrade": True},
        }
    )
    assert any("weather: only two endpoints exist" in p for p in problems)
    assert "config: device: set by provisioning, not managed remotely" in problems
    assert "config: agent.data_dir: set by provisioning, not managed remotely" in problems
    assert "config: agent.socket: set by provisioning, not managed remotely" in problems
    assert "config: agent.confirm_window: set by provisioning, not managed remotely" in problems
    assert "config: update: set by provisioning, not managed remotely" in problems
    assert "config: queue.colour: unknown key" in problems
    assert "config: backoff: expected a table, got integer" in problems
    assert overlay.check_shape([1]) == ["config: expected a table of tables, got array"]


def test_overlay_values_go_through_the_file_validator() -> None:
    with pytest.raises(ConfigError) as info:
        overlay.effective(BASE, {"agent": {"keepalive": 1}, "management": {"port": "x"}})
    assert "config: agent.keepalive: 1 is out of range [5, 3600]" in info.value.problems
    assert "config: management.port: expected an integer, got string" in info.value.problems
    new = overlay.effective(BASE, {"management": {"port": 9000}})
    assert new.management.port == 9000 and new.management.host == "10.77.0.1"
    assert BASE["management"] == {"host": "10.77.0.1"}, "the base is not changed"


def test_which_changes_need_confirmation() -> None:
    old = overlay.effective(BASE, {})
    assert overlay.needs_confirmation(old, old) == frozenset()
    queue_only = overlay.effective(BASE, {"queue": {"max_bytes": 1 << 20}})
    assert overlay.needs_confirmation(old, queue_only) == frozenset()
    for change in (
        {"management": {"port": 1}},
        {"agent": {"keepalive": 10}},
        {"agent": {"health_interval": 10}},
        {"backoff": {"cap": 10.0}},
    ):
        assert overlay.needs_confirmation(old, overlay.effective(BASE, change)) == {"management"}
    moved = overlay.effective(BASE, {"solution": {"host": "10.77.0.2"}})
    assert overlay.needs_confirmation(old, moved) == {"management", "solution"}


# -- parsing the desired document ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason", "version"),
    [
        (b"\xff", "not UTF-8", None),
        (b"[1]", "not a JSON object", None),
        (b'{"v":1,"config":{}}', "version must be an integer", None),
        (b'{"v":1,"version":true,"config":{}}', "version must be an integer", None),
        (b'{"v":1,"version":0,"config":{}}', "version must be an integer", None),
        (b'{"v":2,"version":3,"config":{}}', "unsupported schema version", 3),
        (b'{"v":1,"version":3,"config":[]}', "config must be an object", 3),
        (b'{"v":1,"version":3,"config":{"agent":{"keepalive":NaN}}}', "not a JSON", None),
    ],
)
def test_bad_desired_documents(raw: bytes, reason: str, version: int | None) -> None:
    from twelvefactor_agent.config.reconfig import DesiredError

    with pytest.raises(DesiredError) as info:
        parse_desired(raw)
    assert reason in info.value.reason
    assert info.value.version == version


# -- the machine ---------------------------------------------------------------


def test_starts_on_the_file_alone() -> None:
    m = ConfigMachine(BASE, Stored(), WINDOW)
    assert typed(m.start(0.0)) == typed([Restart(overlay.effective(BASE, {}), 0)])
    assert m.version is None and m.next_wakeup() is None


def test_queue_change_applies_at_once() -> None:
    m = started()
    actions = m.desired(doc(1, {"queue": {"max_bytes": 1 << 20}}), 1.0)
    new = overlay.effective(BASE, {"queue": {"max_bytes": 1 << 20}})
    assert typed(actions) == typed(
        [
            Save(Stored(Version(1, {"queue": {"max_bytes": 1 << 20}}), None, Report(1, "applied"))),
            ApplyLive(new),
            Publish(Report(1, "applied")),
        ]
    )
    assert m.config == new and m.version == 1


def test_same_settings_under_a_new_version_are_applied_without_restart() -> None:
    m = started()
    actions = m.desired(doc(4, {"agent": {"keepalive": 30}}), 1.0)
    assert [type(a) for a in actions] == [Save, Publish]
    assert m.version == 4


def test_invalid_configuration_is_rejected_and_the_old_one_stays() -> None:
    m = started()
    m.desired(doc(1, {"queue": {"max_bytes": 1 << 20}}), 1.0)
    before = m.config
    actions = m.desired(doc(2, {"agent": {"keepalive": "soon"}}), 2.0)
    (report,) = reports(actions)
    assert report.status == "rejected" and report.version == 2
    assert report.error == "config: agent.keepalive: expected an integer, got string"
    assert m.config == before and m.version == 1
    assert isinstance(actions[0], Save) and actions[0].stored.in_force == Version(
        1, {"queue": {"max_bytes": 1 << 20}}
    )
    # The retained copy arriving again at the next connect changes nothing.
    assert [type(a) for a in m.desired(doc(2, {"agent": {"keepalive": "soon"}}), 3.0)] == [Ignore]


def test_third_endpoint_is_rejected() -> None:
    m = started()
    (report,) = reports(m.desired(doc(1, {"weather": {"host": "1.2.3.4", "port": 443}}), 1.0))
    assert report.status == "rejected"
    assert report.error is not None and "a third endpoint is not allowed" in report.error


def test_bad_schema_version_is_reported_when_the_version_is_readable() -> None:
    m = started()
    (report,) = reports(m.desired(doc(5, {}, v=2), 1.0))
    assert report == Report(5, "rejected", "config: unsupported schema version v=2")
    assert [type(a) for a in m.desired(b"not json", 2.0)] == [Ignore]
    assert [type(a) for a in m.desired(b"", 2.0)] == [Ignore]


def test_connectivity_change_is_confirmed_when_management_connects() -> None:
    m = started()
    actions = m.desired(doc(1, {"management": {"port": 9000}}), 10.0)
    new = overlay.effective(BASE, {"management": {"port": 9000}})
    assert typed(actions) == typed(
        [
            Save(Stored(None, Version(1, {"management": {"port": 9000}}), None)),
            Restart(new, 1),
        ]
    )
    assert m.in_trial and m.next_wakeup() == 10.0 + WINDOW
    assert m.session_up("management", 0, 11.0) == [], "an old generation does not count"
    assert m.session_up("solution", 1, 11.0) == [], "the solution side did not move"
    actions = m.session_up("management", 1, 12.0)
    assert typed(actions) == typed(
        [
            Save(Stored(Version(1, {"management": {"port": 9000}}), None, Report(1, "applied"))),
            Publish(Report(1, "applied")),
        ]
    )
    assert not m.in_trial and m.version == 1 and m.poll(1000.0) == []


def test_solution_move_needs_both_sessions() -> None:
    m = started()
    m.desired(doc(1, {"solution": {"host": "10.77.0.2"}}), 0.0)
    assert m.session_up("management", 1, 1.0) == []
    assert reports(m.session_up("solution", 1, 2.0)) == [Report(1, "applied")]


def test_unreachable_configuration_is_reverted_after_the_window() -> None:
    m = started()
    before = m.config
    m.desired(doc(1, {"management": {"host": "10.99.0.1"}}), 10.0)
    assert m.poll(10.0 + WINDOW - 0.01) == []
    actions = m.poll(10.0 + WINDOW)
    report = Report(
        1,
        "reverted",
        "management not reached within 60 s on version 1; the previous configuration is in force",
    )
    assert typed(actions) == typed(
        [Save(Stored(None, None, report)), Restart(before, 2), Publish(report)]
    )
    assert m.config == before and not m.in_trial and m.version is None
    # A late CONNACK of the abandoned generation changes nothing.
    assert m.session_up("management", 1, 100.0) == []
    # The retained desired copy arriving after the reconnect is not tried again...
    assert [type(a) for a in m.desired(doc(1, {"management": {"host": "10.99.0.1"}}), 101.0)] == [
        Ignore
    ]
    # ...but a new version is.
    assert isinstance(m.desired(doc(2, {"management": {"port": 9000}}), 102.0)[-1], Restart)


def test_a_document_arriving_during_a_trial_waits_for_its_outcome() -> None:
    m = started()
    m.desired(doc(1, {"management": {"port": 9000}}), 0.0)
    # Each version is a whole overlay, not a patch: version 2 keeps the port.
    later = {"management": {"port": 9000}, "queue": {"max_age": 120}}
    assert [type(a) for a in m.desired(doc(2, later), 1.0)] == [Ignore]
    actions = m.session_up("management", 1, 2.0)
    assert reports(actions) == [Report(1, "applied"), Report(2, "applied")]
    assert m.config.queue.max_age == 120 and m.config.management.port == 9000


def test_restart_inside_the_window_falls_back_to_the_previous_configuration() -> None:
    good = Version(1, {"agent": {"keepalive": 20}})
    stored = Stored(good, Version(2, {"management": {"host": "10.99.0.1"}}), Report(1, "applied"))
    m = ConfigMachine(BASE, stored, WINDOW)
    actions = m.start(0.0)
    assert isinstance(actions[0], Save) and actions[0].stored.trial is None
    (report,) = reports(actions)
    assert report.version == 2 and report.status == "reverted"
    assert "restarted during the confirmation window" in (report.error or "")
    assert actions[-1] == Restart(overlay.effective(BASE, good.config), 0)
    assert m.version == 1
    assert [type(a) for a in m.desired(doc(2, {"management": {"host": "x"}}), 1.0)] == [Ignore]


def test_stored_overlay_that_no_longer_fits_the_file_is_dropped() -> None:
    stored = Stored(Version(3, {"agent": {"keepalive": 1}}), None, Report(3, "applied"))
    m = ConfigMachine(BASE, stored, WINDOW)
    actions = m.start(0.0)
    (report,) = reports(actions)
    assert report.status == "rejected" and m.version is None
    assert m.config == overlay.effective(BASE, {})


def test_stored_state_round_trips_through_json() -> None:
    stored = Stored(
        Version(1, {"agent": {"keepalive": 20}}),
        Version(2, {"management": {"port": 1}}),
        Report(2, "rejected", "why"),
    )
    assert Stored.from_json(json.loads(json.dumps(stored.as_json()))) == stored
    assert Stored.from_json(Stored().as_json()) == Stored()
    for bad in ([], {"v": 2}, {"v": 1, "in_force": {"version": "1", "config": {}}}):
        with pytest.raises(ValueError):
            Stored.from_json(bad)
