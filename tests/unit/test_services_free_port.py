"""Ports picked free for the services and the broker: below the kernel's ephemeral range,
never one held, never the same twice (CI, 5 December: an outgoing connection took a
management API's port between its pick and its bind)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twelvefactor_services import services_stack
from twelvefactor_services.services_stack import PICK_BELOW, ephemeral_ports, free_port

pytestmark = pytest.mark.unit


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = ephemeral_ports()
    assert 0 < low <= high
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(max(1024, low - PICK_BELOW) <= port < low for port in ports)
    assert all(bindable(port) for port in ports[:20])  # nothing holds them, not even a TIME_WAIT


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Draws:
    """The picker's draws, given: the first is a port another socket holds."""

    def __init__(self, ports: list[int]) -> None:
        self.ports: Iterator[int] = iter(ports)

    def randrange(self, start: int, stop: int) -> int:
        return next(self.ports)


def test_a_port_held_by_another_socket_or_handed_out_before_is_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    low = ephemeral_ports()[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        given = free_port()
        free = next(p for p in range(low - 1, low - PICK_BELOW, -1) if p != given and bindable(p))
        monkeypatch.setattr(services_stack, "_pick", Draws([taken, given, free]))
        assert free_port() == free
