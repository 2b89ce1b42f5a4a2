"""The registry's online history stays bounded, whatever a device reports (issue 19, finding 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twelvefactor_services.management import registry
from twelvefactor_services.management.logic import MAX_REASON, PayloadError, parse_report
from twelvefactor_services.management.store import Db

pytestmark = pytest.mark.unit


def flip(reg: registry.Registry, device: str, online: bool, reason: str, now: float) -> None:
    raw = json.dumps({"v": 1, "online": online, "reason": reason, "ts": now}).encode()
    reg.apply(device, parse_report(device, "online", raw), now)


def test_a_flapping_device_with_long_reasons_cannot_grow_the_registry(tmp_path: Path) -> None:
    reg = registry.Registry(Db(tmp_path / "registry.db"))
    flip(reg, "dev-g", True, "", 0.5)  # a bystander
    with pytest.raises(PayloadError, match="larger than 1024"):
        flip(reg, "dev-f", False, "x" * 60_000, 0.7)  # refused whole (finding 4's caps)
    for i in range(registry.HISTORY_KEPT + 400):
        flip(reg, "dev-f", i % 2 == 0, "x" * 900, float(i + 1))
    kept = registry.history(reg.db, "dev-f", limit=10**6)
    assert len(kept) == registry.HISTORY_KEPT
    assert all(len(e["reason"]) == MAX_REASON for e in kept)
    assert kept[-1]["ts"] == float(registry.HISTORY_KEPT + 400)  # the newest are kept
    assert len(registry.history(reg.db, "dev-g")) == 1
    reg.db.close()
    # What is kept is about 1,000 x 200 bytes (unbounded: 1,400 x 900).
    assert (tmp_path / "registry.db").stat().st_size < 1024 * 1024


def test_history_pages_go_back_by_id(tmp_path: Path) -> None:
    reg = registry.Registry(Db(tmp_path / "registry.db"))
    for i in range(25):
        flip(reg, "dev-f", i % 2 == 0, "lost", float(i + 1))
    last = registry.history(reg.db, "dev-f", limit=10)
    assert [e["ts"] for e in last] == [float(t) for t in range(16, 26)]
    before = registry.history(reg.db, "dev-f", limit=10, before=last[0]["id"])
    assert [e["ts"] for e in before] == [float(t) for t in range(6, 16)]
    first = registry.history(reg.db, "dev-f", limit=10, before=before[0]["id"])
    assert [e["ts"] for e in first] == [float(t) for t in range(1, 6)]
