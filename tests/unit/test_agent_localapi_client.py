"""The local-API client against a listening socket whose backlog is full (the agent busy)."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from twelvefactor_agent.localapi.client import AgentClient


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A listener that accepts nothing, with its backlog filled by other clients."""
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(0)
    fillers: list[socket.socket] = []
    try:
        while True:
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
        assert fillers, "the backlog took no connection at all"
        yield server, path
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_a_full_backlog_is_waited_out_until_the_timeout(busy: tuple[socket.socket, Path]) -> None:
    _, path = busy
    with (
        AgentClient(path, timeout=0.5) as client,
        pytest.raises(TimeoutError, match=r"accepted no connection in 0\.5 s"),
    ):
        client.status()


def test_a_place_freed_in_the_backlog_is_taken(busy: tuple[socket.socket, Path]) -> None:
    server, path = busy
    answered = threading.Event()

    def serve() -> None:  # accept the fillers, then answer whichever connection asks for status
        # Every accepted connection stays open and is watched together: a client the
        # scheduler holds back on a loaded machine must not be dropped for being slow.
        conns: list[socket.socket] = []
        server.setblocking(False)
        try:
            while True:
                readable, _, _ = select.select([server, *conns], [], [], 10)
                if not readable:
                    return  # the test's own assertion says what went wrong
                for s in readable:
                    if s is server:
                        conns.append(server.accept()[0])
                        continue
                    line = s.recv(100)
                    if not line:
                        conns.remove(s)
                        s.close()
                    elif line.startswith(b'{"op":"status"}'):
                        answered.set()  # before the reply: the client may read it at once
                        s.setblocking(True)
                        s.sendall(b'{"ok":true,"queue":{"depth":0}}\n')
                        return
        finally:
            for c in conns:
                c.close()

    t = threading.Timer(0.3, serve)  # the client is already waiting when places free up
    t.daemon = True
    t.start()
    with AgentClient(path, timeout=10) as client:
        assert client.status() == {"ok": True, "queue": {"depth": 0}}
    assert answered.is_set()
    t.join(5)
