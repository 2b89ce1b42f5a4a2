"""Issue 15, item 3: two hub shards, a device on each, one management database.

Each hub carries its own devices only (its WireGuard peers); each device's reports reach
the one registry through its own shard's broker, which records the shard; the operator
sees one fleet through either hub's API; a configuration set through shard one's API
for shard two's device goes out through shard two's broker and is applied.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import require_root, require_tool

from testbed.network.shards import DEVICES, ShardLab

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardLab]:
    require_root()
    for tool in ("ip", "nft", "wg", "wireguard-go", "mosquitto"):
        require_tool(tool)
    lab = ShardLab(tmp_path_factory.mktemp("shards"))
    lab.start()
    try:
        yield lab
    finally:
        lab.close()


def cli(lab: ShardLab, shard: str, *args: str, answer: str = "json") -> Any:
    """The management CLI against `shard`'s operator API, from inside that hub: its
    answer as JSON (or, with answer="text", as printed)."""
    info = lab.hub_info[shard]
    out = lab.hubs[shard].exec(
        sys.executable, "-m", "twelvefactor_services.management.cli", *args,
        "--url", f"https://127.0.0.1:{info['management_api_port']}",
        "--ca", str(Path(info["pki_dir"]) / "ca.crt"),
        "--token-file", info["admin_token_file"],
        *(["--json"] if answer == "json" else []),
    )  # fmt: skip
    return json.loads(out) if answer == "json" else out


def test_each_hub_carries_its_own_devices_and_the_operator_sees_one_fleet(
    shards: ShardLab,
) -> None:
    for shard in ("one", "two"):
        peers = shards.hubs[shard].exec("wg", "show", shards.interfaces[shard], "peers").split()
        mine = [d for d, (s, _, _) in DEVICES.items() if s == shard]
        assert peers == [shards.devices[d].wg_public for d in mine], shard
    for shard in ("one", "two"):  # either hub's API: the whole fleet, each with its shard
        listed = {d["id"]: (d["shard"], d["online"]) for d in cli(shards, shard, "devices")}
        assert listed == {"dev-s1": ("one", True), "dev-s2": ("two", True)}, shard


def test_a_change_made_through_one_shard_reaches_a_device_of_the_other(
    shards: ShardLab, tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"agent": {"keepalive": 12}}))
    made = cli(shards, "one", "config", "set", "dev-s2", "--file", str(overlay), answer="text")
    assert made.startswith("dev-s2: desired configuration version "), made
    version = int(made.split()[-1])
    # a change applied is a publish, a reconnect of the sessions and a report: a few
    # times what bringing both devices online took in this run
    deadline = time.monotonic() + max(30.0, 10 * shards.online_seconds)
    while True:
        shown = cli(shards, "one", "config", "show", "dev-s2")
        reported = shown["reported"] or {}
        if reported.get("version") == version and reported.get("status") == "applied":
            break
        assert time.monotonic() < deadline, (shown, shards.log("two")[-3000:])
        time.sleep(0.5)
    published = f"published configuration version {version} for dev-s2"
    assert published in shards.log("two")
    assert published not in shards.log("one")  # shard one's broker never carries it
