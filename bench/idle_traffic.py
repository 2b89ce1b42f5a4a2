"""Every byte an idle device moves on its underlay, by cause, extrapolated to a month.

In the network tier's lab (testbed/network/lab.py: real WireGuard, the shipped hub
with its broker and services, the layer's firewall and tunnel renderer), device A runs
the agent with the shipped settings (agent/config/agent.toml, read here: health sampled
every minute and sent on news or every half hour, MQTT keepalive half an hour; the
tunnel's persistent keepalive 25 s from the layer's template). Once it is online and
has settled, two captures run side by side for `--seconds`, by default the longest of
those timers (and at least 10 minutes), so that each happens in the capture as often
as it does on average:
device A's link (the underlay: WireGuard only) and the hub's WireGuard interface
(what the tunnel carries, in clear). testbed/network/traffic.py attributes each
underlay data message to the inner packet it carries and checks that the sum is
what the underlay capture measured.

Then the cost of application data: 100 messages of 256 bytes published through
the local API at once, and 100 one by one (each waiting until the agent's queue is
empty again), as underlay bytes per message beyond the idle rate measured above.

The baseline, measured in the same run: WireGuard's own floor (keepalives and
handshakes), which an always-on device behind NAT pays whatever runs above it.
Time sync is not running in the lab (the device's timesyncd polls the hub's tunnel
address at most every PollIntervalMaxSec, 2048 s by default: under 100 KB a month).

Last, the metered profile (issue 18): device A provisioned as a metered device (no
persistent keepalive, a check-in every 4 hours), the underlay bytes of one check-in
with full TLS handshakes (the agent's first) and of one with resumed TLS sessions,
each times six a day for a month; between check-ins the tunnel is silent
(tests/network/test_metered_silence.py).

Needs root (namespaces), tcpdump, wireguard-go, wg, mosquitto. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from testbed.network.device import AGENT_TEMPLATE
from testbed.network.lab import WG_PORT, Lab, make_lab, remove
from testbed.network.netns import Netns
from testbed.network.traffic import (
    Tally,
    inner_causes,
    per_month,
    read_pcap,
    underlay_causes,
)

SNAP = 128  # bytes of each packet kept: the headers and WireGuard's message type
MESSAGES = 100
MESSAGE_BYTES = 256
TIMERS = ("health_interval", "health_heartbeat", "keepalive")
SHIPPED = {
    k: v for k, v in tomllib.loads(AGENT_TEMPLATE.read_text())["agent"].items() if k in TIMERS
}


class Capture:
    """tcpdump on one interface of one namespace, to a pcap file."""

    def __init__(self, ns: Netns, interface: str, path: Path) -> None:
        self.path = path
        argv = ["tcpdump", "-i", interface, "-s", str(SNAP), "-U", "-w", str(path), "-n"]
        self.proc = subprocess.Popen(
            ns.argv(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # tcpdump says "listening on" once it captures: nothing before that is lost
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode(errors="replace")
        if "listening on" not in line:
            raise SystemExit(f"tcpdump on {interface} in {ns.name} did not start: {line}")

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        return self.path


def shipped_config(lab: Lab, **tables: dict[str, object]) -> None:
    """Device A's agent.toml with the shipped intervals and backoff (and `tables`)."""
    info = lab.hub_info
    lab.a.write_agent_config(
        info["address_v4"],
        info["management_port"],
        info["solution_port"],
        agent=SHIPPED,
        backoff={"initial": 1.0, "multiplier": 2.0, "cap": 300.0},
        **tables,
    )


def shipped_agent(lab: Lab) -> None:
    """Device A's agent again, with the shipped intervals instead of the lab's short ones;
    device B's agent stopped (its traffic is not on A's link, but it loads the hub)."""
    lab.b.stop_agent()
    dev = lab.a
    dev.stop_agent()
    shipped_config(lab)
    dev.start_agent(lab.root / "dev-a-agent-shipped.log")
    lab.wait_online(dev)


def measure(lab: Lab, seconds: float, name: str) -> tuple[Path, Path, float]:
    outer = Capture(lab.a.ns, "eth0", lab.root / f"{name}-underlay.pcap")
    inner = Capture(lab.hub_ns, lab.hub_if, lab.root / f"{name}-tunnel.pcap")
    started = time.monotonic()
    time.sleep(seconds)
    return outer.stop(), inner.stop(), time.monotonic() - started


def attribute(lab: Lab, outer_pcap: Path, inner_pcap: Path) -> tuple[Tally, int, int]:
    """Causes of the underlay bytes; the data bytes measured and those explained."""
    device = lab.tunnel_address("dev-a")
    info = lab.hub_info
    sessions = {int(info["management_port"]): "management", int(info["solution_port"]): "solution"}
    wg, carried = underlay_causes(read_pcap(outer_pcap), WG_PORT)
    inner = inner_causes(read_pcap(inner_pcap), device, sessions)
    for cause in inner.bytes:
        wg.packets[cause] += inner.packets[cause]
        wg.bytes[cause] += inner.bytes[cause]
    return wg, carried, inner.total()


def print_idle(tally: Tally, seconds: float, carried: int, explained: int) -> float:
    total = tally.total()
    print(f"\nidle device, shipped settings {SHIPPED}, {seconds:.0f} s captured")
    print(f"{'cause':36} {'packets':>8} {'bytes':>9} {'MB/month':>9}")
    for cause, size in tally.bytes.most_common():
        month = per_month(size, seconds)
        print(f"{cause:36} {tally.packets[cause]:8d} {size:9d} {month:9.1f}")
    print(
        f"{'all':36} {sum(tally.packets.values()):8d} {total:9d} {per_month(total, seconds):9.1f}"
    )
    floor = sum(size for cause, size in tally.bytes.items() if cause.startswith("WireGuard"))
    print(
        f"data messages: {carried} bytes on the underlay, {explained} explained by the "
        f"tunnel capture ({'exact' if carried == explained else 'MISMATCH'})"
    )
    if floor:
        print(
            f"baseline (WireGuard's own floor, same run): "
            f"{per_month(floor, seconds):.1f} MB/month; the device pays x{total / floor:.1f} that"
        )
    return total / seconds


def publish_cost(lab: Lab, idle_rate: float, one_by_one: bool) -> None:
    dev = lab.a
    payload = os.urandom(MESSAGE_BYTES // 2).hex().encode()  # 256 printable bytes
    outer = Capture(dev.ns, "eth0", lab.root / f"messages-{int(one_by_one)}-underlay.pcap")
    started = time.monotonic()
    with dev.client() as client:
        if one_by_one:
            for _ in range(MESSAGES):
                client.publish("bench", payload)
                wait_drained(lab)
        else:
            client.publish_many("bench", [payload] * MESSAGES)
            wait_drained(lab)
    time.sleep(2)  # the last acknowledgements
    seconds = time.monotonic() - started
    packets = read_pcap(outer.stop())
    measured = sum(p.ip_len for p in packets)
    extra = measured - idle_rate * seconds
    per = extra / MESSAGES
    how = "one by one" if one_by_one else f"in a batch of {MESSAGES}"
    print(
        f"{MESSAGES} messages of {MESSAGE_BYTES} B {how}: {measured} bytes in {seconds:.1f} s, "
        f"{extra:.0f} beyond the idle rate: {per:.0f} B per message, "
        f"x{per / MESSAGE_BYTES:.2f} the payload"
    )


def wait_drained(lab: Lab, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        queue = lab.a.status()["queue"]
        if isinstance(queue, dict) and queue.get("depth") == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the agent's queue did not drain in {timeout} s: {queue}")
        time.sleep(0.05)


CHECKINS_PER_DAY = 6  # the metered profile's default: every 4 hours
PASSIVE_KEEPALIVE = 12.0  # WireGuard's one keepalive 10 s after the last packet, and margin
# WireGuard's Reject-After-Time, and margin: a tunnel idle this long needs a new handshake
# before it carries anything, as it does after hours asleep
REJECT_AFTER_TIME = 185.0


def metered_agent(lab: Lab) -> None:
    """Device A as a metered device is provisioned: no persistent keepalive on its tunnel,
    the metered profile (a check-in every 4 h), nothing early by size."""
    dev = lab.a
    dev.stop_agent()
    assert dev.tunnel is not None
    dev.wg("set", "peer", dev.tunnel.peer_key, "persistent-keepalive", "0")
    shipped_config(lab, link={"profile": "metered", "early_bytes": 0})


def wait_asleep(lab: Lab, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        link = lab.a.status()["link"]
        if isinstance(link, dict) and link.get("awake") is False:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"device A did not go to sleep in {timeout} s: {link}")
        time.sleep(0.1)


def checkin_cost(lab: Lab, name: str, *, restart: bool) -> int:
    """Underlay bytes of one check-in, from the wake-up until the tunnel is quiet again.
    `restart`: the agent starts afresh (its boot check-in: full TLS handshakes); else an
    application asks a sleeping agent (resumed TLS sessions)."""
    dev = lab.a
    cap = Capture(dev.ns, "eth0", lab.root / f"checkin-{name}.pcap")
    if restart:
        dev.start_agent(lab.root / f"dev-a-agent-{name}.log")
    else:
        with dev.client() as client:
            client.checkin()
    wait_asleep(lab)
    time.sleep(PASSIVE_KEEPALIVE)
    return sum(p.ip_len for p in read_pcap(cap.stop()))


def print_metered(lab: Lab) -> None:
    metered_agent(lab)
    full = checkin_cost(lab, "boot", restart=True)
    time.sleep(REJECT_AFTER_TIME)  # so the check-in pays its tunnel's handshake
    resumed = checkin_cost(lab, "asked", restart=False)
    print(
        "\nmetered profile, one check-in with nothing queued (the management session, "
        "health, goodbye; retained messages and metadata after a start only; "
        "tunnel silent between):"
    )
    for what, size in (("full TLS handshakes", full), ("TLS resumed", resumed)):
        month = size * CHECKINS_PER_DAY * 30 / 1e6
        print(
            f"  {what:22} {size:7d} bytes; every 4 h: {month:.2f} MB/month "
            f"(target <= 1 MB, balena's floor about 1 MB with one poll a day)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    longest = max(600.0, float(SHIPPED["health_heartbeat"]), float(SHIPPED["keepalive"]))
    parser.add_argument(
        "--seconds", type=float, default=longest, help=f"idle capture ({longest:.0f})"
    )
    parser.add_argument("--settle", type=float, default=20.0, help="quiet time before it")
    parser.add_argument("--keep", action="store_true", help="keep the lab's folder")
    parser.add_argument(
        "--metered-only", action="store_true", help="only the metered profile's check-ins"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/idle_traffic.py needs root (network namespaces)", file=sys.stderr)
        return 2
    lab, root = make_lab()
    try:
        lab.start()
        if not args.metered_only:
            shipped_agent(lab)
            time.sleep(args.settle)  # the first health report and metadata are not idle
            outer, inner, seconds = measure(lab, args.seconds, "idle")
            tally, carried, explained = attribute(lab, outer, inner)
            rate = print_idle(tally, seconds, carried, explained)
            print()
            publish_cost(lab, rate, one_by_one=False)
            publish_cost(lab, rate, one_by_one=True)
        print_metered(lab)
    finally:
        lab.close()
        if args.keep:
            print(f"lab folder kept: {root}")
        else:
            remove(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
