"""The device under test: its VM, its id and the hub it reports to."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.boot import board
from testbed.boot.hub import HUB_ADDRESS, TUNNEL_NETWORK, WG_PORT, Hub
from testbed.boot.pace import PACE, REFERENCE_BOOT
from testbed.boot.underlay import UNDERLAY_HOST
from testbed.boot.vm import VM, VMError

ROOT = Path(__file__).resolve().parents[2]
CLOCK_SLACK = 2.0  # the guest's clock comes from the host's RTC, to the second
RESTART_SECONDS = 15.0  # the agent's restart to its new session, in the reference run
# A dead RTC. Not 1970: QEMU's CMOS clock cannot hold it (the guest reads the
# year 70 as 2070, which systemd resets to its epoch as "15 years ahead").
# 2000-01-01 is where many RTCs reset, and like 1970 it is before systemd's
# epoch, so the boot takes the same path: epoch, then the saved clock.
DEAD_RTC = "2000-01-01T00:00:00"


@dataclass
class Device:
    """The provisioned device: its VM, its id, and the hub it reports to."""

    vm: VM
    hub: Hub
    device_id: str
    wg_public_key: str
    tunnel_address: str  # its address in the tunnel network, given by the hub's registry
    # pcap of the first boot's NIC (set by the session's fixture)
    first_boot_capture: Path | None = None
    # boots that started at systemd's epoch: a dead RTC and no clock saved on /data
    epoch_boots: int = 0
    # the boot whose time went to the pace already (one figure per boot)
    paced_boot: int = 0

    def power_on(self) -> None:
        self.vm.power_on()
        self._powered_on_wall = time.time()

    def power_cycle(self, *, dead_rtc: bool = False) -> None:
        """Cut the power and power on again (with the RTC at DEAD_RTC); logged in."""
        vm = self.vm
        vm.power_cut()
        vm.rtc_base = DEAD_RTC if dead_rtc else None
        try:
            self.power_on()
        finally:
            vm.rtc_base = None  # read at power-on: later boots get the host's time again
        vm.login()

    def power_cycle_at_the_epoch(self) -> None:
        """A device fresh from the factory with a dead RTC: no clock saved on
        /data, so the boot starts at systemd's built-in epoch."""
        self.vm.check("systemctl stop systemd-timesyncd && rm -f /data/timesync/clock && sync")
        self.power_cycle(dead_rtc=True)
        self.epoch_boots += 1

    def boot(self, what: str) -> float:
        """Power on, log in, wait until the management service shows it online."""
        self.power_on()
        self.vm.login()
        return self.wait_online(what)

    def wait_online(self, what: str, waits: float = 0.0) -> float:
        """Seconds from power-on until the management service has this boot's session.

        The agent publishes its metadata on every connect, so metadata stamped
        after power-on means this boot's session is up (after a quick power
        cycle the broker may never have seen the old session go offline).
        `waits`: seconds of a protocol's own timers this boot may have to sit
        out (no machine's speed changes them); such a boot does not set the pace,
        and no boot sets it twice.
        """
        limit = PACE.limit(REFERENCE_BOOT, waits) - (time.monotonic() - self.vm.powered_on_at)
        record = self._wait_session(self._powered_on_wall, "power-on", limit)
        elapsed = time.monotonic() - self.vm.powered_on_at
        # Online since the session's metadata, stamped by the device's clock (the
        # host's, to the second): this call may come long after the boot did.
        stamped = float(record["meta_ts"]) - self._powered_on_wall
        seconds = stamped if 0 < stamped <= elapsed + CLOCK_SLACK else elapsed
        if not waits and self.paced_boot != self.vm.boots:
            PACE.record(f"boot {self.vm.boots}: {what}", seconds)
        self.paced_boot = self.vm.boots
        print(f"power-on to online ({what}): {seconds:.1f} s")
        return seconds

    def restart_agent(self) -> None:
        """Restart the agent (it reads its configuration again) and wait for its new session."""
        since = time.time()
        self.vm.check("systemctl restart twelvefactor-agent")
        self._wait_session(since, "the agent's restart", PACE.limit(RESTART_SECONDS))

    def _wait_session(self, since: float, after: str, limit: float) -> dict[str, Any]:
        """Until the management service has a session of the agent's that began
        after `since`; the device's record then."""
        limit = max(limit, PACE.limit(RESTART_SECONDS))
        deadline = time.monotonic() + limit
        record: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            record = self.hub.device(self.device_id)
            if (
                record is not None
                and record.get("online")
                and float(record.get("meta_ts") or 0) >= since - CLOCK_SLACK
            ):
                return record
            time.sleep(1)
        journal = self.vm.run("journalctl -b -u twelvefactor-agent --no-pager | tail -40").output
        raise VMError(
            f"{self.device_id} not online at the management service {limit:.0f} s "
            f"after {after}; last record: {record}\nhub log:\n{self.hub.log_tail()}\n"
            f"agent journal:\n{journal}"
        )

    def meta(self) -> dict[str, Any]:
        record = self.hub.device(self.device_id)
        if record is None or not isinstance(record.get("meta"), dict):
            raise VMError(f"no metadata for {self.device_id}: {record}")
        meta: dict[str, Any] = record["meta"]
        return meta


def provision_device(boot_image: Path, hub: Hub, work: Path, device_id: str, accel: str) -> Device:
    """A provisioned copy of `boot_image` for `device_id`, a peer of `hub`, powered off.

    Its certificate comes from the hub's PKI (the device CA), its tunnel key is
    new, and the hub's WireGuard takes it as a peer.
    """
    from twelvefactor_services.pki import Pki

    from refimage import provision

    paths = Pki(hub.pki_dir).device(device_id)
    certs = provision.Identity(device_id, paths.cert, paths.key, paths.ca)
    private, public = provision.wg_keypair()
    peer = hub.add_device(device_id, public)
    tunnel = provision.Tunnel(
        private_key=private,
        hub_public_key=hub.public_key,
        hub_endpoint_address=UNDERLAY_HOST,
        hub_endpoint_port=WG_PORT,
        tunnel_address=f"{peer.address_v4}/{TUNNEL_NETWORK.split('/')[1]}",
        service_address=HUB_ADDRESS,
        management_mqtt_port=int(hub.info["management_port"]),
        solution_mqtt_port=int(hub.info["solution_port"]),
        management_https_port=int(hub.info["management_https_port"]),
    )
    disk = provision.provision(boot_image, work / "device.img", certs, tunnel)
    vm = VM(
        disk,
        work / "vm",
        netns=hub.netns,
        nic=hub.underlay.qemu_nic(),
        accel=accel,
        board=board.of_image(boot_image),
    )
    return Device(vm, hub, device_id, public, str(peer.address_v4))
