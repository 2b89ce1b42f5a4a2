"""Desired configuration on the management side: overlays, groups, versions, reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from twelvefactor_services.management import registry
from twelvefactor_services.management.configlogic import (
    OverlayError,
    check_overlay,
    desired_document,
    effective,
)
from twelvefactor_services.management.logic import ConfigReport, PayloadError, parse_report
from twelvefactor_services.management.store import Db


def test_effective_is_group_then_device_table_by_table() -> None:
    group = {"agent": {"keepalive": 20, "health_interval": 30}, "queue": {"max_age": 600}}
    device = {"agent": {"keepalive": 10}}
    assert effective(group, device) == {
        "agent": {"keepalive": 10, "health_interval": 30},
        "queue": {"max_age": 600},
    }
    assert effective(None, None) == {}
    assert group["agent"]["keepalive"] == 20, "inputs are not changed"


def test_overlay_shape_uses_the_agents_rules() -> None:
    with pytest.raises(OverlayError) as info:
        check_overlay({"endpoints": {"x": 1}, "device": {"id": "x"}})
    assert any("a third endpoint is not allowed" in p for p in info.value.problems)
    assert "config: device: set by provisioning, not managed remotely" in info.value.problems
    with pytest.raises(OverlayError):
        check_overlay({"agent": {"keepalive": float("nan")}})
    assert check_overlay({"agent": {"keepalive": 1}}) == {"agent": {"keepalive": 1}}


def test_desired_document_is_the_protocol_payload() -> None:
    assert desired_document(3, {"agent": {"keepalive": 9}}) == (
        b'{"config":{"agent":{"keepalive":9}},"v":1,"version":3}'
    )


def test_config_reports() -> None:
    assert parse_report("d", "config", b'{"v":1,"version":4,"status":"applied"}') == (
        ConfigReport(4, "applied", None)
    )
    for bad in (
        b'{"v":1,"version":0,"status":"applied"}',
        b'{"v":1,"version":4,"status":"fine"}',
        b'{"v":1,"version":4,"status":"rejected","error":5}',
        b'{"v":1,"version":true,"status":"applied"}',
    ):
        with pytest.raises(PayloadError):
            parse_report("d", "config", bad)


def test_versions_only_go_up_and_follow_every_change(tmp_path: Path) -> None:
    reg = registry.Registry(Db(tmp_path / "r.db"))
    assert reg.set_device_config("dev-a", {"agent": {"keepalive": 10}}, 1.0) == 1
    assert reg.set_device_config("dev-a", {"agent": {"keepalive": 10}}, 2.0) == 1, "no change"
    assert reg.set_group_config("g", {"queue": {"max_age": 600}}, 3.0) == {}
    assert reg.add_members("g", ["dev-a", "dev-b"], 4.0) == {"dev-a": 2, "dev-b": 1}
    assert reg.set_group_config("g", {"queue": {"max_age": 700}}, 5.0) == {"dev-a": 3, "dev-b": 2}
    assert reg.set_group_config("h", {}, 6.0) == {}
    assert reg.add_members("h", ["dev-a"], 7.0) == {"dev-a": 4}, "moved out of g"
    assert reg.remove_members("g", ["dev-a"], 8.0) == {}, "no longer in g"
    with pytest.raises(KeyError):
        reg.add_members("nope", ["dev-a"], 9.0)
    assert [d for d, _, _ in reg.unpublished()] == ["dev-a", "dev-b"]
    reg.mark_published("dev-a", 4)
    assert [d for d, _, _ in reg.unpublished()] == ["dev-b"]
    # Reports: the newest wins; an older one arriving late changes nothing.
    reg.apply("dev-a", ConfigReport(4, "applied", None), 10.0)
    reg.apply("dev-a", ConfigReport(3, "rejected", "late"), 11.0)
    shown = registry.device_config(reg.db, "dev-a")
    assert shown is not None
    assert shown["reported"]["version"] == 4 and shown["group"] == "h"
    # A device that reports a version this registry never set (it was reset):
    # the next version set starts above it, so the device does not ignore it.
    reg.apply("dev-x", ConfigReport(41, "applied", None), 12.0)
    assert reg.set_device_config("dev-x", {"agent": {"keepalive": 10}}, 13.0) == 42
    reg.db.close()


def test_a_report_that_overtakes_the_publish_acknowledgement_counts(tmp_path: Path) -> None:
    """The device can apply a version and report it before the service has recorded
    the broker's acknowledgement of the publish: that report is the device's answer."""
    reg = registry.Registry(Db(tmp_path / "r.db"))
    reg.set_device_config("dev-a", {"agent": {"keepalive": 10}}, 1.0)
    reg.mark_published("dev-a", 1)
    assert reg.set_device_config("dev-a", {"agent": {"keepalive": 20}}, 2.0) == 2
    reg.apply("dev-a", ConfigReport(2, "applied", None), 3.0)  # before mark_published(2)
    reg.mark_published("dev-a", 2)
    shown = registry.device_config(reg.db, "dev-a")
    assert shown is not None and shown["reported"]["version"] == 2
    reg.apply("dev-a", ConfigReport(3, "applied", None), 4.0)  # never set: a lie
    shown = registry.device_config(reg.db, "dev-a")
    assert shown is not None and shown["reported"]["version"] == 2
    reg.db.close()


def test_a_device_cannot_freeze_its_groups_configuration(tmp_path: Path) -> None:
    """Issue 19, finding 2: a reported version of 2^63-1 made the next recomputation
    overflow SQLite, and every change to the device's group failed from then on."""
    reg = registry.Registry(Db(tmp_path / "registry.db"))
    reg.set_group_config("field", {"agent": {"keepalive": 10}}, 1.0)
    reg.add_members("field", ["dev-1", "dev-2"], 1.0)
    versions = reg.set_group_config("field", {"agent": {"keepalive": 20}}, 2.0)
    for device, version in versions.items():
        reg.mark_published(device, version)
    huge = b'{"v":1,"version":9223372036854775807,"status":"applied"}'
    with pytest.raises(PayloadError, match=r"'version' is not an integer in 1\.\.9007199254740992"):
        parse_report("dev-1", "config", huge)
    # Within the protocol's range but above what was published to it: ignored.
    lie = versions["dev-1"] + 1000
    reg.apply("dev-1", ConfigReport(lie, "applied", None), 3.0)
    config = registry.device_config(reg.db, "dev-1")
    assert config is not None and config["reported"] is None
    # The group still changes, for every member, one version up.
    again = reg.set_group_config("field", {"agent": {"keepalive": 30}}, 4.0)
    assert again == {d: v + 1 for d, v in versions.items()}
    reg.apply("dev-1", ConfigReport(versions["dev-1"], "applied", None), 5.0)
    config = registry.device_config(reg.db, "dev-1")
    assert config is not None and config["reported"]["version"] == versions["dev-1"]
