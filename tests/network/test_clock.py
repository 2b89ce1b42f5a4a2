"""Time before trust, in the network tier.

A device whose clock is at 1970 (no RTC, nothing saved) or years ahead
cannot check a certificate: the agent's TLS sessions fail with verification
on, and it never falls back to connecting without it. The management
service's tunnel address answers NTP (the only NTP the layer's firewall
lets out), so the device learns the time inside the tunnel before any TLS
session; with that time the same agent connects.

The device's clock is faked per process with libfaketime (setting the real
clock would change the host's). That systemd-timesyncd sets the clock from
this server at boot, before the agent starts, and that the saved clock on
/data survives a power cycle is the boot tier's part (QEMU).
"""

from __future__ import annotations

import calendar
import json
import re
import sys
import time
from pathlib import Path

import pytest

from testbed.network.device import TIMESYNCD, unit_file, values
from testbed.network.lab import INTERNET, Lab
from testbed.proc import stop

FAR_PAST = "1970-01-02 00:00:00"
# years past the certificates (825 days), before NTP era 1 (2036), which
# Debian's ntpdig cannot encode
FAR_AHEAD = "2035-06-01 00:00:00"


def _epoch(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


def _ntp_offset(lab: Lab, fake_now: str, server: str) -> float:
    """ntpdig (Debian's SNTP client) run on the device under a faked clock."""
    out = lab.a.ns.exec("faketime", "-f", f"@{fake_now}", "ntpdig", "-j", "-t", "5", server)
    return float(json.loads(out)["offset"])


def test_timesyncd_is_pointed_at_the_management_service_only(lab: Lab) -> None:
    conf = unit_file((lab.a.root / TIMESYNCD).read_text())
    assert values(conf, "Time", "NTP") == [
        f"{lab.hub_info['address_v4']} {lab.hub_info['address_v6']}"
    ] or values(conf, "Time", "NTP") == [lab.hub_info["address_v4"]]
    assert values(conf, "Time", "FallbackNTP") == [""]


@pytest.mark.parametrize("fake_now", [FAR_PAST, FAR_AHEAD])
def test_device_learns_the_time_through_the_tunnel(lab: Lab, fake_now: str) -> None:
    offset = _ntp_offset(lab, fake_now, lab.hub_info["address_v4"])
    learned = _epoch(fake_now) + offset
    assert abs(learned - time.time()) < 60


def test_ntp_anywhere_else_gets_no_answer(lab: Lab, tmp_path: Path) -> None:
    """A real SNTP server on the router's address: it answers the hub (the control), and
    the device's firewall keeps the device from asking it (issue 19, finding 18)."""
    server_code = (
        "import time; from twelvefactor_services.ntp import SntpServer; "
        f"SntpServer([({INTERNET[0]!r}, 123)]).start(); time.sleep(3600)"
    )
    server = lab.inet.popen([sys.executable, "-c", server_code], tmp_path / "sntp.log")
    try:
        deadline = time.monotonic() + 30
        while True:  # the control: the same query from the hub's namespace is answered
            answer = lab.hub_ns.exec("ntpdig", "-j", "-t", "2", INTERNET[0], check=False)
            if '"offset"' in answer:
                break
            assert time.monotonic() < deadline, f"the SNTP server never answered: {answer}"
        done = lab.a.ns.exec("ntpdig", "-j", "-t", "2", INTERNET[0], check=False)
        assert '"offset"' not in done
    finally:
        stop(server)


@pytest.mark.parametrize(
    ("fake_now", "reason"),
    [(FAR_PAST, "certificate is not yet valid"), (FAR_AHEAD, "certificate has expired")],
)
def test_agent_with_a_wrong_clock_refuses_tls_then_connects_once_synced(
    lab: Lab, tmp_path: Path, fake_now: str, reason: str
) -> None:
    dev = lab.a
    log = tmp_path / "agent.log"
    dev.stop_agent()
    try:
        started = time.monotonic()
        dev.start_agent(log, faketime=f"@{fake_now}")
        start_s = time.monotonic() - started
        # several attempts per session (backoff cap 2 s), each refused for this reason
        refused = re.compile(
            r"(management|solution): cannot connect to \S+: \[SSL: CERTIFICATE_VERIFY_FAILED\]"
            rf" certificate verify failed: {reason}"
        )
        budget = max(60.0, 20 * start_s)
        deadline = time.monotonic() + budget
        while True:
            text = log.read_text(errors="replace")
            sessions = [m.group(1) for m in refused.finditer(text)]
            if min(sessions.count("management"), sessions.count("solution")) >= 2:
                break
            assert time.monotonic() < deadline, f"not refused twice each in {budget:.0f} s:\n{text}"
            time.sleep(0.2)
        status = dev.status()
        assert status["management"] == "offline" and status["solution"] == "offline"
        assert not re.search(r"twelvefactor\.\w+: connected to ", log.read_text(errors="replace"))
        dev.stop_agent()
        # the time the device learns inside the tunnel, then the same agent connects
        synced = _epoch(fake_now) + _ntp_offset(lab, fake_now, lab.hub_info["address_v4"])
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(synced))
        dev.start_agent(tmp_path / "agent-synced.log", faketime=f"@{stamp}")
        lab.wait_online(dev)
    finally:
        dev.stop_agent()
        dev.start_agent(tmp_path / "agent-restored.log")
        lab.wait_online(dev)


def _next_attempts(log: Path) -> dict[str, float]:
    """Each session's latest retry delay in the agent's log."""
    found = re.findall(r"twelvefactor\.(\w+): next attempt in ([\d.]+) s", log.read_text())
    return {name: float(delay) for name, delay in found}


def test_agent_connects_as_soon_as_its_clock_is_set(lab: Lab, tmp_path: Path) -> None:
    """The same agent process, its clock at 1970 and its retries far apart
    (backoff 90 s, full jitter): when NTP sets the clock it tries again at
    once, instead of when its backoff says."""
    dev = lab.a
    clock = tmp_path / "faketime"
    clock.write_text(f"@{FAR_PAST}\n")
    log = tmp_path / "agent.log"
    config = dev.write_agent_config(
        lab.hub_info["address_v4"],
        lab.hub_info["management_port"],
        lab.hub_info["solution_port"],
        backoff={"initial": 90.0, "multiplier": 1.0, "cap": 90.0},
    )
    dev.stop_agent()
    try:
        dev.start_agent(log, config=config, faketime_file=clock)
        # both sessions refused (certificate not yet valid) and waiting at least 20 s
        deadline = time.monotonic() + 240
        while True:
            waits = _next_attempts(log)
            if len(waits) == 2 and min(waits.values()) >= 20:
                break
            assert time.monotonic() < deadline, (waits, log.read_text()[-2000:])
            time.sleep(1)
        set_at = time.monotonic()
        clock.write_text(f"@{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}\n")
        # well before either session's next attempt (at least 19 s away)
        lab.wait_online(dev, timeout=10)
        took = time.monotonic() - set_at
        print(f"online {took:.1f} s after the clock was set (next attempts were {waits})")
        assert "the wall clock was set by" in log.read_text()
    finally:
        dev.stop_agent()
        restored = dev.write_agent_config(
            lab.hub_info["address_v4"],
            lab.hub_info["management_port"],
            lab.hub_info["solution_port"],
        )
        dev.start_agent(tmp_path / "agent-restored.log", config=restored)
        lab.wait_online(dev)
