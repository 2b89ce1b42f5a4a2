"""From the internet side: the device answers nothing, on any port, v4 or v6.

The attacker sits on the device's own layer-2 segment (namespace "inet"),
which is as close as anyone off the device gets. A capture on the device's
underlay proves that nothing came back, whatever nmap makes of the silence.
"""

from __future__ import annotations

from pathlib import Path

from testbed.network.lab import DEVICES, HUB_UNDERLAY, INTERNET, Lab
from testbed.network.probes import Capture, nmap, sent_by_device

# One probe per port, no retries: a dropped probe would only be retried into
# the same silence. Without --min-rate nmap slows down for a host that never
# answers (measured: 5.5 min per 65,535-port scan); at 5,000 probes/s a full
# scan takes 13 s here.
FAST = ("-T5", "--max-retries", "0", "--min-rate", "5000", "--host-timeout", "10m")


def test_full_tcp_scan_finds_nothing_and_gets_no_answer(lab: Lab, tmp_path: Path) -> None:
    v4, v6 = DEVICES[lab.a.id]
    with Capture(lab.a.ns, "eth0", tmp_path / "tcp.pcap") as cap:
        result = nmap(lab.inet, v4, "-sS", "-p-", *FAST)
        result6 = nmap(lab.inet, v6, "-6", "-sS", "-p-", *FAST)
    print(f"nmap TCP 1-65535: v4 {result.elapsed:.0f} s, v6 {result6.elapsed:.0f} s")
    for r in (result, result6):
        assert r.total == 65535
        assert dict(r.states) == {"filtered": 65535}, r.listed
    assert sent_by_device(cap, lab.a.mac, HUB_UNDERLAY[0]) == []
    # the probes did arrive (the capture may lose a few under load): the
    # attacker was heard, and ignored
    assert len(cap.packets(f"src host {INTERNET[0]} and tcp")) >= 0.95 * 65535


def test_udp_scan_finds_nothing_and_gets_no_answer(lab: Lab, tmp_path: Path) -> None:
    v4, v6 = DEVICES[lab.a.id]
    with Capture(lab.a.ns, "eth0", tmp_path / "udp.pcap") as cap:
        result = nmap(lab.inet, v4, "-sU", "--top-ports", "1000", *FAST)
        result6 = nmap(lab.inet, v6, "-6", "-sU", "--top-ports", "1000", *FAST)
    print(f"nmap UDP top 1000: v4 {result.elapsed:.0f} s, v6 {result6.elapsed:.0f} s")
    for r in (result, result6):
        assert r.total == 1000
        # UDP silence reads as "open|filtered" to nmap; "open" needs an answer,
        # "closed" an ICMP port unreachable: neither may appear
        assert set(r.states) <= {"open|filtered", "filtered"}, r.listed
    assert sent_by_device(cap, lab.a.mac, HUB_UNDERLAY[0]) == []
    assert len(cap.packets(f"src host {INTERNET[0]} and udp")) >= 0.95 * 1000
