"""The local API's server: JSON lines over a Unix stream socket (docs/protocol.md).

Only I/O lives here: one thread with a selector accepts clients, moves bytes
between their sockets and their protocol state (connection.py, pure: framing,
limits, answer order), commits all the publishes of a round in one
transaction (one fsync however many clients and requests), and carries out
calls through the one call table (calls.py, pure: deadlines, bound) and the
solution session. The agent never listens on a network socket: this is its
only listener.
"""

from __future__ import annotations

import contextlib
import errno
import grp
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

from twelvefactor_agent.forward.queue import Queue, QueueUnavailable
from twelvefactor_agent.localapi.calltable import Answered, CallEvent, CallTable, Reply
from twelvefactor_agent.localapi.connection import (
    MAX_LINE,
    CallRequest,
    Checkin,
    Connection,
    Publish,
    Received,
    Refusal,
    Status,
    encode,
)
from twelvefactor_agent.localapi.proxycall import Call, refusal

# Read at most this much from one connection per round (fairness between clients).
READ_BUDGET = 4 * MAX_LINE
EXPIRE_INTERVAL = 60.0
# The agent is the device's only link and must outlive any application: clients
# are bounded in number, in what they may leave unfinished, and in idle time.
MAX_CLIENTS = 256  # and always well below the descriptor limit (_client_cap)
RESERVED_FDS = 64  # descriptors kept for the queue, the sessions, downloads, logs
TOTAL_UNFINISHED = 32 * 1024 * 1024  # bytes of unfinished lines over all clients
UNFINISHED_TIMEOUT = 30.0  # seconds a client may sit on an unfinished line
IDLE_TIMEOUT = 600.0  # seconds a client may stay connected doing nothing
ACCEPT_PAUSE = 1.0  # after EMFILE/ENFILE: stop accepting this long (no busy loop)
LOG_EVERY = 10.0  # a repeated warning at most this often (with the count)
CHECK_EVERY = 1.0  # how often the limits above are checked

# Hands a call (id, MQTT request, timeout) to the solution session: the route
# (the session's connection) it went out on, or None if the session is offline.
SubmitCall = Callable[[bytes, bytes, float], int | None]

log = logging.getLogger("twelvefactor.api")


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


def _client_cap() -> int:
    """MAX_CLIENTS, or fewer if the process may open fewer descriptors than that needs."""
    soft = os.sysconf("SC_OPEN_MAX")  # the soft RLIMIT_NOFILE (no python3-resource needed)
    if soft <= 0:
        return MAX_CLIENTS
    return max(1, min(MAX_CLIENTS, soft - RESERVED_FDS))


class _Conn:
    """A client socket and its protocol state (connection.py)."""

    __slots__ = ("active", "closed", "events", "proto", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.proto = Connection()
        self.events = 0  # 0: not registered with the selector
        self.closed = False
        self.active = now  # the last time it sent a whole request (or connected)


class _RateLimitedLog:
    """One line per LOG_EVERY seconds for a repeated warning, with how often it happened."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def warning(self, key: str, text: str, now: float) -> None:
        self._count[key] = self._count.get(key, 0) + 1
        if now - self._last.get(key, -LOG_EVERY) >= LOG_EVERY:
            count = self._count.pop(key)
            self._last[key] = now
            log.warning("%s%s", text, f" ({count} times)" if count > 1 else "")


TOO_MANY = encode({"ok": False, "error": "unavailable", "message": "too many clients"})


class ApiServer(threading.Thread):
    def __init__(
        self,
        listener: socket.socket,
        queue: Queue,
        status: Callable[[], dict[str, object]],
        on_commit: Callable[[], None],
        submit_call: SubmitCall | None = None,
        checkin: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(name="local-api", daemon=True)
        self.listener = listener
        self.queue = queue
        self.status = status
        self.on_commit = on_commit
        self.checkin = checkin
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
        # The one call table (this thread's); the solution session reports into _reported.
        self.calls: CallTable[tuple[_Conn, int]] = CallTable()
        self._reported: deque[CallEvent] = deque()
        self.conns: set[_Conn] = set()
        # Why publishes are refused (the queue is only in memory), or None.
        self.refuse_publish: str | None = None
        self.max_clients = _client_cap()
        self._accepting = True
        self._accept_again = 0.0
        self._next_check = 0.0
        self._warn = _RateLimitedLog()

    def report_call(self, event: CallEvent) -> None:
        """A call answered, or a connection and its calls lost (from the session thread)."""
        self._reported.append(event)
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\1")

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\0")

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
            if now >= self._next_check:
                self._next_check = now + CHECK_EVERY
                self._check_clients(now)
            deadline = self.calls.next_deadline()
            due = min(self._next_expire, self._next_check)
            due = due if deadline is None else min(due, deadline)
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
                self._flush(conn)

    def _settle_calls(self, now: float) -> list[_Conn]:
        """What the session reported and the calls that timed out; the connections they touch."""
        settled: list[Answered[tuple[_Conn, int]]] = []
        while self._reported:
            event = self._reported.popleft()
            answered = self.calls.receive(event)
            if not answered and isinstance(event, Reply):
                log.info("dropped a proxy answer that matches no call in progress")
            settled += answered
        settled += self.calls.poll(now)
        touched = []
        for (conn, slot), answer in settled:
            conn.proto.answer(slot, answer)
            touched.append(conn)
        return touched

    def _start_call(self, conn: _Conn, slot: int, call: Call) -> None:
        if self.calls.full:
            conn.proto.answer(slot, refusal("unavailable", "too many calls in progress"))
            return
        if self.submit_call is None:
            conn.proto.answer(slot, refusal("unavailable", "calls are not available"))
            return
        call_id = os.urandom(16)
        route = self.submit_call(call_id, call.request_payload(), call.timeout)
        if route is None:
            answer = refusal("unavailable", "the solution service is not connected")
            conn.proto.answer(slot, answer)
            return
        self.calls.start(time.monotonic(), call_id, call.timeout, route, (conn, slot))

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
            now = time.monotonic()
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of descriptors (EMFILE and friends): stop selecting the listener
                # for a moment, or accept would be retried in a busy loop; the clients
                # already connected go on being served.
                self._warn.warning("accept", f"accept: {exc}: pausing new clients", now)
                self._pause_accepting(now)
                return
            if len(self.conns) >= self.max_clients:
                self._warn.warning(
                    "too-many", f"refused a client: {self.max_clients} connected already", now
                )
                with contextlib.suppress(OSError):
                    sock.send(TOO_MANY)
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, now)
            conn.events = selectors.EVENT_READ
            self.sel.register(sock, conn.events, conn)
            self.conns.add(conn)

    def _pause_accepting(self, now: float) -> None:
        if self._accepting:
            self.sel.unregister(self.listener)
            self._accepting = False
        self._accept_again = now + ACCEPT_PAUSE

    def _check_clients(self, now: float) -> None:
        """Close clients that sit on an unfinished line or idle too long; accept again."""
        if not self._accepting and now >= self._accept_again:
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
            self._accepting = True
        for conn in list(self.conns):
            proto = conn.proto
            quiet = now - conn.active
            if proto.buffered and quiet > UNFINISHED_TIMEOUT:
                why = f"an unfinished line for {UNFINISHED_TIMEOUT:.0f} s"
            elif not proto.waiting and quiet > IDLE_TIMEOUT:
                why = f"idle for {IDLE_TIMEOUT:.0f} s"
            else:
                continue
            self._warn.warning(why, f"closed a client: {why}", now)
            proto.abort()
            self._flush(conn)

    def _read(self, conn: _Conn) -> None:
        budget = READ_BUDGET
        proto = conn.proto
        while budget > 0 and proto.reading:
            try:
                data = conn.sock.recv(min(budget, 256 * 1024))
            except BlockingIOError:
                return
            except OSError:
                proto.abort()
                return
            proto.receive_data(data)
            budget -= len(data)
            if not data:
                return
            if b"\n" in data:
                conn.active = time.monotonic()
            elif proto.buffered > MAX_LINE // 4 and self._unfinished() > TOTAL_UNFINISHED:
                # Many clients each sitting on a long unfinished line: the one that
                # pushes the total over the budget goes (its line was not accepted).
                now = time.monotonic()
                self._warn.warning(
                    "unfinished", "closed a client: unfinished lines over their budget", now
                )
                proto.abort()
                return

    def _unfinished(self) -> int:
        return sum(c.proto.buffered for c in self.conns)

    def _answer(self, conns: list[_Conn]) -> None:
        # Take every complete request of every connection, then commit once.
        work: list[tuple[_Conn, Received]] = []
        publishes: list[tuple[str, bytes]] = []
        for conn in conns:
            while isinstance(got := conn.proto.next_request(self.max_message_bytes), Received):
                work.append((conn, got))
                if isinstance(got.request, Publish):
                    publishes.append((got.request.stream, got.request.payload))
        seqs: list[int] = []
        failure: str | None = self.refuse_publish
        if publishes and failure is None:
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
        for conn, (slot, request) in work:
            if isinstance(request, Publish):
                if failure is None:
                    # The common answer, formatted directly (hot path).
                    conn.proto.answer(slot, b'{"ok":true,"seq":%d}\n' % next(next_seq))
                    continue
                answer: dict[str, object] = Refusal("unavailable", failure).answer()
            elif isinstance(request, CallRequest):
                self._start_call(conn, slot, request.call)
                continue
            elif isinstance(request, Status | Checkin):
                if isinstance(request, Checkin):
                    self.checkin()  # the agent's main thread wakes the sessions
                if status is None:
                    status = self._status()
                answer = status
            else:
                answer = request.answer()
            conn.proto.answer(slot, encode(answer))

    def _status(self) -> dict[str, object]:
        try:
            return {"ok": True, **self.status()}
        except QueueUnavailable as exc:
            return Refusal("unavailable", str(exc)).answer()

    def _flush(self, conn: _Conn) -> None:
        proto = conn.proto
        if conn.closed:
            return  # touched twice in a round, or a late call answer
        while data := proto.data_to_send():
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                break
            except OSError:
                proto.abort()
                break
            proto.sent(sent)
            if sent < len(data):
                break
        if proto.done:
            if conn.events:
                self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.closed = True
            self.conns.discard(conn)
            return
        # Closing with answers left, or too many unread answers: only write.
        # Waiting for a call after the client's EOF: nothing to select on until it ends.
        events = selectors.EVENT_WRITE if proto.wants_write else 0
        if proto.reading:
            events |= selectors.EVENT_READ
        if events != conn.events:
            if not events:
                self.sel.unregister(conn.sock)
            elif not conn.events:
                self.sel.register(conn.sock, events, conn)
            else:
                self.sel.modify(conn.sock, events, conn)
            conn.events = events
