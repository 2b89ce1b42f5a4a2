"""A metered device says nothing between check-ins (issue 18, item 2).

Device B is provisioned as a metered device is: its tunnel without a persistent
keepalive (PERSISTENT_KEEPALIVE=0 in network.conf) and its agent with the metered
profile, here a check-in every minute. After its first check-in it goes to sleep; a
capture of its underlay from then until just before the next check-in holds no packet
at all, in either direction (sent by B or addressed to it). Then the scheduled
check-in comes by itself, and the management service sees it online and asleep again.
"""

from __future__ import annotations

import time
from pathlib import Path

from testbed.network.lab import Lab
from testbed.network.probes import Capture
from testbed.pace import PACE, REFERENCE

INTERVAL = 60
LINK = {"profile": "metered", "checkin_interval": INTERVAL, "checkin_max": 30, "early_bytes": 0}
# WireGuard answers the last packet it received with one keepalive 10 s later
# (its passive keepalive) when it had nothing to send back: the last word of a check-in.
PASSIVE_KEEPALIVE = 10.0


def asleep(lab: Lab, after: float) -> float:
    """Wait until device B's agent is asleep after wall time `after`; when it will wake."""
    deadline = time.monotonic() + PACE.limit(REFERENCE["online"] + 10.0, fixed=30.0)
    while True:
        link = lab.b.status()["link"]
        entries = lab.history(lab.b.id)
        said = [e for e in entries if e["ts"] > after and e["reason"] == "asleep"]
        if link["awake"] is False and said:
            return float(link["next_checkin"])
        assert time.monotonic() < deadline, (link, entries[-3:])
        time.sleep(0.2)


def test_a_metered_device_is_silent_between_check_ins_and_checks_in_on_schedule(
    lab: Lab, tmp_path: Path
) -> None:
    dev = lab.b
    info = lab.hub_info
    tunnel = dev.tunnel
    assert tunnel is not None
    dev.stop_agent()
    dev.write_agent_config(
        info["address_v4"], info["management_port"], info["solution_port"], link=LINK
    )
    dev.wg("set", "peer", tunnel.peer_key, "persistent-keepalive", "0")
    try:
        started = time.time()
        dev.start_agent(lab.root / "dev-b-agent-metered.log")
        wakes = asleep(lab, started)
        slept = time.time()
        quiet_from = slept + PASSIVE_KEEPALIVE + 2
        quiet_until = wakes - 3
        assert quiet_until - quiet_from >= 30, (slept, wakes)
        time.sleep(quiet_from - time.time())
        with Capture(dev.ns, "eth0", tmp_path / "underlay.pcap") as cap:
            time.sleep(quiet_until - time.time())
        # Everything B sent, and everything sent to it (its MAC as the destination). The
        # lab's shared LAN also carries other hosts' multicast, which a device's own
        # cellular or point-to-point link would not. And the lab's LAN has no IPv6
        # router: Linux keeps soliciting one (RFC 7559, backing off to an hour) where a
        # real network's router answers once and ends it. Those are counted apart.
        solicit = "icmp6 and ip6[40] == 133"
        heard = cap.packets(f"ether host {dev.mac} and not ({solicit})")
        assert heard == [], f"{len(heard)} packets while asleep:\n" + "\n".join(heard[:20])
        solicitations = len(cap.packets(f"ether src {dev.mac} and {solicit}"))
        print(
            f"silent for {quiet_until - quiet_from:.0f} s between check-ins "
            f"(router solicitations on the lab's router-less LAN: {solicitations})"
        )
        # The next check-in comes on schedule, with nobody asking: online, then asleep.
        asleep(lab, wakes - INTERVAL / 2)
        ups = [e for e in lab.history(dev.id) if e["ts"] > slept and e["online"]]
        assert ups, lab.history(dev.id)[-4:]
    finally:
        dev.stop_agent()
        dev.wg("set", "peer", tunnel.peer_key, "persistent-keepalive", tunnel.keepalive)
        dev.write_agent_config(info["address_v4"], info["management_port"], info["solution_port"])
        dev.start_agent(lab.root / "dev-b-agent-after-metered.log")
        lab.wait_online(dev)
