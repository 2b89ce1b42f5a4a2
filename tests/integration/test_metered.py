"""The metered profile (issue 18, item 2) with the real agent, broker and services.

The agent checks in at start, then sleeps: its sessions closed with the goodbye that
says when it will be back, so the management service shows it asleep. What happens
meanwhile (data published by an application, a configuration change) waits; an
application's "check in now" brings it all: the data archived in order and exactly
once, the configuration applied, and the device asleep again.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_agent_update_jobs import job_entry, new_job
from test_artifacts import make_swu
from twelvefactor_services.solution.receivers import read_archive

from testbed.hostagent import HostAgent
from testbed.pace import PACE, REFERENCE, ROUND_TRIP
from testbed.stack import ServiceProcess, Stack, free_port, http_get, http_send, wait_until

pytestmark = pytest.mark.integration

LINK = {"profile": "metered", "checkin_interval": 3600, "checkin_max": 60, "early_bytes": 0}
WINDOW = 10  # the agent's confirmation window: a timer


@pytest.fixture
def agent(stack: Stack) -> Iterator[HostAgent]:
    made = HostAgent(stack, "dev-m", stack.root.parent / "dev-m", link=LINK)
    yield made
    made.close()


def device_of(svc: ServiceProcess, device_id: str) -> dict[str, Any]:
    status, body = http_get(svc, f"/devices/{device_id}")
    return body if status == 200 else {}


def device(svc: ServiceProcess) -> dict[str, Any]:
    return device_of(svc, "dev-m")


def asleep_again(
    svc: ServiceProcess, agent: HostAgent, after: float, device_id: str = "dev-m"
) -> dict[str, Any]:
    """The service shows it asleep, from a goodbye sent after `after` (its own history)."""

    def check() -> dict[str, Any] | None:
        d = device_of(svc, device_id)
        if not (d.get("presence") == "asleep" and d["last_online_change"] > after):
            return None
        link = agent.client().status()["link"]
        assert isinstance(link, dict) and link["awake"] is False  # it said goodbye: asleep
        # what the root helper twelvefactor-link reads (keepalive, time sync), written by
        # the agent's loop once it is asleep (a moment after the goodbye went)
        return d if (agent.data_dir / "link").read_text() == "asleep\n" else None

    return wait_until(
        check,
        timeout=PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP),
        what=f"{device_id} asleep (the service's word, the agent's, its link file)",
    )


def test_a_metered_device_sleeps_and_brings_everything_at_its_next_check_in(
    stack: Stack, services: Any, agent: HostAgent, tmp_path: Path
) -> None:
    management, _ = services
    started = time.time()
    PACE.timed("agent", agent.start)
    slept = asleep_again(management, agent, started)
    # back by the end of its next check-in: an hour and a minute from now
    assert abs(slept["next_checkin"] - (time.time() + 3600 + 60)) < 120
    status = agent.client().status()
    assert status["management"] == status["solution"] == "offline"
    link = status["link"]
    assert isinstance(link, dict) and link["profile"] == "metered"
    assert abs(float(link["next_checkin"]) - (time.time() + 3600)) < 120

    # While it sleeps: an application's data, a configuration change and an update job.
    with agent.client() as client:
        seqs = [client.publish("meter", f"reading {i}".encode()) for i in range(5)]
    code, body = http_send(management, "PUT", "/devices/dev-m/config", {"queue": {"max_age": 7200}})
    assert code == 200, body
    version = body["version"]
    job = new_job(stack, management, make_swu(tmp_path / "u.swu", "2.0"), "dev-m")
    time.sleep(PACE.limit(4 * ROUND_TRIP))  # time enough to arrive, were it awake
    assert not (stack.archive_dir / "dev-m.jsonl").exists()
    assert device(management)["presence"] == "asleep"
    assert job_entry(management, job, "dev-m")["state"] == "queued"

    asked = time.time()
    done = PACE.run(  # as an application or a person on the device asks
        [sys.executable, "-m", "twelvefactor_agent.cli", "checkin", "--socket", str(agent.socket)]
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    records = wait_until(
        lambda: (r := read_archive(stack.archive_dir / "dev-m.jsonl")) and len(r) >= 5 and r,
        timeout=PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP),
        what="the data archived at the check-in",
    )
    time.sleep(PACE.limit(ROUND_TRIP))  # a duplicate would come now
    records = read_archive(stack.archive_dir / "dev-m.jsonl")
    assert [r["seq"] for r in records] == seqs  # in order, exactly once
    assert [base64.b64decode(r["payload"]) for r in records] == [
        f"reading {i}".encode() for i in range(5)
    ]
    assert all(r["received_ts"] >= asked for r in records)

    def applied() -> bool:
        reported = http_get(management, "/devices/dev-m/config")[1]["reported"]
        return bool(reported) and reported["version"] == version and reported["status"] == "applied"

    wait_until(
        applied,
        timeout=PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP),
        what="the configuration applied at the check-in",
    )
    # The job reached it too: this host has no /etc/hwrevision, so the agent refuses it
    # before downloading (the download across check-ins: tests/integration/test_download.py).
    entry = wait_until(
        lambda: (e := job_entry(management, job, "dev-m"))["state"] == "failed" and e,
        timeout=PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP),
        what="the job answered at the check-in",
    )
    assert str(entry["reason"]).startswith("no_hwrevision: "), entry
    assert entry["updated"] >= asked
    asleep_again(management, agent, asked)
    assert agent.client().status()["config"]["version"] == version  # type: ignore[index]
    # The second check-in resumed both TLS sessions: no certificate crossed the link again.
    assert agent.log_file.read_text().count("(TLS resumed)") == 2


def test_queued_data_wakes_a_metered_device_by_its_size_and_then_by_its_age(
    stack: Stack, services: Any, tmp_path: Path
) -> None:
    """An alarm must not wait four hours (issue 18): data queued past `early_bytes` brings
    a check-in at once, and a small message left queued brings one when it is
    `early_age` old (the shortest allowed, a minute), neither waiting for the schedule."""
    management, _ = services
    early_bytes, early_age = 2048, 60
    link = {**LINK, "early_bytes": early_bytes, "early_age": early_age}
    agent = HostAgent(stack, "dev-e", tmp_path / "dev-e", link=link)
    archive = stack.archive_dir / "dev-e.jsonl"

    def archived(count: int, what: str, timeout: float) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (r := read_archive(archive)) and len(r) >= count and r,
            timeout=timeout,
            what=what,
        )

    def wakes() -> list[str]:
        return re.findall(r"link: checking in \(([a-z ]+)\)", agent.log_file.read_text())

    try:
        started = time.time()
        PACE.timed("agent", agent.start)
        asleep_again(management, agent, started, "dev-e")
        assert wakes() == []  # the check-in at start is not an early one
        # by size: three readings of 1,000 B pass 2,048 B on the third
        with agent.client() as client:
            big = [client.publish("burst", bytes([i]) * 1000) for i in range(3)]
        by_size = time.time()
        records = archived(
            3, "the burst archived", PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP)
        )
        assert [r["seq"] for r in records] == big
        assert wakes() == ["queue size"]
        asleep_again(management, agent, by_size, "dev-e")
        # by age: one small reading, far below the size, goes when a minute old
        with agent.client() as client:
            small = client.publish("burst", b"alarm")
        queued = time.time()
        records = archived(
            4,
            "the small reading archived",
            early_age + PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP),
        )
        assert [r["seq"] for r in records] == [*big, small]  # in order, exactly once
        assert records[-1]["received_ts"] >= queued + early_age - 1, (records[-1], queued)
        assert wakes() == ["queue size", "queue age"]
        asleep_again(management, agent, queued, "dev-e")
    finally:
        agent.close()


def test_a_device_powered_off_while_asleep_is_overdue_once_its_window_has_passed(
    stack: Stack, tmp_path: Path
) -> None:
    """The service shows `asleep` until the check-in the device announced (its interval
    and the time a check-in may take), then `overdue`; the device, powered on again, is
    online and then asleep as before. The service's slack past the window (two minutes
    by default) is short here."""
    slack = 5.0
    management = stack.management(overdue_after=slack)
    solution = stack.solution(max_backoff=2.0)
    management.start(PACE.steps_of("services"))
    solution.start(PACE.steps_of("services"))
    link = {**LINK, "checkin_interval": 60, "checkin_max": 30}  # the shortest allowed
    agent = HostAgent(stack, "dev-o", tmp_path / "dev-o", link=link)
    try:
        started = time.time()
        PACE.timed("agent", agent.start)
        slept = asleep_again(management, agent, started, "dev-o")
        agent.kill()  # powered off: nothing more leaves the device
        due = float(slept["next_checkin"])
        assert started + 60 + 30 <= due <= time.time() + 60 + 30  # interval + check-in time
        assert device_of(management, "dev-o")["presence"] == "asleep"
        overdue = wait_until(
            lambda: (d := device_of(management, "dev-o"))["presence"] == "overdue" and d,
            timeout=due + slack - time.time() + PACE.limit(4 * ROUND_TRIP),
            what="dev-o overdue",
        )
        assert time.time() > due + slack  # not before its window and the slack
        assert overdue["next_checkin"] == due
        back = time.time()
        agent.start()  # powered on: it checks in at start
        asleep_again(management, agent, back, "dev-o")
    finally:
        agent.close()


def test_the_profile_is_switched_by_managed_configuration_and_a_bad_switch_goes_back(
    stack: Stack, services: Any
) -> None:
    """Always on to metered by the management service (issue 18): a schedule the device
    cannot keep is rejected; a switch that cannot reach the service is reverted, as any
    connectivity change is; a good one is applied at once and the device goes to sleep."""
    management, _ = services
    agent = HostAgent(stack, "dev-w", stack.root.parent / "dev-w", confirm_window=WINDOW)
    try:
        PACE.timed("agent", agent.start)
        wait_until(
            lambda: device_of(management, "dev-w").get("presence") == "online",
            timeout=PACE.steps_of("online"),
            what="dev-w online",
        )

        def report(version: int) -> dict[str, Any] | None:
            reported = http_get(management, "/devices/dev-w/config")[1]["reported"]
            return reported if reported and reported["version"] == version else None

        def change(overlay: dict[str, Any]) -> dict[str, Any]:
            code, body = http_send(management, "PUT", "/devices/dev-w/config", overlay)
            assert code == 200, body
            version = body["version"]
            return wait_until(
                lambda: report(version),
                timeout=PACE.limit(REFERENCE["online"] + 4 * ROUND_TRIP, fixed=WINDOW),
                what=f"version {version} reported",
            )

        cannot = change(
            {"link": {"profile": "metered", "checkin_interval": 120, "checkin_max": 300}}
        )
        assert cannot["status"] == "rejected"
        assert (
            "link.checkin_max: 300 is not shorter than link.checkin_interval (120)"
            in (cannot["error"])
        )
        dead = {"link": {"profile": "metered"}, "management": {"port": free_port()}}
        unreachable = change(dead)
        assert unreachable["status"] == "reverted", unreachable
        assert agent.client().status()["link"] == {"profile": "always-on"}
        assert (agent.data_dir / "link").read_text() == "always-on\n"
        good = change({"link": {"profile": "metered", "checkin_interval": 3600, "checkin_max": 60}})
        assert good["status"] == "applied", good
        asleep = asleep_again(management, agent, time.time() - 1, "dev-w")
        assert abs(asleep["next_checkin"] - (time.time() + 3660)) < 120
    finally:
        agent.close()
