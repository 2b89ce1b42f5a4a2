"""The booted device: a clean boot, read-only root, persistent /data, the
layer's firewall, nothing listening, nothing getting out but the tunnel, the
agent unprivileged and online through the tunnel, its data in the solution
service's archive, and /data and the clock surviving a power cut. The first
boot is shared by the module (and its NIC captured by the session's fixture);
the power-cycle test boots it again with its RTC far behind, the next test
looks at that boot's clock, and the last one boots with a dead RTC and no
saved clock at all.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from testbed.boot.device import ROOT, Device
from testbed.boot.hub import HUB_ADDRESS, STALE_AFTER, WG_PORT
from testbed.boot.pace import PACE, REFERENCE_BOOT
from testbed.boot.underlay import GUEST_MAC, INTERNET_HOST, UNDERLAY_HOST
from testbed.boot.vm import VMError

MARKER = "/data/boot-test-marker"


def test_system_is_running_not_degraded(device: Device) -> None:
    vm = device.vm
    # twelvefactor-confirm waits for the agent before the boot is done
    deadline = time.monotonic() + PACE.limit(REFERENCE_BOOT)
    state = ""
    while time.monotonic() < deadline:
        state = vm.run("systemctl is-system-running").output.strip()
        if state not in ("initializing", "starting"):
            break
        time.sleep(3)
    failed = vm.run("systemctl --failed --no-legend --plain").output
    assert state == "running", f"system state {state!r}; failed units:\n{failed}"


def test_a_slow_coldplug_does_not_fail_the_partitions(device: Device) -> None:
    """The layer's system.conf.d drop-in: systemd waits 10 min, not 90 s, for /data's and
    /boot's devices (a first boot under load once timed out with udev still starting)."""
    assert device.vm.check("systemctl show -p DefaultDeviceTimeoutUSec --value") == "10min"
    for partition in ("data", "esp"):
        unit = f"dev-disk-by\\x2dpartlabel-{partition}.device"
        shown = device.vm.check(f"systemctl show -p JobRunningTimeoutUSec --value '{unit}'")
        assert shown == "10min", (unit, shown)


def test_root_is_read_only(device: Device) -> None:
    result = device.vm.run("touch /etc/boot-test-write")
    assert result.status != 0
    assert "Read-only file system" in result.output
    options = device.vm.check("findmnt -n -o OPTIONS /").split(",")
    assert "ro" in options


def test_data_is_writable(device: Device) -> None:
    token = secrets.token_hex(8)
    device.vm.check(f"echo {token} > {MARKER} && sync")
    assert device.vm.check(f"cat {MARKER}") == token
    fstype, options = device.vm.check("findmnt -n -o FSTYPE,OPTIONS /data").split()
    assert fstype == "ext4"
    assert "rw" in options.split(",")


def _normalised(ruleset: str) -> list[dict[str, Any]]:
    """`nft -j` output without what differs between two loads of the same file:
    handles, set elements (filled at boot from provisioning) and counter values."""
    out: list[dict[str, Any]] = []
    for item in json.loads(ruleset)["nftables"]:
        if "metainfo" in item:
            continue
        ((kind, body),) = item.items()
        body = {k: v for k, v in body.items() if k not in ("handle", "elem")}
        text = json.dumps(body, sort_keys=True)
        text = re.sub(r'"counter": \{"bytes": \d+, "packets": \d+\}', '"counter": {}', text)
        out.append({kind: json.loads(text)})
    return out


def test_firewall_is_the_layers_ruleset(device: Device) -> None:
    vm = device.vm
    assert vm.run("systemctl is-active twelvefactor-firewall.service").output.strip() == "active"
    live = _normalised(vm.check("nft -j list table inet twelvefactor"))
    # The shipped file, loaded into an empty network namespace on the device.
    shipped = _normalised(
        vm.check(
            "unshare --net sh -c 'nft -f /etc/nftables/twelvefactor.nft"
            " && nft -j list table inet twelvefactor'"
        )
    )
    assert live == shipped
    rules = [item for item in live if "rule" in item]
    assert len(rules) > 10, f"only {len(rules)} rules loaded"
    policies = {
        item["chain"]["name"]: item["chain"].get("policy") for item in live if "chain" in item
    }
    assert policies == {"input": "drop", "forward": "drop", "output": "drop"}
    # The sets were filled from provisioning: the hub endpoint is the only way out.
    assert UNDERLAY_HOST in vm.check("nft -j list set inet twelvefactor hub_v4")


def _non_loopback(sockets: str) -> list[tuple[str, str, str]]:
    """(address, port, process) of `ss -lnpH` sockets bound beyond loopback."""
    out = []
    for line in sockets.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        host, _, port = fields[3].rpartition(":")
        host = host.strip("[]").split("%")[0]
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass  # "*" or an interface-bound wildcard
        process = re.search(r'users:\(\("([^"]+)"', line)
        out.append((host, port, process.group(1) if process else "kernel"))
    return out


def test_nothing_listens_beyond_loopback(device: Device) -> None:
    vm = device.vm
    tcp = _non_loopback(vm.check("ss -lntpH"))
    assert tcp == [], f"TCP sockets listening beyond loopback: {tcp}"
    # UDP: only the client sockets the device cannot do without, each named
    # here; the firewall admits nothing to them but answers (and the tunnel's
    # packets from the hub endpoint):
    # the tunnel's port, as the hub hears it (the device needs no `wg` for that)
    endpoint = device.hub.endpoint(device.wg_public_key)
    assert endpoint is not None, "the hub has not heard the device's WireGuard"
    wg_port = str(endpoint[1])
    udp = _non_loopback(vm.check("ss -lnupH"))
    unexpected = [
        (host, port, proc)
        for host, port, proc in udp
        if not (
            (proc == "kernel" and port == wg_port)  # the WireGuard tunnel itself
            or (proc == "systemd-network" and port in ("68", "546"))  # DHCP clients
            # NTP client (to the hub, inside the tunnel); ss shows the 15-character comm
            or proc == "systemd-timesyncd"[:15]
        )
    ]
    assert unexpected == [], f"UDP sockets bound beyond loopback: {unexpected}"


def test_agent_runs_unprivileged(device: Device) -> None:
    vm = device.vm
    assert vm.run("systemctl is-active twelvefactor-agent.service").output.strip() == "active"
    pid = vm.check("systemctl show -P MainPID twelvefactor-agent.service")
    assert pid.isdigit() and int(pid) > 0
    user = vm.check(f"ps -o user= -p {pid}")
    assert user == "twelvefactor"
    uids = vm.check(f"grep -E '^(Uid|Gid|CapEff):' /proc/{pid}/status").split("\n")
    status = {line.split(":")[0]: line.split()[1:] for line in uids}
    assert "0" not in status["Uid"] and "0" not in status["Gid"]
    assert int(status["CapEff"][0], 16) == 0, f"agent has capabilities {status['CapEff']}"


def test_tunnel_up_and_agent_online(device: Device) -> None:
    hub = device.hub
    assert hub.latest_handshake(device.wg_public_key) > 0, "no WireGuard handshake with the hub"
    record = hub.device(device.device_id)
    assert record is not None and record["online"] is True
    meta = device.meta()
    assert meta["device"] == device.device_id
    assert meta["slot"] == "A"
    # the agent's session goes through the tunnel: its peer is the hub's tunnel address
    peers = device.vm.check("ss -ntH state established '( dport != 22 )'")
    assert "10.77.0.1:" in peers, f"no established connection to the hub:\n{peers}"


def test_data_reaches_the_solution_archive(device: Device) -> None:
    vm = device.vm
    body = json.dumps({"t": 21.5, "token": secrets.token_hex(6)})
    seq = vm.check(f"echo '{body}' | twelvefactor-agent publish temperature")
    assert seq.strip().isdigit(), f"publish answered {seq!r}"
    deadline = time.monotonic() + PACE.limit(10)  # a second or two in the reference run
    while time.monotonic() < deadline:
        for rec in device.hub.archived(device.device_id):
            if rec.get("seq") == int(seq) and rec.get("stream") == "temperature":
                assert base64.b64decode(rec["payload"]).decode().strip() == body
                return
        time.sleep(2)
    raise VMError(f"seq {seq} not in the archive: {device.hub.archived(device.device_id)}")


# -- egress: nothing but the tunnel gets out --------------------------------------

PROBE = ROOT / "tests" / "network" / "egress_probe.py"
BEYOND = ("198.51.100.7", "2001:db8:ff::7")
# what the layer's ruleset lets onto the underlay besides WireGuard to the hub
LINK_MACHINERY = (
    "(udp and src port 68 and dst port 67)"  # DHCPv4
    " or (udp and src port 546 and dst port 547)"  # DHCPv6
    " or (icmp6 and (ip6[40] == 133 or ip6[40] == 135 or ip6[40] == 136))"  # RS, NS, NA
    # MLD reports, v2 from Linux and v1 from the firmware's (OVMF's) network stack
    # at power-on, before the OS: ICMPv6 type 131 or 143 behind a hop-by-hop header
    " or (ip6 and ip6[6] == 0 and (ip6[48] == 131 or ip6[48] == 143))"
)


def egress_targets(hub: dict[str, int]) -> list[tuple[str, str, int]]:
    """20 destinations outside the allowlist. On the device's link are the hub
    (its gateway, DHCP server and DNS resolver, which answers every name) and
    another host; the hub's namespace forwards nothing, so only the device's
    firewall decides what leaves."""
    return [
        ("tcp", UNDERLAY_HOST, 80),  # the underlay's gateway
        ("tcp", UNDERLAY_HOST, 443),
        ("tcp", UNDERLAY_HOST, hub["management_port"]),  # the broker, outside the tunnel
        ("tcp", UNDERLAY_HOST, hub["management_api_port"]),  # the operator API's port
        ("udp", UNDERLAY_HOST, 123),  # NTP outside the tunnel
        ("udp", UNDERLAY_HOST, WG_PORT + 1),
        ("icmp", UNDERLAY_HOST, 0),
        ("udp", UNDERLAY_HOST, 53),  # the DNS resolver DHCP offers
        ("tcp", UNDERLAY_HOST, 53),
        ("tcp", BEYOND[0], 443),  # beyond the gateway, by the default route
        ("tcp", BEYOND[1], 443),
        ("icmp", BEYOND[0], 0),
        ("udp", BEYOND[0], 123),  # NTP elsewhere
        ("udp", "255.255.255.255", 9),  # broadcast
        ("udp", "224.0.0.251", 5353),  # mDNS
        ("tcp", INTERNET_HOST, 22),  # another host on the underlay
        ("tcp", HUB_ADDRESS, 22),  # the hub's tunnel address, not a service port
        ("tcp", HUB_ADDRESS, hub["management_api_port"]),
        ("udp", HUB_ADDRESS, 53),  # DNS on the service address
        ("tcp", "10.77.0.3", 22),  # another device's tunnel address
    ]


def _packets(pcap: Path, bpf: str) -> list[str]:
    done = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap), bpf], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_twenty_destinations_outside_the_allowlist_get_nothing_out(device: Device) -> None:
    """A root process on the device, the image's own firewall, networkd and
    kernel WireGuard; QEMU's capture of the NIC since power-on shows nothing
    but WireGuard to the hub, DHCP and the IPv6 link machinery."""
    capture = device.first_boot_capture
    assert capture is not None and capture.is_file(), "the first boot was not captured"
    hub = device.hub.info
    wanted = egress_targets(hub)
    assert len(wanted) == 20
    control = ("tcp", HUB_ADDRESS, hub["management_port"])  # the allowed path
    # routes to everywhere, IPv4 by DHCP and IPv6 by the hub's router
    # advertisements: only the firewall stands between a probe and the link
    # (router advertisements come every 10 s: --ra-param in underlay.py)
    device.vm.wait_for("ip -6 route show default | grep -c ' via '", "1", PACE.limit(5, 10))
    assert " via " in device.vm.check("ip -4 route show default")
    device.vm.put("/run/egress_probe.py", PROBE.read_bytes())
    out = device.vm.check(
        f"python3 /run/egress_probe.py {shlex.quote(json.dumps([*wanted, control]))}"
    )
    results = {(k, a, p): outcome for k, a, p, outcome in json.loads(out.splitlines()[-1])}
    assert results.pop(control) == "connected", "the probe cannot reach the broker: no control"
    # datagrams are refused at once (EPERM), TCP connects time out (the
    # output chain drops each SYN); nothing connects, is sent or answered
    escaped = {t: out for t, out in results.items() if out not in ("EPERM", "ETIMEDOUT")}
    assert escaped == {}, escaped
    others = _packets(
        capture,
        f"ether src {GUEST_MAC} and (ip or ip6)"
        f" and not (udp and dst host {UNDERLAY_HOST} and dst port {WG_PORT})"
        f" and not ({LINK_MACHINERY})",
    )
    assert others == [], others
    # the capture saw the device's traffic: its tunnel to the hub
    assert _packets(capture, f"ether src {GUEST_MAC} and udp and dst port {WG_PORT}")


# -- a power cut, with the RTC far behind ----------------------------------------

SAVE_INTERVAL = 60  # timesyncd's SaveIntervalSec default
# Time sync after a boot: timesyncd's first poll and the agent's sessions after
# it took 34-38 s of machine time in the reference run, plus the network's own waits.
CLOCK_SECONDS = 40.0
CLOCK_WAITS = 60.0


def clock_limit(extra: float = 0.0) -> float:
    return PACE.limit(CLOCK_SECONDS, CLOCK_WAITS + extra)


SYNCED = "timedatectl show -p NTPSynchronized --value"
SAVED_AT: dict[str, int] = {}  # the saved clock's time stamp before the cut


def _synced_through_the_tunnel(vm: Any, timeout: float) -> str:
    """Wait until timesyncd synchronised from the hub's tunnel address, to
    within 3 s of the host; this boot's timesyncd log."""
    vm.wait_for(SYNCED, "yes", timeout)
    timesyncd = str(vm.check("journalctl -b -u systemd-timesyncd --no-pager"))
    assert f"{HUB_ADDRESS}:123" in timesyncd, timesyncd
    skew = abs(int(vm.check("date +%s")) - time.time())
    assert skew <= 3, f"the device's clock is {skew:.0f} s off after synchronising"
    return timesyncd


def _both_sessions_online(vm: Any) -> None:
    """The agent's own view (not the hub's record, which goes by time stamps
    the agent may have made before its clock was set)."""
    deadline = time.monotonic() + clock_limit()
    while True:
        status = json.loads(vm.check("twelvefactor-agent status --config /data/config/agent.toml"))
        if status.get("management") == "online" and status.get("solution") == "online":
            return
        assert time.monotonic() < deadline, status
        time.sleep(3)


def test_data_persists_across_power_cycle(device: Device) -> None:
    """/data survives a power cut. The RTC starts at 2000 on the way back (a
    dead RTC): the clock test below looks at that boot."""
    vm = device.vm
    before = vm.check(f"cat {MARKER}")
    # synchronised from the hub's SNTP server, timesyncd saves the clock every minute
    vm.wait_for(SYNCED, "yes", clock_limit())
    fresh = f"[ $(( $(date +%s) - $(stat -c %Y /data/timesync/clock) )) -le {SAVE_INTERVAL + 5} ]"
    vm.wait_for(f"{fresh} && echo fresh", "fresh", SAVE_INTERVAL * 2)
    SAVED_AT["clock"] = int(vm.check("stat -c %Y /data/timesync/clock"))
    vm.check("sync")
    device.power_cycle(dead_rtc=True)
    assert vm.check(f"cat {MARKER}") == before


def test_dead_rtc_boots_on_the_saved_clock_then_syncs_through_the_tunnel(
    device: Device,
) -> None:
    """Time before trust: the boot of the power-cycle test above starts on the
    clock saved on /data, not in 2000, then systemd-timesyncd sets it from the
    management service's address inside the tunnel (the firewall allows no
    other NTP), and the agent's TLS sessions (verification always on) are up."""
    vm = device.vm
    saved = SAVED_AT.get("clock")
    assert saved is not None, "runs after test_data_persists_across_power_cycle"
    # the kernel took 2000 from the RTC, systemd its epoch; timesyncd put the saved clock back
    assert "setting system clock to 2000-01-01" in vm.check("journalctl -b -k --no-pager -g rtc")
    timesyncd = vm.check("journalctl -b -u systemd-timesyncd --no-pager")
    # systemd 257: "System clock time advanced to <time>: recorded timestamp"
    assert "recorded timestamp" in timesyncd, timesyncd
    # the agent never ran on the dead RTC's clock: its first line of this boot is later
    first = vm.check(
        "journalctl -b -u twelvefactor-agent -o short-unix --no-pager 2>/dev/null | head -2"
    )
    stamps = [float(line.split()[0]) for line in first.splitlines() if line[:1].isdigit()]
    assert stamps and stamps[0] >= saved - 1, first
    # then the hub's time, through the tunnel
    _synced_through_the_tunnel(vm, clock_limit())
    _both_sessions_online(vm)
    # (not device.wait_online: it reads this boot's metadata by its time stamp,
    # and the agent may have stamped it before the clock was synchronised)
    record = device.hub.device(device.device_id)
    assert record is not None and record["online"], record


def _first_monotonic(vm: Any, unit: str, text: str) -> float | None:
    """Seconds since boot of the first line of this boot's `unit` log containing `text`."""
    out = vm.run(
        f"journalctl -b -u {unit} -o short-monotonic --no-pager 2>/dev/null | grep -F -m1 '{text}'"
    )
    match = re.match(r"\[\s*([0-9.]+)\]", out.output.strip())
    return float(match.group(1)) if out.status == 0 and match else None


def test_dead_rtc_and_no_saved_clock_wait_for_the_tunnels_time(device: Device) -> None:
    """Time before trust, the hard way: no clock saved on /data (a device
    fresh from the factory), and the RTC dead. The device starts at systemd's
    epoch, behind the certificates' validity and behind the last WireGuard
    handshake the hub accepted from it. The tunnel comes up all the same:
    by the hub's handshake when it still has traffic for the device's last
    endpoint, else by the device's once the hub forgot its time stamp (quiet
    for STALE_AFTER; network/test_clock_went_back.py proves that path). Then
    timesyncd takes the hub's time through the tunnel, and only after that
    does the agent connect, with verification on."""
    vm = device.vm
    device.power_cycle_at_the_epoch()
    assert "setting system clock to 2000-01-01" in vm.check("journalctl -b -k --no-pager -g rtc")
    # systemd 257: "System time advanced to built-in epoch: <time>"
    assert "built-in epoch" in vm.check("journalctl -b -o cat --no-pager -g 'epoch'")
    # SWUpdate did not start on this clock (it would hold the update-signing
    # certificate, not yet valid then, against every update until a restart):
    # it starts when the agent hands it one (test_update.py begins with such a boot)
    assert vm.run("systemctl is-active swupdate.service").output.strip() == "inactive"
    assert vm.run("systemctl is-enabled swupdate.socket").output.strip() == "enabled"
    timesyncd = _synced_through_the_tunnel(vm, clock_limit(STALE_AFTER))
    assert "recorded timestamp" not in timesyncd, timesyncd
    _both_sessions_online(vm)
    synced = _first_monotonic(vm, "systemd-timesyncd", "Contacted time server")
    connected = _first_monotonic(vm, "twelvefactor-agent", "connected to")
    assert synced is not None and connected is not None, (synced, connected)
    assert connected > synced, (
        f"a TLS session at {connected} s, before the clock was set at {synced} s"
    )
    forgotten = device.hub.forgot(device.device_id)
    print(
        f"clock set {synced:.0f} s after power-on, first TLS session at {connected:.0f} s;"
        f" the hub forgot the device's handshake time stamp: {'yes' if forgotten else 'no'}"
    )
