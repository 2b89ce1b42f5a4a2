"""Run INSIDE device A's namespace: device A's certificate against device B's topics,
through A's tunnel and firewall, to the hub's broker.

argv: HOST MGMT_PORT SOL_PORT IDENTITY_DIR OWN_ID OTHER_ID. Prints JSON: what A
received on B's topics (must be nothing), the seq it forged for B, and its
own-topic controls: after the forgeries, on the same two connections, a health
report and a data message on A's own topics. The caller checks that the
controls were delivered (so the path works, and a forgery that is missing was
refused, not lost), and, since one connection's messages reach the services
in order, that by then the forgeries would have arrived.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

from twelvefactor_services.mqtt import Endpoint, Identity

from testbed.probe import Probe

# No agent uses seq 0 (the queue's seqs start at 1), and it sorts before B's own
# messages in the solution service's outbox: once B's next message is archived,
# a forged one that got through would be archived too.
FORGED_SEQ = 0
# Far above anything A's agent will number its own messages.
CONTROL_SEQ = 2**40
CONTROL_STREAM = "acl-control"
QUEUE_ID = "00000000ac10ac10"  # any 16 hex digits: not the queue of A's agent


def main() -> int:
    host, mport, sport, ident_dir, own, other = sys.argv[1:7]
    d = Path(ident_dir)
    identity = Identity(d / "device.crt", d / "device.key", d / "ca.crt")
    # A's own client ids: the broker takes no other from A's certificate (the caller
    # stops A's agent first, as an attacker holding A's key would throw it off).
    mgmt = Probe(Endpoint(host, int(mport)), identity, f"{own}-mgmt")
    sol = Probe(Endpoint(host, int(sport)), identity, f"{own}-sol")
    started = time.monotonic()
    mgmt.connect()
    sol.connect()
    connect_s = time.monotonic() - started
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
        "queue_id": QUEUE_ID,
        "seq": FORGED_SEQ,
        "stream": "forged",
        "ts": now,
        "payload": "",
    }
    sol.publish(f"sol/{other}/up/data/forged", envelope)
    # The controls: the same connections, A's own topics, after the forgeries.
    stamp = time.time()
    mgmt.publish(f"mgmt/{own}/up/health", {"v": 1, "ts": stamp, CONTROL_STREAM: True})
    control = {
        "v": 1,
        "device": own,
        "queue_id": QUEUE_ID,
        "seq": CONTROL_SEQ,
        "stream": CONTROL_STREAM,
        "ts": stamp,
        "payload": base64.b64encode(b"control").decode(),
    }
    sol.publish(f"sol/{own}/up/data/{CONTROL_STREAM}", control)
    received = [m.topic for m in mgmt.drain(3.0) + sol.drain(1.0) if f"/{own}/" not in m.topic]
    mgmt.disconnect()
    sol.disconnect()
    result = {
        "received": received,
        "forged_seq": FORGED_SEQ,
        "connect_s": connect_s,
        "control": {"health_ts": stamp, "seq": CONTROL_SEQ, "stream": CONTROL_STREAM},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
