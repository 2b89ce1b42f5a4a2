"""The booted device: a clean boot, read-only root, persistent /data, the
layer's firewall, nothing listening, the agent unprivileged and online through
the tunnel, its data in the solution service's archive, and /data surviving a
power cut. One boot shared by the module; the last test power-cycles it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
import time
from typing import Any

from bootdevice import Device
from bootvm import VMError

RUNNING_TIMEOUT = 400.0  # twelvefactor-confirm waits for the agent before the boot is done
MARKER = "/data/boot-test-marker"


def test_system_is_running_not_degraded(device: Device) -> None:
    vm = device.vm
    deadline = time.monotonic() + RUNNING_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        state = vm.run("systemctl is-system-running").output.strip()
        if state not in ("initializing", "starting"):
            break
        time.sleep(3)
    failed = vm.run("systemctl --failed --no-legend --plain").output
    assert state == "running", f"system state {state!r}; failed units:\n{failed}"


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
    assert "10.0.2.2" in vm.check("nft -j list set inet twelvefactor hub_v4")


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
    wg_port = vm.check("wg show tf0 listen-port")
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
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for rec in device.hub.archived(device.device_id):
            if rec.get("seq") == int(seq) and rec.get("stream") == "temperature":
                assert base64.b64decode(rec["payload"]).decode().strip() == body
                return
        time.sleep(2)
    raise VMError(f"seq {seq} not in the archive: {device.hub.archived(device.device_id)}")


def test_data_persists_across_power_cycle(device: Device) -> None:
    vm = device.vm
    before = vm.check(f"cat {MARKER}")
    vm.check("sync")
    vm.power_cut()
    device.boot("after a power cut")
    assert vm.check(f"cat {MARKER}") == before
