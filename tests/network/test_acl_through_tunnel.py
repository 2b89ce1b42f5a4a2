"""Device A's certificate cannot read or write device B's topics, end to end:
from A's namespace, through A's firewall and tunnel, to the hub's broker.
(tests/integration/test_broker_acl.py covers the same rules on loopback.)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lab import Lab

PROBE = Path(__file__).with_name("acl_probe.py")


def _archived(lab: Lab, device: str) -> list[dict[str, object]]:
    out = []
    for path in Path(lab.hub_info["archive_dir"]).rglob("*"):
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                rec = json.loads(line)
                if isinstance(rec, dict) and rec.get("device") == device:
                    out.append(rec)
    return out


def test_device_a_cannot_read_or_write_device_b_topics(lab: Lab) -> None:
    # B is known and online, with retained state A would receive if it could read it
    b = lab.registry_device(lab.b.id)
    assert b is not None and b["online"] is True
    info = lab.hub_info
    out = lab.a.ns.exec(
        sys.executable,
        str(PROBE),
        info["address_v4"],
        str(info["management_port"]),
        str(info["solution_port"]),
        str(lab.a.data("identity")),
        lab.a.id,
        lab.b.id,
    )
    result = json.loads(out)
    assert result["received"] == []
    # the forged "B went offline" did not reach the registry, the forged data not the archive
    time.sleep(2)
    b = lab.registry_device(lab.b.id)
    assert b is not None and b["online"] is True
    assert all(r.get("seq") != result["forged_seq"] for r in _archived(lab, lab.b.id))
    # and the real B still delivers: a publish through B's own agent lands in the archive
    seq = lab.b.client().publish("acl-control", b"from b")
    deadline = time.monotonic() + 60
    while not any(r.get("seq") == seq for r in _archived(lab, lab.b.id)):
        assert time.monotonic() < deadline, "B's own data did not arrive"
        time.sleep(0.2)
