"""A metered device says nothing between check-ins (issue 18, item 2).

Device B is provisioned as a metered device is: its tunnel without a persistent
keepalive (PERSISTENT_KEEPALIVE=0 in network.conf) and its agent with the metered
profile, here a check-in every 90 s. After its first check-in it goes to sleep; a
capture of its underlay from then until just before the next check-in holds no packet
at all, in either direction (sent by B or addressed to it), once the check-in's last
words (AFTERMATH) are over, although an application publishes meanwhile. Then the
scheduled check-in comes by itself, the management service sees it online and asleep
again, and what the application published is in the archive, in order, exactly once.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from twelvefactor_agent.session.mqtt import CONNECT_TIMEOUT

from testbed.network.device import AGENT_BACKOFF
from testbed.network.lab import Lab
from testbed.network.probes import Capture
from testbed.pace import PACE, REFERENCE, ROUND_TRIP
from testbed.proc import run

INTERVAL = 90
LINK = {"profile": "metered", "checkin_interval": INTERVAL, "checkin_max": 30, "early_bytes": 0}
# A check-in's last words on the link, after its goodbye: WireGuard answers the last
# packet it received with one keepalive 10 s later when it had nothing to send back (its
# passive keepalive, on both ends), and the hub's kernel confirms the device's address
# with a unicast ARP 5 s after using a stale neighbour entry for that keepalive.
AFTERMATH = 20.0
# WireGuard's handshake retry (REKEY_TIMEOUT): the first initiation after a silence may
# go unanswered on a loaded machine, and the agent's connect then times out and is tried
# again after its backoff. Timers, not work: a check-in's limit allows one such retry.
REKEY_TIMEOUT = 5.0
RETRY = REKEY_TIMEOUT + CONNECT_TIMEOUT + AGENT_BACKOFF["cap"]


def asleep(lab: Lab, log: Path, after: float, until_wake: float = 0.0) -> float:
    """Wait until device B's agent (logging to `log`) is asleep after wall time `after` (a
    check-in that starts in `until_wake` seconds, by its schedule: a timer); when it will
    wake next."""
    # a check-in: the agent up and online, then its goodbye recorded
    work = REFERENCE["online"] + 2 * ROUND_TRIP
    deadline = time.monotonic() + PACE.limit(work, fixed=until_wake + RETRY)
    while True:
        link = lab.b.status()["link"]
        entries = lab.history(lab.b.id)
        said = [e for e in entries if e["ts"] > after and e["reason"] == "asleep"]
        if link.get("awake") is False and said:  # always-on until its config is read
            return float(link["next_checkin"])
        if time.monotonic() >= deadline:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise AssertionError(f"not asleep in time: {link}, {entries[-3:]}\n{log}:\n{tail}")
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
        log = lab.root / "dev-b-agent-metered.log"
        dev.start_agent(log)
        wakes = asleep(lab, log, started)
        slept = time.time()
        with Capture(dev.ns, "eth0", tmp_path / "underlay.pcap") as cap:
            with dev.client() as client:  # an application's readings, while it sleeps
                seqs = [client.publish("meter", f"reading {i}".encode()) for i in range(5)]
            time.sleep(max(0.0, wakes - 3 - time.time()))
        quiet_from, quiet_until = slept + AFTERMATH, wakes - 3
        assert quiet_until - quiet_from >= 45, (slept, wakes)
        # Everything B sent, and everything sent to it (its MAC as the destination). The
        # lab's shared LAN also carries other hosts' multicast, which a device's own
        # cellular or point-to-point link would not. And the lab's LAN has no IPv6
        # router: Linux keeps soliciting one (RFC 7559, backing off to an hour) where a
        # real network's router answers once and ends it. Those are counted apart.
        solicit = "icmp6 and ip6[40] == 133"
        own = f"ether host {dev.mac} and not ({solicit})"
        lines = run("tcpdump", "-tt", "-n", "-r", str(cap.path), own).splitlines()
        late = [line for line in lines if float(line.split()[0]) > quiet_from]
        assert late == [], f"{len(late)} packets while asleep:\n" + "\n".join(late[:20])
        solicitations = len(cap.packets(f"ether src {dev.mac} and {solicit}"))
        print(
            f"silent for {quiet_until - quiet_from:.0f} s between check-ins, after "
            f"{len(lines)} packets of the check-in's end "
            f"(router solicitations on the lab's router-less LAN: {solicitations})"
        )
        # The next check-in comes on schedule, with nobody asking: online, then asleep.
        asleep(lab, log, wakes - INTERVAL / 2, until_wake=max(0.0, wakes - time.time()))
        ups = [e for e in lab.history(dev.id) if e["ts"] > slept and e["online"]]
        assert ups, lab.history(dev.id)[-4:]

        # the check-in drained the queue before its goodbye
        def readings() -> list[dict[str, object]]:
            return [
                r
                for r in lab.archived(dev.id)
                if r.get("stream") == "meter" and float(str(r["received_ts"])) > slept
            ]

        deadline = time.monotonic() + PACE.limit(4 * ROUND_TRIP)
        while len(readings()) < len(seqs) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(PACE.limit(ROUND_TRIP))  # a duplicate would come now
        records = readings()
        assert [r["seq"] for r in records] == seqs, records  # in order, exactly once
        assert [base64.b64decode(str(r["payload"])) for r in records] == [
            f"reading {i}".encode() for i in range(5)
        ]
    finally:
        dev.stop_agent()
        dev.wg("set", "peer", tunnel.peer_key, "persistent-keepalive", tunnel.keepalive)
        dev.write_agent_config(info["address_v4"], info["management_port"], info["solution_port"])
        dev.start_agent(lab.root / "dev-b-agent-after-metered.log")
        lab.wait_online(dev)
