"""A booted device switched to the metered profile by the management service (issue 18):
between check-ins its tunnel sends no keepalive and time sync is stopped (the layer's
twelvefactor-link, started by its path unit as root, does both from what the agent
says); a check-in asked on the device starts time sync again, which syncs from the
hub, and brings the configuration made meanwhile (back to always on), after which
the provisioned keepalive and time sync are back. The shared device ends as it began.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from testbed.boot.device import RESTART_SECONDS, Device
from testbed.boot.pace import PACE
from testbed.boot.vm import VMError

PREFIX = "twelvefactor-link: "
NETDEV = "/run/systemd/network/50-twelvefactor-tunnel.netdev"
METERED = {"link": {"profile": "metered", "checkin_interval": 3600, "checkin_max": 120}}


def _until(what: str, check: Callable[[], Any], limit: float) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise VMError(f"{what}: not within {limit:.0f} s")


def _keepalive(device: Device) -> str:
    """What the kernel's WireGuard has for the hub: seconds, or "off"."""
    return device.vm.check("wg show tf0 persistent-keepalive").split()[-1]


def _timesyncd(device: Device) -> str:
    return device.vm.run("systemctl is-active systemd-timesyncd").output.strip()


def _configured(device: Device, overlay: dict[str, Any]) -> int:
    status, body = device.hub.management_send("PUT", f"/devices/{device.device_id}/config", overlay)
    assert status == 200, body
    return int(body["version"])


def _reported(device: Device, version: int) -> dict[str, Any] | None:
    status, body = device.hub.management_get(f"/devices/{device.device_id}/config")
    assert status == 200, body
    reported = body.get("reported")
    return reported if reported and reported["version"] == version else None


def test_metered_between_check_ins_no_keepalive_and_no_time_sync(device: Device) -> None:
    try:
        _metered_and_back(device)
    except BaseException:
        _always_on_again(device)  # the session's update tests share this device
        raise


def _always_on_again(device: Device) -> None:
    """After a failure: always on again, at a check-in asked for on the device."""
    _configured(device, {"link": {"profile": "always-on"}})
    device.vm.run("twelvefactor-agent checkin --config /data/config/agent.toml")
    _until(
        "online again after the failure",
        lambda: (d := device.hub.device(device.device_id)) and d["presence"] == "online",
        PACE.limit(4 * RESTART_SECONDS),
    )


def _metered_and_back(device: Device) -> None:
    vm = device.vm
    provisioned = vm.check(f"sed -n 's/^PersistentKeepalive=//p' {NETDEV}").strip()
    assert provisioned.isdigit() and int(provisioned) > 0, provisioned
    assert _keepalive(device) == provisioned
    assert _timesyncd(device) == "active"
    # a session restart on the device, plus the agent's own round trips
    limit = PACE.limit(4 * RESTART_SECONDS)

    switched, started = time.time(), time.monotonic()
    version = _configured(device, METERED)
    applied = _until("metered applied", lambda: _reported(device, version), limit)
    took = time.monotonic() - started  # a change's way to an awake device, in this run
    assert applied["status"] == "applied", applied
    _until(
        "asleep at the management service",
        lambda: (
            (d := device.hub.device(device.device_id))
            and d["presence"] == "asleep"
            and d["last_online_change"] > switched
        ),
        limit,
    )
    _until(
        "keepalive off and time sync stopped",
        lambda: _keepalive(device) == "off" and _timesyncd(device) == "inactive",
        limit,
    )
    assert vm.check("cat /run/twelvefactor/link").strip() == "asleep"

    # Meanwhile, back to always on; it waits for the device's next check-in, which a
    # person on the device asks for.
    back = _configured(device, {"link": {"profile": "always-on"}})
    time.sleep(took)  # the time the first change took to be applied
    assert _reported(device, back) is None  # asleep: nothing reached it
    asked = time.time()
    answer = vm.check("twelvefactor-agent checkin --config /data/config/agent.toml")
    assert '"ok": true' in answer, answer
    applied = _until("always on applied at the check-in", lambda: _reported(device, back), limit)
    assert applied["status"] == "applied", applied
    _until(
        "the provisioned keepalive and time sync back",
        lambda: _keepalive(device) == provisioned and _timesyncd(device) == "active",
        limit,
    )
    _until(
        "online again",
        lambda: (d := device.hub.device(device.device_id)) and d["presence"] == "online",
        limit,
    )
    # what twelvefactor-link did: asleep after the switch, always on after the check-in
    # (awake in between, unless the configuration came before it read the file)
    helper = vm.check(
        f"journalctl -b -u twelvefactor-link -o cat --no-pager --since=@{int(switched) - 2}"
    )
    said = [line.split(": ")[1] for line in helper.splitlines() if line.startswith(PREFIX)]
    assert "asleep" in said and said[-1] == "always-on", helper
    # the check-in started time sync again, which synced from the hub through the tunnel
    _until(
        "time synced at the check-in",
        lambda: (
            "Contacted time server"
            in vm.check(
                f"journalctl -b -u systemd-timesyncd -o cat --no-pager --since=@{int(asked) - 2}"
            )
        ),
        limit,
    )
