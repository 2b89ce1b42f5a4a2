"""The layer's boot confirmation script (twelvefactor-confirm), its pure parts."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from testbed import layerscript

SCRIPT = (
    Path(__file__).resolve().parents[2]
    / "meta-twelvefactor/recipes-twelvefactor/twelvefactor-confirm/files/twelvefactor-confirm"
)


@pytest.fixture(scope="module")
def confirm() -> ModuleType:
    return layerscript.load(SCRIPT, "twelvefactor_confirm")


def test_sessions_online_reads_the_agent_state(confirm: ModuleType, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    assert not confirm.sessions_online(state)  # missing
    state.write_text('{"management": "online", "solution": "offline"}')
    assert not confirm.sessions_online(state)
    state.write_text('{"management": "online", "solution": "online"}')
    assert confirm.sessions_online(state)
    state.write_text("[1, 2")
    assert not confirm.sessions_online(state)


def test_the_unit_runs_even_when_data_does_not_mount() -> None:
    """A dependency that fails keeps a unit from starting at all: if the confirmation
    required /data, a new slot whose /data did not mount would never reboot and never
    fall back. It needs /boot (the boot environment) and waits for /data, nothing more."""
    unit = SCRIPT.with_name("twelvefactor-confirm.service").read_text(encoding="utf-8")
    lines = [line.strip() for line in unit.splitlines()]
    assert "RequiresMountsFor=/boot" in lines
    assert not [
        line for line in lines if line.startswith(("Requires", "BindsTo")) and "data" in line
    ]
    after = " ".join(line.split("=", 1)[1] for line in lines if line.startswith("After="))
    assert "data.mount" in after.split()
