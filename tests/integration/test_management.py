"""Management service with fake devices: real paho clients with device certificates."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_services.management.cli import main as management_cli

from testbed.pace import PACE, ROUND_TRIP
from testbed.postgres import Postgres
from testbed.probe import Probe
from testbed.stack import ServiceProcess, Stack, http_get, http_send, wait_until

MakeProbe = Callable[..., Probe]
WILL = b'{"v":1,"online":false,"reason":"lost"}'


def meta(device: str, ts: float) -> dict[str, Any]:
    return {
        "v": 1,
        "ts": ts,
        "device": device,
        "agent_version": "0.1.0",
        "os": {"id": "twelvefactor", "version": "1.0", "pretty": "twelvefactor 1.0"},
        "kernel": "6.12.0",
        "machine": "x86_64",
        "hardware": "qemux86-64 1.0",
        "slot": "A",
        "boot": {"slot": "A", "bootcount": 1, "upgrade_available": False},
    }


def health(ts: float, uptime: float = 10.0) -> dict[str, Any]:
    return {
        "v": 1,
        "ts": ts,
        "uptime_s": uptime,
        "load": [0.1, 0.05, 0.0],
        "memory": {"total_kb": 1000000, "available_kb": 800000},
        "data": {"path": "/data", "total_bytes": 10**9, "free_bytes": 9 * 10**8},
        "slot": "A",
        "os_version": "1.0",
        "agent_version": "0.1.0",
        "queue": {"depth": 0, "bytes": 0, "dropped": 0, "oldest_ts": None},
        "last_error": None,
    }


def fake_device(stack: Stack, probes: MakeProbe, device: str, keepalive: int = 30) -> Probe:
    """Connects as the agent does: persistent session, retained will, online + meta."""
    dev = probes(
        stack.management_endpoint,
        stack.device(device),
        f"{device}-mgmt",
        clean_start=False,
        session_expiry=7 * 86400,
        keepalive=keepalive,
        will=(f"mgmt/{device}/up/online", WILL, True),
    )
    dev.publish(
        f"mgmt/{device}/up/online", {"v": 1, "online": True, "ts": time.time()}, retain=True
    )
    dev.publish(f"mgmt/{device}/up/meta", meta(device, time.time()), retain=True)
    return dev


def device_state(svc: ServiceProcess, device: str) -> dict[str, Any] | None:
    status, body = http_get(svc, f"/devices/{device}")
    return body if status == 200 else None


def wait_device(
    svc: ServiceProcess, device: str, cond: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    return wait_until(
        lambda: d if (d := device_state(svc, device)) and cond(d) else None, what=what
    )


def test_device_appears_online_with_meta_and_health(
    stack: Stack, management: ServiceProcess, probes: MakeProbe, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = fake_device(stack, probes, "dev-001")
    ts = time.time()
    dev.publish("mgmt/dev-001/up/health", health(ts))
    d = wait_device(management, "dev-001", lambda d: d["health_ts"] == ts, "health recorded")
    assert d["online"] is True
    assert d["meta"]["agent_version"] == "0.1.0"
    assert d["meta"]["boot"]["slot"] == "A"
    assert d["health"]["queue"]["dropped"] == 0
    status, listing = http_get(management, "/devices")
    assert status == 200 and [x["id"] for x in listing] == ["dev-001"]
    assert listing[0]["online"] is True
    status, hist = http_get(management, "/devices/dev-001/history")
    assert status == 200 and [h["online"] for h in hist] == [True]
    assert http_get(management, "/devices/nope")[0] == 404
    assert http_get(management, "/elsewhere")[0] == 404
    status, h = http_get(management, "/healthz")
    assert status == 200 and h["ok"] is True and h["mqtt"] == "connected"
    # The CLI reads the same registry.
    api = stack.api_options(management)
    assert management_cli(["devices", *api]) == 0
    out = capsys.readouterr().out
    assert "dev-001" in out and "online" in out
    assert management_cli(["device", "dev-001", "--json", *api]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["device"] == "dev-001"
    assert management_cli(["device", "dev-001", *api]) == 0
    shown = capsys.readouterr().out
    assert "device     dev-001\nstate      online since 20" in shown
    assert "hardware   -; tags -\nenrolled   -" in shown  # made before enrolment existed
    assert management_cli(["device", "dev-404", *api]) == 1
    assert "no device 'dev-404'" in capsys.readouterr().err


def test_last_will_marks_a_device_offline_when_its_socket_dies(
    stack: Stack, management: ServiceProcess, probes: MakeProbe
) -> None:
    dev = fake_device(stack, probes, "dev-002", keepalive=5)
    wait_device(management, "dev-002", lambda d: d["online"] is True, "online")
    dev.kill()
    d = wait_device(management, "dev-002", lambda d: d["online"] is False, "offline by will")
    _, hist = http_get(management, "/devices/dev-002/history")
    assert [(h["online"], h["reason"]) for h in hist] == [(True, None), (False, "lost")]
    assert d["last_online_change"] == hist[-1]["ts"]
    # Pages: the newest first page, then back by id; a bad query says what is wrong.
    _, page = http_get(management, "/devices/dev-002/history?limit=1")
    assert page == hist[-1:]
    _, page = http_get(management, f"/devices/dev-002/history?before={hist[-1]['id']}")
    assert page == hist[:-1]
    status, body = http_get(management, "/devices/dev-002/history?limit=0")
    assert status == 400 and body["problems"] == ["limit must be an integer in 1..1000"]
    # Back again: the same session, online again.
    fake_device(stack, probes, "dev-002")
    wait_device(management, "dev-002", lambda d: d["online"] is True, "online again")


def test_retained_state_reaches_a_service_started_later(stack: Stack, probes: MakeProbe) -> None:
    dev = fake_device(stack, probes, "dev-003")
    dev.disconnect()  # no clean "offline" message: the retained online/meta stay
    svc = stack.management()
    svc.start()
    d = wait_device(svc, "dev-003", lambda d: d["meta"] is not None, "retained meta")
    assert d["online"] is True and d["meta"]["device"] == "dev-003"


def test_malformed_payloads_are_dropped_and_change_nothing(
    stack: Stack, management: ServiceProcess, probes: MakeProbe
) -> None:
    dev = fake_device(stack, probes, "dev-004")
    good = time.time()
    dev.publish("mgmt/dev-004/up/health", health(good))
    before = wait_device(management, "dev-004", lambda d: d["health_ts"] == good, "health")
    bad: list[tuple[str, bytes | dict[str, Any]]] = [
        ("online", b"\xff\xfe not utf-8"),
        ("online", b"{not json"),
        ("online", b"[1, 2]"),
        ("online", {"v": 2, "online": False}),
        ("online", {"online": False}),
        ("online", {"v": 1, "online": "no"}),
        ("online", {"v": True, "online": False}),
        ("health", {"v": 1, "uptime_s": 1}),
        ("health", {"v": 1, "ts": "yesterday"}),
        ("health", {"v": 1, "ts": float("inf")}),
        ("meta", {"v": 1, "ts": good + 99, "device": "dev-999"}),
        ("meta", b""),
        ("health", {"v": 1, "ts": good + 99, "pad": "x" * 20_000}),  # over 16 KiB
    ]
    # Topics outside the protocol never reach the service: the broker's ACL names
    # each topic a device may write (test_broker_acl.py), so these are not logged here.
    off_protocol: list[tuple[str, bytes | dict[str, Any]]] = [
        ("reboot", {"v": 1, "ts": good + 99}),
        ("health/extra", {"v": 1, "ts": good + 99}),
    ]
    for kind, payload in [*bad, *off_protocol]:
        dev.publish(f"mgmt/dev-004/up/{kind}", payload)
    marker = good + 1
    dev.publish("mgmt/dev-004/up/health", health(marker, uptime=11.0))
    after = wait_device(management, "dev-004", lambda d: d["health_ts"] == marker, "marker")
    assert management.running
    assert after["online"] is True and after["meta"] == before["meta"]
    assert after["health"]["uptime_s"] == 11.0
    assert len(http_get(management, "/devices/dev-004/history")[1]) == 1
    log = management.log_file.read_text()
    assert log.count("dropped") >= len(bad)
    assert "meta names device 'dev-999'" in log
    assert re.search(
        r"dropped 'health' from dev-004: message of 2\d{4} bytes is larger than 16384", log
    )


def test_two_copies_share_the_load_and_the_registry(stack: Stack, probes: MakeProbe) -> None:
    copies = [stack.management(), stack.management()]
    for c in copies:
        c.start()
    devices = [f"dev-{i:03d}" for i in range(10, 14)]
    last: dict[str, float] = {}
    for device in devices:
        dev = fake_device(stack, probes, device)
        for i in range(10):
            last[device] = time.time() + i
            dev.publish(f"mgmt/{device}/up/health", health(last[device]))
    for device in devices:
        wait_device(copies[0], device, lambda d, dv=device: d["health_ts"] == last[dv], device)

    def counts() -> list[int] | None:
        got = []
        for c in copies:
            got.append(http_get(c, "/healthz")[1]["handled"])
        return got if sum(got) >= len(devices) * 12 else None

    handled = wait_until(counts, what="all messages handled")
    assert sum(handled) == len(devices) * 12  # online + meta + 10 health each, exactly once
    assert all(n > 0 for n in handled), handled


def test_an_api_copy_takes_no_reports_and_serves_and_publishes_what_the_others_record(
    stack: Stack, probes: MakeProbe
) -> None:
    """An API copy (--no-consume) beside a copy that consumes: every report is taken by the
    other, the API copy shows what it recorded, and, the consuming copy stopped, a
    configuration set through the API copy still reaches the device: it publishes (a burst
    of reports never delays an operator's call: the bench runs its API probe against such
    a copy, docs/scale.md)."""
    consumer, api_copy = stack.management(), stack.management(consume=False)
    consumer.start(PACE.steps_of("services"))
    api_copy.start(PACE.steps_of("services"))
    status, said = http_get(api_copy, "/healthz")
    assert status == 200 and said["ok"] and said["consumes"] is False, said
    dev = fake_device(stack, probes, "dev-030")
    ts = time.time()
    for i in range(5):
        dev.publish("mgmt/dev-030/up/health", health(ts + i))
    wait_device(api_copy, "dev-030", lambda d: d["health_ts"] == ts + 4, "dev-030's last health")
    assert http_get(api_copy, "/healthz")[1]["handled"] == 0
    assert http_get(consumer, "/healthz")[1]["handled"] == 7  # online, meta, 5 health

    consumer.stop()  # what goes out now, the API copy published
    dev.subscribe("mgmt/dev-030/down/config")
    status, _ = http_send(api_copy, "PUT", "/devices/dev-030/config", {"agent": {"keepalive": 12}})
    assert status == 200
    got = dev.wait_for(
        lambda m: m.topic == "mgmt/dev-030/down/config" and bool(m.payload),
        PACE.limit(ROUND_TRIP),
    )
    assert got.json()["config"]["agent"] == {"keepalive": 12}, got.json()
    assert http_get(api_copy, "/healthz")[1]["handled"] == 0


def test_device_text_cannot_forge_a_log_line_and_nan_is_refused(
    stack: Stack, management: ServiceProcess, probes: MakeProbe
) -> None:
    """Issue 19, finding 13: a newline in a device's text wrote a line of its own in the
    service's log, and NaN in a health report broke the API's JSON."""
    dev = fake_device(stack, probes, "dev-005")
    forged = "2026-01-01 00:00:00 INFO twelvefactor.management: dev-999 is online"
    dev.publish(
        "mgmt/dev-005/up/config",
        {"v": 1, "version": 1, "status": "rejected", "error": f"bad\n{forged}"},
    )
    dev.publish(
        "mgmt/dev-005/up/online",
        {"v": 1, "online": False, "reason": f"x\n{forged}", "ts": time.time()},
        retain=True,
    )
    dev.publish("mgmt/dev-005/up/health", b'{"v":1,"ts":NaN,"uptime_s":1}')
    marker = time.time()
    dev.publish("mgmt/dev-005/up/health", health(marker))
    wait_device(management, "dev-005", lambda d: d["health_ts"] == marker, "marker")
    wait_until(lambda: "configuration version 1 rejected" in management.log_file.read_text())
    log = management.log_file.read_text()
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert forged in log  # it is there, quoted, inside the line that names the device
    assert "dropped 'health' from dev-005: not JSON: NaN is not a JSON number" in log
    status, body = http_get(management, "/devices/dev-005")
    assert status == 200 and body["health_ts"] == marker


def test_a_device_that_says_it_sleeps_is_asleep_until_its_check_in_then_overdue(
    stack: Stack, management: ServiceProcess, probes: MakeProbe, capsys: pytest.CaptureFixture[str]
) -> None:
    """The metered profile's goodbye (issue 18): retained, then a clean DISCONNECT (no will)."""
    api = stack.api_options(management)
    for device, back_in in (("dev-s1", 4 * 3600.0), ("dev-s2", -600.0)):
        dev = fake_device(stack, probes, device)
        wait_device(management, device, lambda d: d["presence"] == "online", "online")
        said = time.time()
        goodbye = {
            "v": 1,
            "online": False,
            "reason": "asleep",
            "ts": said,
            "next_checkin": said + back_in,
        }
        dev.publish(f"mgmt/{device}/up/online", goodbye, retain=True)
        dev.disconnect()
    d = wait_device(management, "dev-s1", lambda d: d["presence"] == "asleep", "dev-s1 asleep")
    assert abs(d["next_checkin"] - (time.time() + 4 * 3600)) < 60
    wait_device(management, "dev-s2", lambda d: d["presence"] == "overdue", "dev-s2 overdue")
    _, listing = http_get(management, "/devices")
    assert {x["id"]: x["presence"] for x in listing if x["id"].startswith("dev-s")} == {
        "dev-s1": "asleep",
        "dev-s2": "overdue",
    }
    _, hist = http_get(management, "/devices/dev-s1/history")
    assert [(h["online"], h["reason"]) for h in hist] == [(True, None), (False, "asleep")]
    assert management_cli(["device", "dev-s1", *api]) == 0
    shown = capsys.readouterr().out
    assert "state      asleep since 20" in shown and "check-in   by 20" in shown
    assert management_cli(["devices", *api]) == 0
    assert re.search(r"dev-s2\s+overdue", capsys.readouterr().out)
    # filtered by the service, a page at a time; the overview's counts
    _, overdue = http_get(management, "/devices?presence=overdue&q=dev-s")
    assert [x["id"] for x in overdue] == ["dev-s2"]
    _, page = http_get(management, "/devices?limit=1&after=dev-s1")
    assert [x["id"] for x in page] == ["dev-s2"]
    status, problem = http_get(management, "/devices?presence=gone")
    assert status == 400 and "presence must be one of" in problem["problems"][0]
    assert http_get(management, "/devices?limit=1001")[0] == 400
    _, counts = http_get(management, "/fleet")
    assert counts["presence"]["asleep"] == 1 and counts["presence"]["overdue"] == 1
    assert management_cli(["devices", "--presence", "asleep", *api]) == 0
    out = capsys.readouterr().out
    assert "dev-s1" in out and "dev-s2" not in out and "1 device(s)" in out


def test_health_sent_while_the_database_is_out_of_reach_is_written_when_it_is_back(
    tmp_path: Path,
    run_stack: Callable[[Stack], Stack],
    probes: MakeProbe,
    postgres: Postgres,
) -> None:
    """The management service on PostgreSQL; the database refuses every connection for a
    while (its existing ones ended). What devices report meanwhile is held, not
    acknowledged to the broker, and written once the database takes connections again:
    nothing is lost to the outage."""
    database = postgres.new_database()
    stack = run_stack(Stack(tmp_path / "stack", management_database=database))
    management = stack.management()
    management.start(PACE.steps_of("services"))
    dev = fake_device(stack, probes, "dev-out")
    first = time.time()
    dev.publish("mgmt/dev-out/up/health", health(first))
    wait_device(management, "dev-out", lambda d: d["health_ts"] == first, "the first report")
    postgres.set_connections(database, allowed=False)
    try:
        sent = [first + i for i in range(1, 11)]
        for ts in sent:
            dev.publish("mgmt/dev-out/up/health", health(ts))
        wait_until(
            lambda: "the database is out of reach" in management.log_file.read_text(),
            what="the service waiting for its database",
        )
    finally:
        postgres.set_connections(database, allowed=True)
    wait_device(management, "dev-out", lambda d: d["health_ts"] == sent[-1], "the last report")
    status, series = http_get(management, "/devices/dev-out/health")
    assert status == 200
    assert [s["ts"] for s in series] == [first, *sent]  # every one, in order
