"""Health is sent when it is news (issue 18, item 3): the pure rule, and the session's use of it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from twelvefactor_agent.config import settings
from twelvefactor_agent.session.healthchange import changed

pytestmark = pytest.mark.unit

QUEUE_MAX = 16 * 1024 * 1024


def sample() -> dict[str, Any]:
    return {
        "v": 1,
        "ts": 1000.0,
        "uptime_s": 500.0,
        "load": [0.2, 0.1, 0.05],
        "memory": {"total_kb": 1_000_000, "available_kb": 640_000},
        "data": {"path": "/data/agent", "total_bytes": 1_000_000_000, "free_bytes": 900_000_000},
        "slot": "a",
        "os_version": "1.0.0",
        "agent_version": "0.1.0",
        "queue": {"depth": 0, "bytes": 0, "dropped": 0, "oldest_ts": None, "fault": None},
        "last_error": None,
    }


def with_(path: str, value: object) -> dict[str, Any]:
    s = sample()
    *parents, leaf = path.split(".")
    node = s
    for p in parents:
        node = node[p]
    node[leaf] = value
    return s


def test_the_first_sample_is_always_news() -> None:
    assert changed(None, sample(), QUEUE_MAX)


def test_time_uptime_and_small_drifts_are_not_news() -> None:
    before = sample()
    after = copy.deepcopy(before)
    after.update(ts=1060.0, uptime_s=560.0, load=[0.9, 0.3, 0.1])
    after["memory"]["available_kb"] = 610_000  # -3 % of the total
    after["data"]["free_bytes"] = 880_000_000  # -2 %
    after["queue"].update(depth=3, bytes=900, oldest_ts=1059.0)  # data passing through
    assert not changed(before, after, QUEUE_MAX)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("slot", "b"),
        ("os_version", "1.0.1"),
        ("agent_version", "0.2.0"),
        ("last_error", "2026-12-03T10:00:00Z solution: connection lost"),
        ("queue.dropped", 1),
        ("queue.fault", "disk full"),
        ("queue.bytes", QUEUE_MAX // 5),  # a backlog: a fifth of the bound
        ("data.free_bytes", 840_000_000),  # -6 %: a step of 5 % crossed
        ("memory.available_kb", 520_000),  # -12 %
        ("load", [3.5, 1.0, 0.5]),  # a busy device
    ],
)
def test_what_an_operator_acts_on_is_news(path: str, value: object) -> None:
    assert changed(sample(), with_(path, value), QUEUE_MAX)


def test_figures_a_device_cannot_read_compare_as_unknown_not_as_errors() -> None:
    odd = with_("data", {"path": "/data/agent", "total_bytes": None, "free_bytes": None})
    odd["load"] = None
    odd["memory"] = {"total_kb": None, "available_kb": None}
    assert changed(sample(), odd, QUEUE_MAX)
    assert not changed(odd, copy.deepcopy(odd), QUEUE_MAX)


def test_the_heartbeat_is_a_setting_no_shorter_than_the_sampling() -> None:
    doc = {
        "device": {"id": "dev-1", "certificate": "/c", "key": "/k", "ca": "/a"},
        "management": {"host": "10.77.0.1"},
        "solution": {"host": "10.77.0.1"},
    }
    config = settings.validate(doc)
    assert (config.agent.health_interval, config.agent.health_heartbeat) == (60, 1800)
    assert config.agent.keepalive == 1800
    with pytest.raises(settings.ConfigError) as err:
        settings.validate({**doc, "agent": {"health_interval": 600, "health_heartbeat": 300}})
    assert err.value.problems == [
        "config: agent.health_heartbeat: 300 is shorter than agent.health_interval (600)"
    ]


class Recorder:
    """Stands in for paho's client: what the session publishes, nothing else."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        self.sent.append((topic, payload))
        return type("Info", (), {"mid": len(self.sent)})()


def test_the_session_sends_health_on_news_and_on_the_heartbeat_only() -> None:
    from twelvefactor_agent.session.management import ManagementSession
    from twelvefactor_agent.session.mqtt import LastError

    config = settings.validate(
        {
            "device": {"id": "dev-1", "certificate": "/c", "key": "/k", "ca": "/a"},
            "management": {"host": "10.77.0.1"},
            "solution": {"host": "10.77.0.1"},
            "agent": {"health_interval": 60, "health_heartbeat": 600},
        }
    )
    session = ManagementSession(config, None, lambda name, up: None, LastError())  # type: ignore[arg-type]
    now = {"health": sample()}
    session.health_fields = lambda: copy.deepcopy(now["health"])  # type: ignore[method-assign]
    client = Recorder()
    session.client = client  # type: ignore[assignment]
    session._publish_health(client)  # type: ignore[arg-type]  # the session came up
    t0 = session._next_health
    assert t0 is not None and len(client.sent) == 1
    for minute in range(1, 10):  # nothing new for nine minutes: nothing sent
        now["health"]["uptime_s"] = 500.0 + 60 * minute
        assert session.after_io(t0 + 60 * (minute - 1)) is not None
    assert len(client.sent) == 1
    now["health"]["slot"] = "b"  # news: sent at the next sample
    session.after_io(session._next_health)  # type: ignore[arg-type]
    assert len(client.sent) == 2 and b'"slot":"b"' in client.sent[-1][1]
    sent_at = session._next_health - 60  # type: ignore[operator]
    for minute in range(1, 10):  # samples, no news, the heartbeat not yet due
        session.after_io(sent_at + 60 * minute)
    assert len(client.sent) == 2
    session.after_io(sent_at + 600.0)  # the tenth sample: the heartbeat
    assert len(client.sent) == 3
    assert all(topic == "mgmt/dev-1/up/health" for topic, _ in client.sent)


def test_metadata_is_sent_again_until_the_broker_has_acknowledged_it() -> None:
    """A metered check-in skips unchanged metadata; a copy lost with its connection is not
    counted as sent."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode
    from twelvefactor_agent.session.management import ManagementSession
    from twelvefactor_agent.session.mqtt import LastError

    config = settings.validate(
        {
            "device": {"id": "dev-meta", "certificate": "/c", "key": "/k", "ca": "/a"},
            "management": {"host": "10.77.0.1"},
            "solution": {"host": "10.77.0.1"},
        }
    )
    session = ManagementSession(config, None, lambda name, up: None, LastError())  # type: ignore[arg-type]
    stamp = iter(range(100))
    session.meta = lambda: b'{"v":1,"ts":%d,"slot":"a"}' % next(stamp)  # type: ignore[method-assign]
    session.health_fields = sample  # type: ignore[method-assign]

    def connect() -> list[str]:
        client = Recorder()
        session.client = client  # type: ignore[assignment]
        session.on_up(client)  # type: ignore[arg-type]
        return [topic for topic, _ in client.sent]

    assert "mgmt/dev-meta/up/meta" in connect()
    session.on_down()  # lost before its PUBACK
    assert "mgmt/dev-meta/up/meta" in connect()
    meta_mid = 2  # online, meta, health: the Recorder numbers them from 1
    session.on_publish(meta_mid, ReasonCode(PacketTypes.PUBACK, "Success"))
    session.on_down()
    assert "mgmt/dev-meta/up/meta" not in connect()  # unchanged and acknowledged
    session.meta = lambda: b'{"v":1,"ts":9,"slot":"b"}'  # type: ignore[method-assign]
    assert "mgmt/dev-meta/up/meta" in connect()  # changed
