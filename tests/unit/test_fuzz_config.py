"""Fuzzing: generated configuration documents never crash the agent or the management
service, and never change state they should not.

Each example runs the real decision code in-process: the agent's
configuration machine (reconfig.ConfigMachine, with the overlay validator)
and the management service's overlay check.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from helpers import MINIMAL_AGENT_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twelvefactor_agent.config import overlay
from twelvefactor_agent.config.reconfig import ConfigMachine, Publish, Restart, Stored
from twelvefactor_agent.config.settings import ConfigError
from twelvefactor_services.management.configlogic import OverlayError, check_overlay

EXAMPLES = 10_000
BASE: dict[str, Any] = tomllib.loads(
    MINIMAL_AGENT_CONFIG
    + '[agent]\ndata_dir = "/data/agent"\nsocket = "/run/twelvefactor/agent.sock"\n'
)
TABLES = [*overlay.MANAGED, "device", "weather", "endpoints", "agent", "tunnel"]
KEYS = [
    *sorted({k for keys in overlay.MANAGED.values() for k in keys}),
    "id",
    "data_dir",
    "socket",
    "certificate",
    "confirm_window",
    "url",
]
values = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.integers(min_value=0, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["10.77.0.2", "localhost", "a" * 300, "", " x", "::1", "host name"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)
tables = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), values, max_size=4)
overlays = st.dictionaries(
    st.one_of(st.sampled_from(TABLES), st.text(max_size=8)),
    st.one_of(tables, values),
    max_size=4,
)


# Mostly plausible documents, so that applying, trials, confirmation and revert are
# all exercised, not only refusals: per key, a value that fits or one that does not.
PLAUSIBLE: dict[str, Any] = {
    "host": st.sampled_from(["10.77.0.1", "10.77.0.2", "hub.example", "::1", "bad host", ""]),
    "port": st.one_of(st.integers(min_value=1, max_value=65535), st.sampled_from([0, 70000])),
    "health_interval": st.integers(min_value=0, max_value=100000),
    "health_heartbeat": st.one_of(st.integers(min_value=0, max_value=100000), st.just(1800)),
    "keepalive": st.one_of(st.integers(min_value=4, max_value=4000), st.just(30)),
    "max_bytes": st.integers(min_value=1000, max_value=2**41),
    "max_age": st.integers(min_value=0, max_value=10**9),
    "max_message_bytes": st.integers(min_value=0, max_value=10**6),
    "initial": st.floats(min_value=0, max_value=5000),
    "multiplier": st.floats(min_value=0.5, max_value=12),
    "cap": st.floats(min_value=0, max_value=100000),
    "profile": st.sampled_from(["always-on", "metered", "sometimes"]),
    "checkin_interval": st.integers(min_value=0, max_value=10**6),
    "checkin_max": st.integers(min_value=0, max_value=5000),
    "early_bytes": st.integers(min_value=-1, max_value=2**41),
    "early_age": st.integers(min_value=0, max_value=10**6),
}
plausible = st.fixed_dictionaries(
    {},
    optional={
        table: st.fixed_dictionaries({}, optional={k: PLAUSIBLE[k] for k in sorted(keys)})
        for table, keys in overlay.MANAGED.items()
    },
)


def desired_bytes(draw_doc: Any, version: Any, v: Any) -> bytes:
    try:
        return json.dumps({"v": v, "version": version, "config": draw_doc}).encode()
    except ValueError:
        return b"{}"


documents = st.one_of(
    st.builds(desired_bytes, plausible, st.integers(min_value=1, max_value=2**53), st.just(1)),
    st.builds(desired_bytes, plausible, st.integers(min_value=1, max_value=2**53), st.just(1)),
    st.builds(
        desired_bytes,
        overlays,
        st.one_of(st.integers(min_value=-3, max_value=2**60), st.text(max_size=3), st.none()),
        st.sampled_from([1, 1, 1, 2, "1", None, True]),
    ),
    st.binary(max_size=200),
    st.builds(lambda d: json.dumps(d).encode(), st.recursive(values, st.lists, max_leaves=5)),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=documents, outcome=st.sampled_from(["up", "timeout", "restart"]))
def test_agent_configuration_machine(raw: bytes, outcome: str) -> None:
    start = Stored()
    m = ConfigMachine(BASE, start, 60.0)
    m.start(0.0)
    before = m.config
    actions = m.desired(raw, 1.0)
    reports = [a.report for a in actions if isinstance(a, Publish)]
    # Identity, paths and socket never move, whatever arrives.
    for config in (m.config, *[a.config for a in actions if isinstance(a, Restart)]):
        assert config.device == before.device
        assert (config.agent.data_dir, config.agent.socket) == (
            before.agent.data_dir,
            before.agent.socket,
        )
        assert config.agent.state_file == before.agent.state_file
    if m.in_trial:
        assert not reports
        assert m.stored.trial is not None and m.stored.in_force is None
        trial = m.config
        if outcome == "up":
            m.session_up("management", m.generation, 2.0)
            m.session_up("solution", m.generation, 2.0)
            assert m.version == m.stored.in_force.version  # type: ignore[union-attr]
            assert m.config == trial
        elif outcome == "timeout":
            m.poll(1000.0)
            assert m.config == before and m.version is None
            assert m.stored.report is not None and m.stored.report.status == "reverted"
        else:  # power cut inside the window: back on the previous configuration
            again = ConfigMachine(BASE, Stored.from_json(m.stored.as_json()), 60.0)
            again.start(5.0)
            assert again.config == before and again.version is None
            assert not again.in_trial
            return
        assert not m.in_trial
        return
    if reports and reports[0].status == "applied":
        assert m.stored.in_force is not None
        assert m.config == overlay.effective(BASE, m.stored.in_force.config)
    else:
        # Rejected or ignored: what is in force did not change.
        assert m.config == before and m.stored.in_force is None
        assert all(r.status == "rejected" and r.error for r in reports)
    # What is stored always reads back.
    assert Stored.from_json(json.loads(json.dumps(m.stored.as_json()))) == m.stored


@settings(
    max_examples=EXAMPLES // 5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=st.one_of(overlays, values))
def test_management_overlay_check_agrees_with_the_agent(doc: Any) -> None:
    try:
        accepted = check_overlay(doc)
    except OverlayError as exc:
        assert exc.problems
        return
    # Anything the service accepts has a shape the agent accepts; values are the
    # device's to judge.
    assert overlay.check_shape(accepted) == []
    try:
        overlay.effective(BASE, accepted)
    except ConfigError as exc:
        assert exc.problems
