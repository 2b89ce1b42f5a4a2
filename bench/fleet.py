"""The fleet simulator against the real stack: N devices, one broker (issue 15).

Starts the test bed's stack (mosquitto with the project's plugin, one
management and one solution copy; both services' stores in SQLite or, with
``--database postgresql``, in a PostgreSQL server started for the run) and N simulated devices
(testbed/fleet/sim.py: real MQTT 5 clients, mutual TLS, a certificate each,
the agent's protocol code and backoff, many per process), then, in order:

1. initial connect: every device's two sessions up, the registry has them all;
2. steady state for ``--seconds``: health every ``--health-interval`` s, data
   every ``--data-interval`` s per device; health-to-registry latency;
3. a rollout of a new artifact to every device in one phase: until every
   device has its job, until the rollout API says all succeeded;
4. a broker restart (the connect storm, with the agents' backoff and jitter):
   until every session is up again, until the registry saw every device back;
5. data stopped: until the archive holds everything, then every device's
   archive file is read back and compared with what it sent.

The operator API is called the whole time (its latency), and the CPU time of
the broker, the services and the simulator is read, to tell where the
machine's cores went. Certificates are cached per N in ``--work``.

    .venv/bin/python bench/fleet.py --devices 500 --seconds 60
    .venv/bin/python bench/fleet.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from testbed.fleet.run import Options, run, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="steady state before the rest")
    parser.add_argument("--quick", action="store_true", help="50 devices, 10 s, fast health")
    parser.add_argument("--health-interval", type=float, default=10.0)
    parser.add_argument("--data-interval", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="simulator processes")
    parser.add_argument("--connect-threads", type=int, default=32, help="per worker")
    parser.add_argument("--payload", type=int, default=64, help="bytes per data message")
    parser.add_argument("--work", type=Path, default=Path("build/fleet"))
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="both services' stores (postgresql: a server started for the run)",
    )
    parser.add_argument(
        "--api-copy",
        action="store_true",
        help="probe the operator API on a management copy of its own (--no-consume) beside"
        " the one that consumes",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="py-spy the services into this folder")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.seconds, args.health_interval, args.data_interval = 50, 10.0, 2.0, 1.0
    opts = Options(
        devices=args.devices,
        seconds=args.seconds,
        health_interval=args.health_interval,
        data_interval=args.data_interval,
        workers=args.workers,
        connect_threads=args.connect_threads,
        payload_bytes=args.payload,
        work=args.work.resolve(),
        profile=args.profile,
        database=args.database,
        api_copy=args.api_copy,
    )
    try:
        opts.check()
    except ValueError as exc:
        parser.error(str(exc))
    load_before = os.getloadavg()
    figures = run(opts)
    load_after = os.getloadavg()
    print(f"fleet simulator, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},")
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"health every {opts.health_interval:g} s, data every {opts.data_interval:g} s"
        f" per device ({opts.payload_bytes} B), steady {opts.seconds:g} s;"
        f" the services' stores: {opts.database}"
    )
    print(
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f},"
        " after: {:.2f} {:.2f} {:.2f}".format(*load_before, *load_after)
    )
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
