"""A third endpoint: refused by the agent, and dropped by the firewall as well.

The agent's configuration has exactly two endpoint tables; a file naming a
third is refused before anything connects. A *managed* configuration may
move an endpoint (it is a valid key), so the second line of defence is the
firewall: traffic to an address outside the provisioned services never
leaves the device, and the agent falls back to the previous configuration
when the confirmation window passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from twelvefactor_services.management import registry
from twelvefactor_services.management.store import Db

from testbed.network.lab import HUB_UNDERLAY, INTERNET, Lab
from testbed.network.probes import Capture, sent_by_device


def _dropped_outbound(lab: Lab) -> int:
    text = lab.a.ns.exec("nft", "list", "chain", "inet", "twelvefactor", "output")
    found = re.search(r'counter packets (\d+) bytes \d+ comment "dropped outbound"', text)
    assert found, text
    return int(found.group(1))


def test_agent_refuses_a_configuration_naming_a_third_endpoint(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    text = lab.a.data("config/agent.toml").read_text()
    config.write_text(text + f'[updates]\nhost = "{INTERNET[0]}"\nport = 443\n')
    done = subprocess.run(
        lab.a.ns.argv(
            sys.executable, "-m", "twelvefactor_agent.cli", "run", "--config", str(config)
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "updates: only two endpoints exist" in done.stderr
    assert "a third endpoint is not allowed" in done.stderr


def test_endpoint_moved_outside_the_allowlist_is_dropped_and_reverted(
    lab: Lab, tmp_path: Path
) -> None:
    db_path = lab.hub_info["registry"]
    before = _dropped_outbound(lab)
    reg = registry.Registry(Db(db_path))
    try:
        version = reg.set_device_config(
            lab.a.id, {"management": {"host": INTERNET[0]}}, time.time()
        )
    finally:
        reg.db.close()
    with Capture(lab.a.ns, "eth0", tmp_path / "underlay.pcap") as cap:
        deadline = time.monotonic() + 120  # confirm_window is 20 s in the lab
        while True:
            db = Db(db_path, migrate=False)
            try:
                found = registry.device_config(db, lab.a.id)
            finally:
                db.close()
            assert found is not None
            reported = found["reported"]
            if reported is not None and reported["version"] == version:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
    assert reported["status"] == "reverted", found
    assert sent_by_device(cap, lab.a.mac, HUB_UNDERLAY[0]) == []
    # the agent did try, and the firewall dropped it on the device
    assert _dropped_outbound(lab) > before
    lab.wait_online(lab.a)
