"""Run INSIDE device A's namespace: device A's certificate against device B's topics,
through A's tunnel and firewall, to the hub's broker.

argv: HOST MGMT_PORT SOL_PORT IDENTITY_DIR OWN_ID OTHER_ID. Prints JSON: what A
received on B's topics (must be nothing), whether its own-topic control
publish was acknowledged, and the seq it forged for B.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.probe import Probe

FORGED_SEQ = 2**40


def main() -> int:
    host, mport, sport, ident_dir, own, other = sys.argv[1:7]
    d = Path(ident_dir)
    identity = Identity(d / "device.crt", d / "device.key", d / "ca.crt")
    mgmt = Probe(Endpoint(host, int(mport)), identity, f"{own}-aclprobe-m")
    sol = Probe(Endpoint(host, int(sport)), identity, f"{own}-aclprobe-s")
    mgmt.connect()
    sol.connect()
    # B's retained online/meta exist on mgmt/B/up: a granted read would deliver them
    for topic in (f"mgmt/{other}/#", "mgmt/+/up/#", "mgmt/#"):
        mgmt.subscribe(topic)
    for topic in (f"sol/{other}/#", "sol/#"):
        sol.subscribe(topic)
    now = time.time()
    mgmt.publish(
        f"mgmt/{other}/up/online",
        {"v": 1, "online": False, "reason": "shutdown", "ts": now},
        retain=True,
    )
    mgmt.publish(f"mgmt/{other}/down/config", {"v": 1, "version": 999, "config": {}})
    envelope = {
        "v": 1,
        "device": other,
        "seq": FORGED_SEQ,
        "stream": "forged",
        "ts": now,
        "payload": "",
    }
    sol.publish(f"sol/{other}/up/data/forged", envelope)
    received = [m.topic for m in mgmt.drain(3.0) + sol.drain(1.0) if f"/{own}/" not in m.topic]
    mgmt.disconnect()
    sol.disconnect()
    print(json.dumps({"received": received, "forged_seq": FORGED_SEQ}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
