"""The agent's resident memory on the device itself, after 60 s idle with both sessions up.

Boots the reference image (or --image) in QEMU behind the boot tests' hub
(WireGuard, mosquitto, both services in a network namespace), waits until the
management service shows the device online, lets it idle, then reads, in the
same boot:

- the agent: VmRSS of twelvefactor-agent.service's main process, started by
  systemd with the unit's settings, the device's own Python and paho;
- the baseline: the same Python importing ssl, sqlite3 and paho-mqtt and
  nothing else (what any Python MQTT client costs before doing anything),
  run under the same user with the same malloc settings.

Target: agent <= 25 MB. (bench/agent_rss.py measures the same on the host,
with a "floor" of two TLS sessions and three SQLite connections as well.)

    sudo .venv/bin/python bench/device_rss.py [--image IMG] [--idle 60]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from refimage import image as refimage_image
from testbed.boot.device import provision_device
from testbed.boot.hub import Hub
from testbed.boot.vm import VM

ROOT = Path(__file__).resolve().parent.parent

BASELINE = (
    "import ssl, sqlite3, time; import paho.mqtt.client; "
    "open('/run/twelvefactor/bench-ready', 'w').close(); time.sleep(600)"
)


def rss_mb(vm: VM, pid: str) -> float:
    out = vm.check(f"grep VmRSS /proc/{pid}/status")
    m = re.search(r"(\d+) kB", out)
    if m is None:
        raise SystemExit(f"no VmRSS for {pid}: {out}")
    return int(m.group(1)) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="disk image (default: the reference image)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle before reading")
    parser.add_argument("--accel", default="tcg")
    args = parser.parse_args()
    image = args.image or refimage_image.build(ROOT / "build" / "refimage").disk
    with tempfile.TemporaryDirectory(prefix="bench-device-rss-") as tmp:
        work = Path(tmp)
        hub = Hub(work / "hub")
        hub.start()
        try:
            device = provision_device(image, hub, work, "bench-dev-1", args.accel)
            online = device.boot("bench")
            vm = device.vm
            try:
                pid = vm.check("systemctl show -p MainPID --value twelvefactor-agent")
                env = vm.check(f"tr '\\0' '\\n' < /proc/{pid}/environ | grep ^MALLOC_ || true")
                python = vm.check("python3 -c 'import sys; print(sys.version.split()[0])'")
                paho = vm.check("python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)'")
                settings = " ".join(env.split())
                vm.check(
                    f"(env {settings} setpriv --reuid=twelvefactor --regid=twelvefactor"
                    f' --clear-groups python3 -c "{BASELINE}" >/dev/null 2>&1 &)'
                )
                vm.wait_for("test -e /run/twelvefactor/bench-ready && echo yes", "yes", 120)
                time.sleep(args.idle)
                agent = rss_mb(vm, pid)
                base_pid = vm.check("pgrep -u twelvefactor -f bench-ready | head -1")
                baseline = rss_mb(vm, base_pid)
                state = vm.check("cat /run/twelvefactor/state.json")
            finally:
                vm.power_cut()
        finally:
            hub.stop()
    print(f"device: Python {python}, paho-mqtt {paho}, agent environment: {env or '(none)'}")
    print(f"power-on to online: {online:.1f} s; sessions after {args.idle:.0f} s idle: {state}")
    print(f"baseline (python + ssl + sqlite3 + paho): {baseline:6.1f} MB")
    print(f"agent (both sessions up, idle):           {agent:6.1f} MB   (target <= 25 MB)")
    print(f"agent - baseline:                         {agent - baseline:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
