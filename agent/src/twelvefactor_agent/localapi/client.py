"""A small client of the local API, for applications on the device.

from twelvefactor_agent.localapi.client import AgentClient
with AgentClient() as agent:
    seq = agent.publish("temperature", b'{"t": 21.5}')
    reply = agent.call("weather", path="/now", query={"city": "Lyon"})
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

DEFAULT_SOCKET = Path("/run/twelvefactor/agent.sock")
# Requests sent before reading their answers (pipelining), bounded so neither
# side ever holds much: the agent stops reading a client that does not read.
BATCH_REQUESTS = 256
BATCH_BYTES = 512 * 1024


class AgentError(Exception):
    """The agent refused a request or a call failed; `code` is the protocol's error code
    (bad_request, too_large, unavailable; for calls also unknown_service, not_allowed,
    upstream_error, timeout)."""

    def __init__(
        self,
        code: str,
        message: str,
        accepted: list[int] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # For publish_many: seqs of the messages stored before the refusal.
        self.accepted = accepted or []
        # For call: the upstream's HTTP status, when it answered 5xx.
        self.status = status


class CallResponse(NamedTuple):
    """What a third-party service answered through the solution service."""

    status: int
    headers: dict[str, str]
    body: bytes


class AgentClient:
    def __init__(self, path: Path | str = DEFAULT_SOCKET, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf.clear()

    def publish(self, stream: str, data: bytes) -> int:
        """Store one message; its seq once it is durable in the agent's queue."""
        (seq,) = self.publish_many(stream, [data])
        return seq

    def publish_many(self, stream: str, items: Iterable[bytes]) -> list[int]:
        """Store many messages, pipelined; their seqs in order.

        On a refusal the rest of that batch is still answered; AgentError then
        carries the seqs stored before the first refusal in `accepted`."""
        seqs: list[int] = []
        for batch in _batches(_publish_line(stream, data) for data in items):
            self._send(b"".join(batch))
            error: AgentError | None = None
            for _ in batch:
                answer = self._receive()
                if answer.get("ok") is True and error is None:
                    seq = answer.get("seq")
                    if not isinstance(seq, int):
                        raise ValueError(f"agent answered without a seq: {answer!r}")
                    seqs.append(seq)
                elif error is None:
                    error = _error(answer, seqs)
            if error is not None:
                raise error
        return seqs

    def status(self) -> dict[str, object]:
        return self._ask(b'{"op":"status"}\n')

    def checkin(self) -> dict[str, object]:
        """Ask a metered device to check in now (an alarm must not wait hours); the status."""
        return self._ask(b'{"op":"checkin"}\n')

    def _ask(self, line: bytes) -> dict[str, object]:
        self._send(line)
        answer = self._receive()
        if answer.get("ok") is not True:
            raise _error(answer, [])
        return answer

    def call(
        self,
        service: str,
        method: str = "GET",
        path: str = "/",
        *,
        query: Mapping[str, str | list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float = 30.0,
    ) -> CallResponse:
        """Call a third-party service by name through the solution service.

        Raises AgentError with the error code (and `.status` for an upstream 5xx)."""
        request = {
            "op": "call",
            "service": service,
            "method": method,
            "path": path,
            "query": dict(query or {}),
            "headers": dict(headers or {}),
            "body": base64.b64encode(body).decode("ascii"),
            "timeout": timeout,
        }
        self._send(json.dumps(request).encode() + b"\n")
        sock = self._connect()
        sock.settimeout(max(self.timeout, timeout + 10.0))  # the agent answers by then
        try:
            answer = self._receive()
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        if answer.get("ok") is not True:
            status = answer.get("status")
            raise AgentError(
                str(answer.get("error")),
                str(answer.get("message")),
                status=status if isinstance(status, int) else None,
            )
        status, hdrs, data = answer.get("status"), answer.get("headers"), answer.get("body")
        if not isinstance(status, int) or not isinstance(hdrs, dict) or not isinstance(data, str):
            raise ValueError(f"agent answered a call without status, headers or body: {answer!r}")
        return CallResponse(
            status, {str(k): str(v) for k, v in hdrs.items()}, base64.b64decode(data)
        )

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._connect_waiting()
        return self._sock

    def _connect_waiting(self) -> socket.socket:
        # A Unix socket whose listen backlog is full answers EAGAIN at once, even to a
        # blocking connect; the agent is busy, not gone, so wait for a place up to timeout.
        deadline = time.monotonic() + self.timeout
        pause = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                return sock
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause > deadline:
                    raise TimeoutError(
                        f"agent at {self.path} accepted no connection in {self.timeout:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
            except OSError:
                sock.close()
                raise

    def _send(self, data: bytes) -> None:
        try:
            self._connect().sendall(data)
        except OSError:
            self.close()
            raise

    def _receive(self) -> dict[str, object]:
        sock = self._connect()
        try:
            while True:
                end = self._buf.find(b"\n")
                if end != -1:
                    line = bytes(self._buf[:end])
                    del self._buf[: end + 1]
                    answer = json.loads(line)
                    if not isinstance(answer, dict):
                        raise ValueError(f"agent answered {line[:80]!r}")
                    return answer
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the agent closed the connection")
                self._buf += data
        except (OSError, ValueError):
            self.close()
            raise


def _publish_line(stream: str, data: bytes) -> bytes:
    payload = base64.b64encode(data).decode("ascii")
    return json.dumps({"op": "publish", "stream": stream, "payload": payload}).encode() + b"\n"


def _batches(lines: Iterable[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if len(batch) >= BATCH_REQUESTS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _error(answer: dict[str, object], accepted: list[int]) -> AgentError:
    return AgentError(str(answer.get("error")), str(answer.get("message")), list(accepted))
