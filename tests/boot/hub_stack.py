"""The cloud side of the boot tests, run INSIDE the hub's network namespace.

Started by boothub.Hub as `ip netns exec NS python hub_stack.py ROOT ADDRESS`:
the services' own launcher (twelvefactor_services.launcher.Stack) starts
mosquitto with its device listeners on ADDRESS (the hub's address inside the
WireGuard tunnel, so devices reach it only through the tunnel), the management
service and the solution service; the services' SNTP server answers on
ADDRESS:123, the only time source the device's firewall allows. The
management service's HTTP API listens on 127.0.0.1 of the namespace; it is
made reachable from the test process by a Unix socket (ROOT/management.sock:
Unix sockets are not bound to a network namespace). ROOT/hub.json says what
runs where; SIGTERM stops everything.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from twelvefactor_services.hub.plan import NTP_PORT
from twelvefactor_services.launcher import LOCALHOST, Stack
from twelvefactor_services.ntp import SntpServer
from twelvefactor_services.pki import Pki


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _proxy(path: Path, port: int) -> None:
    """Forward connections on a Unix socket to 127.0.0.1:port (threads, one per side)."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)

    def serve() -> None:
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection((LOCALHOST, port), timeout=30)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def main(root: Path, address: str) -> int:
    pki_dir = root / "pki"
    if not (pki_dir / "ca.crt").exists():
        # The broker's certificate must name the address devices dial inside the tunnel.
        pki = Pki(pki_dir)
        pki.init()
        pki.server("broker", dns=["localhost"], ips=[LOCALHOST, "::1", address])
        for name in ("management", "solution"):
            pki.service(name)
    stack = Stack(root, address=address)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ntp = SntpServer([(address, NTP_PORT)]).start()
    try:
        stack.start_broker()
        management = stack.management()
        management.start()
        stack.solution().start()
        assert management.http_port is not None
        _proxy(root / "management.sock", management.http_port)
        info = {
            "address": address,
            "management_port": stack.broker.cfg.management_port,
            "solution_port": stack.broker.cfg.solution_port,
            "management_http_port": management.http_port,
            "artifact_port": stack.artifact_port,
            "registry_db": str(stack.registry_db),
            "log_dir": str(root),
            "archive_dir": str(stack.archive_dir),
            "pki_dir": str(pki_dir),
        }
        (root / "hub.json.tmp").write_text(json.dumps(info, indent=1))
        (root / "hub.json.tmp").rename(root / "hub.json")
        stopping.wait()
    finally:
        stack.stop()
        ntp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
