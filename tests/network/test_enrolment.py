"""docs/enrolment.md followed literally: a new device from nothing to online, then decommissioned.

A blank device namespace joins the lab's LAN. The page's commands run as
subprocesses, the device's in the device's namespace and the hub's in the
hub's, against the running hub: the request (keys made on the device's
/data), `twelvefactor-hub enrol`, the install; then the device starts as
the layer's files start it (firewall, tunnel from network.conf, the agent
with the installed agent.toml, its /data paths moved into the lab's folder
for this device) and comes online in the registry, which the operator CLI
shows with its hardware and tags. `twelvefactor-hub decommission` then cuts
it off both ways: the hub drops its peer and no WireGuard handshake
completes, and the broker disconnects its sessions and refuses a TLS
connection with its certificate; the registry keeps it, retired, with its
history.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from testbed.network.device import AGENT_TEMPLATE, Device, _toml
from testbed.network.lab import HUB_UNDERLAY, Lab

DEVICE = "dev-c"
ADDRESSES = ("192.0.2.12", "2001:db8:2::12")
AGENT = (sys.executable, "-m", "twelvefactor_agent.cli")  # twelvefactor-agent
HUB = (sys.executable, "-m", "twelvefactor_services.hub")  # twelvefactor-hub
# The hub syncs every second and the broker acts on its SIGHUP; when the hub drops the
# peer before the broker's kick reaches the device, the agent notices by its keepalive
# (1.5 x 10 s) plus its read timeout, as in test_peer_removal.py. More in proportion to
# how long this device took to come online in the same run.
CUT_OFF = 60.0
ONLINE_REFERENCE = 5.0  # seconds from agent start to online on an idle machine


def _lab_config(dev: Device) -> Path:
    """The installed agent.toml, its on-device paths moved into the lab's device folder."""
    installed = dev.data("config/agent.toml")
    doc: dict[str, dict[str, Any]] = tomllib.loads(installed.read_text())
    for key in ("certificate", "key", "ca"):
        assert doc["device"][key].startswith("/data/identity/")
        doc["device"][key] = str(dev.on_device(doc["device"][key]))
    dev.lab_settings(doc)
    path = dev.root / "run" / "agent.toml"
    path.write_text(_toml(doc))
    return path


def _until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


TLS_PROBE = """
import socket, ssl, sys
host, port, cert, key, ca = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, int(port)), 5) as raw, ctx.wrap_socket(raw) as tls:
        tls.recv(1)
        print("taken")
except ssl.SSLError as exc:
    print(exc.reason)
except OSError as exc:
    print(f"os: {exc}")
"""


def test_enrolment_page_from_nothing_to_online_then_decommission(lab: Lab, tmp_path: Path) -> None:
    dev = lab.blank_device(DEVICE, "c", *ADDRESSES)
    data = dev.data("")
    assert not any(p.is_file() for p in data.rglob("*")), "not a blank device"
    root = str(lab.hub_root)
    request, response = tmp_path / "request.json", tmp_path / "response.json"
    hwrevision = tmp_path / "hwrevision"
    hwrevision.write_text("qemux86-64 1.0\n")

    # 1. on the device: keys and request ("A QEMU device": a folder, --no-owners)
    dev.ns.exec(
        *AGENT,
        "enrol",
        "request",
        "--data",
        str(data),
        "--device-id",
        DEVICE,
        "--no-owners",
        "--hwrevision",
        str(hwrevision),
        "-o",
        str(request),
    )
    sent = json.loads(request.read_text())
    assert "PRIVATE" not in request.read_text()
    wg_public = sent["wireguard_public_key"]
    # 2. on the hub: one step registers it everywhere
    lab.hub_ns.exec(
        *HUB,
        "enrol",
        root,
        str(request),
        "--endpoint",
        HUB_UNDERLAY[0],
        "--group",
        "lab",
        "--tag",
        "bench",
        "-o",
        str(response),
    )
    # 3. on the device: the response installed
    dev.ns.exec(
        *AGENT,
        "enrol",
        "install",
        str(response),
        "--data",
        str(data),
        "--no-owners",
        "--template",
        str(AGENT_TEMPLATE),
    )
    installed = tomllib.loads(dev.data("config/agent.toml").read_text())
    assert installed["device"]["id"] == DEVICE
    assert installed["management"]["host"] == lab.hub_info["address_v4"]

    # the device starts as the layer's units start it
    dev.load_firewall()
    dev.render()
    dev.bring_up_tunnel(lab.root / f"{DEVICE}-wireguard-go.log")
    started = time.monotonic()
    dev.start_agent(lab.root / f"{DEVICE}-agent.log", config=_lab_config(dev))
    lab.wait_online(dev, timeout=120)
    online_after = time.monotonic() - started
    cut_off = CUT_OFF * max(1.0, online_after / ONLINE_REFERENCE)
    print(f"online after {online_after:.1f} s: cut-off {cut_off:.0f} s")

    # 4. the registry shows it, through the operator API and CLI
    shown = json.loads(
        lab.hub_ns.exec(
            sys.executable,
            "-m",
            "twelvefactor_services.management.cli",
            "device",
            DEVICE,
            "--url",
            f"https://127.0.0.1:{lab.hub_info['management_api_port']}",
            "--ca",
            str(Path(lab.hub_info["pki_dir"]) / "ca.crt"),
            "--token-file",
            lab.hub_info["admin_token_file"],
            "--json",
        )
    )
    assert shown["online"] is True
    assert shown["hardware"] == {"board": "qemux86-64", "revision": "1.0"}
    assert shown["tags"] == ["bench"] and shown["retired"] is None

    # Decommission: one command
    done = json.loads(lab.hub_ns.exec(*HUB, "decommission", root, DEVICE))
    assert done["peer_removed"] is True and done["revoked_serial"]

    # the hub drops the peer at its next sync, and the device's sessions go
    _until(
        "the hub still has the peer",
        lambda: wg_public not in lab.hub_ns.exec("wg", "show", lab.hub_if, "peers"),
        cut_off,
    )
    _until("the agent is still online", lambda: dev.status()["management"] != "online", cut_off)

    # the broker: a TLS connection with the device's certificate is refused
    # (from the hub's own namespace: the device has no way in any more)
    identity = [str(dev.data(f"identity/{n}")) for n in ("device.crt", "device.key", "ca.crt")]
    probe = [sys.executable, "-c", TLS_PROBE, lab.hub_info["address_v4"]]

    def refused(port: int) -> bool:
        answer = lab.hub_ns.exec(*probe, str(port), *identity).strip()
        return answer == "SSLV3_ALERT_CERTIFICATE_REVOKED"

    for port in (lab.hub_info["management_port"], lab.hub_info["solution_port"]):
        _until(
            f"the broker still takes the certificate on {port}", lambda p=port: refused(p), cut_off
        )
    assert (
        "disconnected the 1 devices last seen with one of them"
        in (Path(lab.hub_info["registry"]).parent.parent / "broker" / "mosquitto.log").read_text()
    )

    # the tunnel: with its session gone, the device completes no new handshake
    dev.drop_session()
    assert not lab.reaches_broker(dev, timeout=8)
    handshakes = dev.wg("show", "latest-handshakes").split()
    assert handshakes == [lab.hub_info["public_key"], "0"], handshakes

    # the registry: retired, offline (its will), its history kept
    def recorded() -> dict[str, Any]:
        found = lab.registry_device(DEVICE)
        assert found is not None
        return found

    _until("the registry still shows it online", lambda: recorded()["online"] is False, cut_off)
    record = recorded()
    assert record["retired"]["group"] == "lab" and record["retired"]["at"] > 0
    assert record["hardware"] == {"board": "qemux86-64", "revision": "1.0"}
    from twelvefactor_services.management import registry
    from twelvefactor_services.management.store import Db

    db = Db(lab.hub_info["registry"], migrate=False)
    try:
        assert [h["online"] for h in registry.history(db, DEVICE)][:2] == [True, False]
    finally:
        db.close()
    # the other devices carry on
    assert lab.a.status()["management"] == "online"
    assert lab.reaches_broker(lab.a)
