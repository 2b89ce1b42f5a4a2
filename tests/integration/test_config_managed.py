"""Configuration from the management service: applied, rejected, reverted.

A real agent (HostAgent) against the real broker and management service; the
desired configuration is set through the management HTTP API and the CLI,
and what the device reports comes back through the registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twelvefactor_services.management.cli import main as management_cli

from testbed.hostagent import HostAgent
from testbed.pace import PACE, ROUND_TRIP
from testbed.stack import Stack, free_port, http_get, http_send, wait_until

WINDOW = 10  # the confirmation window: the agent's own timer, the same on every machine


@pytest.fixture
def agents() -> Iterator[list[HostAgent]]:
    made: list[HostAgent] = []
    yield made
    for agent in made:
        agent.close()


def start_agent(
    stack: Stack, agents: list[HostAgent], device: str, window: int = WINDOW
) -> HostAgent:
    agent = HostAgent(stack, device, stack.root.parent / device, confirm_window=window)
    agents.append(agent)
    PACE.timed("agent", agent.start)  # this run's pace (testbed/pace.py)
    return agent


def reported(port: int, device: str, version: int) -> dict[str, Any] | None:
    status, body = http_get(port, f"/devices/{device}/config")
    if status != 200 or not body["reported"] or body["reported"]["version"] != version:
        return None
    result: dict[str, Any] = body["reported"]
    return result


def agent_config(agent: HostAgent) -> dict[str, Any]:
    status = agent.client().status()
    config = status["config"]
    assert isinstance(config, dict)
    return config


def online(port: int, device: str) -> bool:
    status, body = http_get(port, f"/devices/{device}")
    return status == 200 and body["online"] is True


def test_change_applied_invalid_rejected_unreachable_reverted(
    stack: Stack, services: Any, agents: list[HostAgent]
) -> None:
    management, _ = services
    port = management
    agent = start_agent(stack, agents, "dev-c")
    wait_until(lambda: online(port, "dev-c"), PACE.steps_of("online"), what="dev-c online")

    # 1. A change of an interval: tried, confirmed by the reconnect, reported applied.
    status, body = http_send(port, "PUT", "/devices/dev-c/config", {"agent": {"keepalive": 12}})
    assert status == 200, body
    v1 = body["version"]
    report = wait_until(lambda: reported(port, "dev-c", v1), what="v1 reported")
    assert report == {"version": v1, "status": "applied", "error": None, "ts": report["ts"]}
    assert agent_config(agent)["version"] == v1
    state = json.loads((agent.data_dir / "managed-config.json").read_text())
    assert state["in_force"] == {"version": v1, "config": {"agent": {"keepalive": 12}}}
    assert state["trial"] is None

    # 2. Invalid on this device (cap below the file's backoff.initial 0.2): rejected,
    #    with the validator's reason, and version 1 stays in force.
    status, body = http_send(
        port, "PUT", "/devices/dev-c/config", {"agent": {"keepalive": 12}, "backoff": {"cap": 0.1}}
    )
    assert status == 200, body
    v2 = body["version"]
    report = wait_until(lambda: reported(port, "dev-c", v2), what="v2 reported")
    assert report["status"] == "rejected"
    assert report["error"] == "config: backoff.cap: 0.1 is smaller than backoff.initial (0.2)"
    assert agent_config(agent)["version"] == v1

    # A value the file validator refuses, set with the CLI this time.
    assert (
        management_cli(
            [
                "config",
                "set",
                "dev-c",
                "--set-json",
                '{"agent": {"keepalive": "often"}}',
                *stack.api_options(management),
            ]
        )
        == 0
    )
    v3 = v2 + 1
    report = wait_until(lambda: reported(port, "dev-c", v3), what="v3 reported")
    assert report["status"] == "rejected"
    assert report["error"] == "config: agent.keepalive: expected an integer, got string"
    assert agent_config(agent)["version"] == v1

    # 3. The management endpoint moved to where nothing listens: reverted within the
    #    window, the device back online on the previous configuration.
    dead = free_port()
    status, body = http_send(port, "PUT", "/devices/dev-c/config", {"management": {"port": dead}})
    assert status == 200, body
    v4 = body["version"]
    set_at = time.monotonic()
    report = wait_until(
        lambda: reported(port, "dev-c", v4),
        PACE.limit(ROUND_TRIP, fixed=WINDOW),
        what="v4 reported",
    )
    took = time.monotonic() - set_at
    assert report["status"] == "reverted"
    assert f"management not reached within {WINDOW} s on version {v4}" in report["error"]
    assert online(port, "dev-c")
    assert agent_config(agent) == {
        "version": v1,
        "trial": None,
        "last_report": {"v": 1, "version": v4, "status": "reverted", "error": report["error"]},
    }
    print(f"reverted and reported {took:.1f} s after the change (window {WINDOW} s)")
    # The whole time the agent went on serving its local API.
    assert agent.running


def test_group_overlay_with_device_overlay_on_top(
    stack: Stack, services: Any, agents: list[HostAgent]
) -> None:
    management, _ = services
    port = management
    agent = start_agent(stack, agents, "dev-g")
    wait_until(lambda: online(port, "dev-g"), PACE.steps_of("online"), what="dev-g online")

    status, body = http_send(
        port,
        "PUT",
        "/groups/fleet/config",
        {"queue": {"max_age": 3600}, "agent": {"keepalive": 20}},
    )
    assert status == 200 and body["versions"] == {}, body
    status, body = http_send(port, "POST", "/groups/fleet/members", {"device": "dev-g"})
    assert status == 200, body
    v1 = body["versions"]["dev-g"]
    wait_until(lambda: reported(port, "dev-g", v1), what="group config reported")
    status, body = http_send(port, "PUT", "/devices/dev-g/config", {"agent": {"keepalive": 15}})
    v2 = body["version"]
    assert body["desired"] == {"queue": {"max_age": 3600}, "agent": {"keepalive": 15}}
    report = wait_until(lambda: reported(port, "dev-g", v2), what="device overlay")
    assert report["status"] == "applied"
    state = json.loads((agent.data_dir / "managed-config.json").read_text())
    assert state["in_force"]["config"] == {"queue": {"max_age": 3600}, "agent": {"keepalive": 15}}

    # Leaving the group drops its part: a new version without the queue setting.
    status, body = http_send(port, "DELETE", "/groups/fleet/members/dev-g")
    v3 = body["versions"]["dev-g"]
    assert v3 == v2 + 1
    wait_until(lambda: reported(port, "dev-g", v3), what="left the group")
    state = json.loads((agent.data_dir / "managed-config.json").read_text())
    assert state["in_force"]["config"] == {"agent": {"keepalive": 15}}

    # A third endpoint is refused by the service already, with the agent's own words.
    status, body = http_send(port, "PUT", "/devices/dev-g/config", {"weather": {"host": "x"}})
    assert status == 400
    assert body["problems"] == [
        "config: weather: only two endpoints exist, [management] and [solution]; "
        "a third endpoint is not allowed"
    ]


def test_crash_inside_the_window_restarts_on_the_previous_configuration(
    stack: Stack, services: Any, agents: list[HostAgent]
) -> None:
    management, _ = services
    port = management
    agent = start_agent(stack, agents, "dev-k", window=120)  # room to cut the power in it
    wait_until(lambda: online(port, "dev-k"), PACE.steps_of("online"), what="dev-k online")
    status, body = http_send(
        port, "PUT", "/devices/dev-k/config", {"management": {"port": free_port()}}
    )
    assert status == 200, body
    version = body["version"]
    wait_until(lambda: agent_config(agent)["trial"] == version, what="under trial")
    agent.kill()  # a power cut inside the window
    agent.start()
    report = wait_until(lambda: reported(port, "dev-k", version), what="reverted after restart")
    assert report["status"] == "reverted"
    assert "restarted during the confirmation window" in report["error"]
    wait_until(lambda: online(port, "dev-k"), PACE.steps_of("online"), what="dev-k online again")
    assert agent_config(agent)["version"] is None, "the provisioned file alone, as before"
    # The retained desired document arrives again at every connect: not retried.
    wait_until(
        lambda: f"version {version} already handled" in agent.log_tail(200),
        what="the retained copy ignored",
    )
    state = json.loads((agent.data_dir / "managed-config.json").read_text())
    assert state["trial"] is None and state["report"]["version"] == version
    assert agent_config(agent)["trial"] is None
