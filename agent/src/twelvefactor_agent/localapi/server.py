"""The local API: JSON lines over a Unix stream socket (docs/protocol.md).

Request parsing is pure (`parse_request`). The server is one thread with a
selector: each round it reads everything available on every ready
connection, commits all the publishes of the round in one transaction (one
fsync however many clients and requests), then answers each request in order.
A client that does not read its answers stops being read (bounded memory).
The agent never listens on a network socket: this is its only listener.

A `call` (proxycall.py) is answered later, when the solution service's response
arrives or its timeout passes; answers stay in request order per connection,
so the answers behind a call wait for it (slots).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import grp
import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from twelvefactor_agent.forward.queue import Queue, QueueUnavailable
from twelvefactor_agent.localapi.proxycall import Call, CallRefused, parse_call, refusal
from twelvefactor_agent.protocol.names import STREAM_RE

MAX_LINE = 1024 * 1024
# Read at most this much from one connection per round (fairness between clients).
READ_BUDGET = 4 * MAX_LINE
# Stop reading from a client whose unread answers exceed this.
MAX_PENDING_OUTPUT = 1024 * 1024
EXPIRE_INTERVAL = 60.0
# Proxy calls waiting for their answer, over all connections.
MAX_CALLS = 1024
# The solution service answers within the call's timeout; this is for the trip back.
CALL_GRACE = 1.0

log = logging.getLogger("twelvefactor.api")


class Publish(NamedTuple):
    stream: str
    payload: bytes


class Status(NamedTuple):
    pass


class Refusal(NamedTuple):
    error: str
    message: str

    def answer(self) -> dict[str, object]:
        return {"ok": False, "error": self.error, "message": self.message}


class CallRequest(NamedTuple):
    call: Call


Request = Publish | Status | CallRequest | Refusal


def parse_request(line: bytes, max_message_bytes: int) -> Request:
    """One request line (without its newline) to what it asks, or why it is refused."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return Refusal("bad_request", "not a JSON object")
    if not isinstance(doc, dict):
        return Refusal("bad_request", "not a JSON object")
    op = doc.get("op")
    if op == "status":
        return Status()
    if op == "call":
        try:
            return CallRequest(parse_call(doc))
        except CallRefused as exc:
            return Refusal(exc.error, exc.message)
    if op != "publish":
        return Refusal("bad_request", f"unknown op {op!r}"[:200])
    stream = doc.get("stream")
    if not isinstance(stream, str) or not STREAM_RE.fullmatch(stream):
        return Refusal("bad_request", "stream must match [A-Za-z0-9_.-]{1,64}")
    encoded = doc.get("payload")
    if not isinstance(encoded, str):
        return Refusal("bad_request", "payload must be a base64 string")
    # Refuse by size before decoding: base64 is 4 bytes per 3.
    if len(encoded) // 4 * 3 - 2 > max_message_bytes:
        return Refusal("too_large", f"payload is over {max_message_bytes} bytes")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return Refusal("bad_request", "payload is not valid base64")
    if len(payload) > max_message_bytes:
        return Refusal("too_large", f"payload is over {max_message_bytes} bytes")
    return Publish(stream, payload)


def encode(answer: dict[str, object]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode() + b"\n"


def bind_socket(path: Path, group: str | None) -> socket.socket:
    """Listen at `path` with mode 0660 and the given group; a stale socket file is removed."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(
                errno.EINVAL, f"agent.socket_group: group {group!r} does not exist"
            ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by an agent that was killed
        else:
            raise OSError(errno.EADDRINUSE, f"another agent is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # The umask makes the socket 0660 from its first moment (bind creates it).
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if gid != -1 and path.stat().st_gid != gid:
        os.chown(path, -1, gid)  # the agent must be a member of the group
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Conn:
    __slots__ = ("broken", "closed", "closing", "eof", "events", "inbuf", "outbuf", "slots", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.eof = False
        self.closing = False  # close once outbuf is flushed and no call is pending
        self.closed = False
        self.broken = False  # a socket error: close at once
        self.events = 0  # 0: not registered with the selector
        # Answers waiting behind an unanswered call, in request order.
        self.slots: deque[_Slot] = deque()


class _Slot:
    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


class _PendingCall:
    __slots__ = ("conn", "deadline", "slot", "timeout")

    def __init__(self, conn: _Conn, slot: _Slot, deadline: float, timeout: float) -> None:
        self.conn = conn
        self.slot = slot
        self.deadline = deadline
        self.timeout = timeout


class ApiServer(threading.Thread):
    def __init__(
        self,
        listener: socket.socket,
        queue: Queue,
        status: Callable[[], dict[str, object]],
        on_commit: Callable[[], None],
        submit_call: Callable[[bytes, bytes, float], bool] | None = None,
    ) -> None:
        super().__init__(name="local-api", daemon=True)
        self.listener = listener
        self.queue = queue
        self.status = status
        self.on_commit = on_commit
        self.max_message_bytes = queue.settings.max_message_bytes
        self.sel = selectors.DefaultSelector()
        self._stop_r, self._stop_w = socket.socketpair()
        self._stop_r.setblocking(False)
        self._stop_w.setblocking(False)
        self._stopping = False
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None
        self._next_expire = 0.0
        self.last_error: Callable[[str], None] = lambda text: None
        self.submit_call = submit_call
        self._calls: dict[bytes, _PendingCall] = {}
        self._completed: deque[tuple[bytes, dict[str, object]]] = deque()

    def complete_call(self, call_id: bytes, answer: dict[str, object]) -> None:
        """The answer to a call arrived (from any thread)."""
        self._completed.append((call_id, answer))
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\1")

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\0")

    @property
    def calls_pending(self) -> int:
        return len(self._calls)

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            self.error = exc
            log.exception("local API thread failed")
        finally:
            for key in list(self.sel.get_map().values()):
                if isinstance(key.data, _Conn):
                    key.data.sock.close()
            self.sel.close()

    def _serve(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        while not self._stopping:
            now = time.monotonic()
            self.heartbeat = now
            if now >= self._next_expire:
                self._next_expire = now + EXPIRE_INTERVAL
                self._expire()
            due = min([self._next_expire, *(c.deadline for c in self._calls.values())])
            ready = self.sel.select(timeout=min(1.0, max(0.0, due - now)))
            touched: list[_Conn] = []
            for key, mask in ready:
                if key.data == "listen":
                    self._accept()
                elif key.data == "stop":
                    try:
                        signal = self._stop_r.recv(4096)
                    except BlockingIOError:
                        signal = b""
                    if self._stopping or b"\0" in signal:
                        return
                else:
                    conn = key.data
                    assert isinstance(conn, _Conn)
                    if mask & selectors.EVENT_READ:
                        self._read(conn)
                    touched.append(conn)
            self._answer(touched)
            touched += self._settle_calls(time.monotonic())
            for conn in touched:
                if not conn.closed:
                    self._flush(conn)

    def _settle_calls(self, now: float) -> list[_Conn]:
        """Answers that arrived and calls that timed out; the connections they touch."""
        touched = []
        while self._completed:
            call_id, answer = self._completed.popleft()
            pending = self._calls.pop(call_id, None)
            if pending is not None:  # else: answered already (timed out)
                touched.append(self._fill(pending, answer))
        for call_id, pending in list(self._calls.items()):
            if now >= pending.deadline:
                del self._calls[call_id]
                answer = refusal(
                    "timeout", f"no answer from the solution service within {pending.timeout:g} s"
                )
                touched.append(self._fill(pending, answer))
        return touched

    def _fill(self, pending: _PendingCall, answer: dict[str, object]) -> _Conn:
        pending.slot.data = encode(answer)
        conn = pending.conn
        while conn.slots and conn.slots[0].data is not None:
            conn.outbuf += conn.slots.popleft().data or b""
        return conn

    def _emit(self, conn: _Conn, data: bytes) -> None:
        if conn.slots:
            conn.slots.append(_Slot(data))
        else:
            conn.outbuf += data

    def _start_call(self, conn: _Conn, call: Call) -> None:
        if len(self._calls) >= MAX_CALLS:
            self._emit(conn, encode(refusal("unavailable", "too many calls in progress")))
            return
        if self.submit_call is None:
            self._emit(conn, encode(refusal("unavailable", "calls are not available")))
            return
        call_id = os.urandom(16)
        if not self.submit_call(call_id, call.request_payload(), call.timeout):
            answer = refusal("unavailable", "the solution service is not connected")
            self._emit(conn, encode(answer))
            return
        slot = _Slot()
        conn.slots.append(slot)
        deadline = time.monotonic() + call.timeout + CALL_GRACE
        self._calls[call_id] = _PendingCall(conn, slot, deadline, call.timeout)

    def _expire(self) -> None:
        try:
            dropped = self.queue.expire()
        except QueueUnavailable as exc:
            self.last_error(f"queue: expiry failed: {exc}")
            return
        if dropped:
            log.warning("dropped %d messages older than queue.max_age", dropped)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                log.warning("accept: %s", exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            conn.events = selectors.EVENT_READ
            self.sel.register(sock, conn.events, conn)

    def _read(self, conn: _Conn) -> None:
        budget = READ_BUDGET
        while budget > 0 and not conn.eof:
            try:
                data = conn.sock.recv(min(budget, 256 * 1024))
            except BlockingIOError:
                return
            except OSError:
                conn.eof = True
                conn.closing = True
                conn.broken = True
                return
            if not data:
                conn.eof = True
                return
            conn.inbuf += data
            budget -= len(data)
            if len(conn.inbuf) > MAX_LINE and b"\n" not in conn.inbuf:
                return  # _answer refuses the line

    def _answer(self, conns: list[_Conn]) -> None:
        # Parse every complete line of every connection, then commit once.
        work: list[tuple[_Conn, list[Request]]] = []
        publishes: list[tuple[str, bytes]] = []
        for conn in conns:
            if conn.closing:
                continue
            requests: list[Request] = []
            while True:
                end = conn.inbuf.find(b"\n")
                if end == -1:
                    if len(conn.inbuf) > MAX_LINE:
                        end = len(conn.inbuf)  # refused below
                    elif conn.eof and conn.inbuf.strip():
                        end = len(conn.inbuf)  # a last request without its newline
                    else:
                        break
                if end > MAX_LINE:
                    requests.append(Refusal("bad_request", "line longer than 1 MiB"))
                    conn.inbuf.clear()
                    conn.closing = True
                    break
                line = bytes(conn.inbuf[:end])
                del conn.inbuf[: end + 1]
                if not line.strip():
                    continue
                request = parse_request(line, self.max_message_bytes)
                requests.append(request)
                if isinstance(request, Publish):
                    publishes.append((request.stream, request.payload))
            if conn.eof:
                conn.closing = True
            if requests:
                work.append((conn, requests))
        seqs: list[int] = []
        failure: str | None = None
        if publishes:
            try:
                seqs = self.queue.append_many(publishes)
            except QueueUnavailable as exc:
                failure = str(exc)
                log.error("queue: cannot store %d messages: %s", len(publishes), exc)
                self.last_error(f"queue: {exc}")
            else:
                self.on_commit()
        status: dict[str, object] | None = None
        next_seq = iter(seqs)
        for conn, requests in work:
            for request in requests:
                if isinstance(request, Publish):
                    if failure is None:
                        # The common answer, formatted directly (hot path).
                        self._emit(conn, b'{"ok":true,"seq":%d}\n' % next(next_seq))
                        continue
                    answer: dict[str, object] = Refusal("unavailable", failure).answer()
                elif isinstance(request, CallRequest):
                    self._start_call(conn, request.call)
                    continue
                elif isinstance(request, Status):
                    if status is None:
                        status = self._status()
                    answer = status
                else:
                    answer = request.answer()
                self._emit(conn, encode(answer))

    def _status(self) -> dict[str, object]:
        try:
            return {"ok": True, **self.status()}
        except QueueUnavailable as exc:
            return Refusal("unavailable", str(exc)).answer()

    def _flush(self, conn: _Conn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                break
            except OSError:
                conn.outbuf.clear()
                conn.closing = True
                conn.broken = True
                break
            del conn.outbuf[:sent]
        if conn.broken or (conn.closing and not conn.outbuf and not conn.slots):
            if conn.events:
                self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.closed = True
            conn.slots.clear()  # answers to calls still running go nowhere
            return
        # Closing with answers left: only write. Too many unread answers: only write.
        # Waiting for a call after the client's EOF: nothing to select on until it ends.
        events = selectors.EVENT_WRITE if conn.outbuf else 0
        if len(conn.outbuf) < MAX_PENDING_OUTPUT and not conn.closing:
            events |= selectors.EVENT_READ
        if events != conn.events:
            if not events:
                self.sel.unregister(conn.sock)
            elif not conn.events:
                self.sel.register(conn.sock, events, conn)
            else:
                self.sel.modify(conn.sock, events, conn)
            conn.events = events
