"""The operator API's latency on an idle machine, against the floor of a TLS connection.

Starts the test bed's stack (a broker and one management service on SQLite, no devices)
and times, from this process, `--calls` GETs of each kind the console asks most, each on
a new TLS connection as the CLI makes them, and as the baseline, in the same run, the
same number of bare TLS connections to the same port (connect, handshake, close): what
any call pays before the service answers. The ratio says what the answer itself adds;
a delayed ACK in the way (headers and body in two writes with Nagle's algorithm on: 40
ms per answer, fixed in tls_http.py) shows as a ratio of ten and more.

    .venv/bin/python bench/api_latency.py --calls 50
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from twelvefactor_services.management.api_client import ManagementClient

from testbed.stack import Stack

KINDS = ["/devices/dev-1", "/devices?limit=100", "/fleet", "/rollouts"]


def handshake_seconds(port: int, ca: Path) -> float:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the floor of a call: not the name check
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw):
        pass
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="of each kind, and handshakes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp) / "stack")
        stack.start_broker()
        management = stack.management()
        management.start(60)
        try:
            assert management.api is not None and management.api_port is not None
            client = ManagementClient(
                management.api.url, token=stack.admin_token(), ca=stack.pki.ca_cert
            )
            floor = [
                handshake_seconds(management.api_port, stack.pki.ca_cert) for _ in range(args.calls)
            ]
            base = statistics.median(floor)
            print(f"{'TLS connection alone (baseline)':34} p50 {1000 * base:6.2f} ms")
            for path in KINDS:
                took = []
                for _ in range(args.calls):
                    started = time.perf_counter()
                    client.request("GET", path)
                    took.append(time.perf_counter() - started)
                p50 = statistics.median(took)
                print(
                    f"{'GET ' + path:34} p50 {1000 * p50:6.2f} ms, max {1000 * max(took):6.2f} ms,"
                    f" {p50 / base:4.1f} x the baseline"
                )
        finally:
            management.stop()
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
