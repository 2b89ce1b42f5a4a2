"""Device A's certificate cannot read or write device B's topics, end to end:
from A's namespace, through A's firewall and tunnel, to the hub's broker.
(tests/integration/test_broker_acl.py covers the same rules on loopback.)

Nothing arriving proves little on its own, so the probe also publishes on A's
own topics after its forgeries (acl_probe.py): those controls must arrive, and
once they have, the forgeries sent before them on the same connections would
have too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.network.lab import Lab

PROBE = Path(__file__).with_name("acl_probe.py")


def _wait(what: str, look: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> float:
    """Poll `look()` until `done` holds; the seconds it took. Fails with the last look."""
    started = time.monotonic()
    while True:
        seen = look()
        if done(seen):
            return time.monotonic() - started
        last = repr(seen)[-600:]
        assert time.monotonic() - started < timeout, f"{what} not within {timeout:.0f} s: {last}"
        time.sleep(0.2)


def test_device_a_cannot_read_or_write_device_b_topics(lab: Lab) -> None:
    # B is known and online, with retained state A would receive if it could read it
    b = lab.registry_device(lab.b.id)
    assert b is not None and b["online"] is True
    info = lab.hub_info
    # The probe holds A's key and so may use only A's own client ids: A's agent steps aside.
    lab.a.stop_agent()
    try:
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
    finally:
        lab.a.start_agent(lab.root / f"{lab.a.id}-agent-after-acl-probe.log")
        lab.wait_online(lab.a)
    result = json.loads(out)
    assert result["received"] == []
    control = result["control"]
    # the controls on A's own topics arrived: the path works, and the forgeries
    # published before them on the same connections have been dealt with
    budget = max(60.0, 20 * result["connect_s"])
    took = _wait(
        "A's control data in the archive",
        lambda: [(r.get("seq"), r.get("stream")) for r in lab.archived(lab.a.id)],
        lambda seen: (control["seq"], control["stream"]) in seen,
        budget,
    )
    _wait(
        "A's control health in the registry",
        lambda: lab.registry_device(lab.a.id),
        lambda a: a is not None and (a["health_ts"] or 0) >= control["health_ts"],
        budget,
    )
    # the forged "B went offline" did not reach the registry
    b = lab.registry_device(lab.b.id)
    assert b is not None and b["online"] is True
    # the real B still delivers: a publish through B's own agent lands in the archive;
    # the forged seq sorts before it, so by then a forged record would be there too
    seq = lab.b.client().publish("acl-control", b"from b")
    _wait(
        "B's own data in the archive",
        lambda: [r.get("seq") for r in lab.archived(lab.b.id)],
        lambda seen: seq in seen,
        max(60.0, 20 * took),
    )
    forged = [r for r in lab.archived(lab.b.id) if r.get("seq") == result["forged_seq"]]
    assert forged == []
