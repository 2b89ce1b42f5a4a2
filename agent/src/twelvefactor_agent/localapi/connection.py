"""One local-API client connection's protocol: bytes in, requests out, answers in order. Pure.

In the style of h11: the server feeds what it read (`receive_data`, b"" for
the client's EOF), takes requests (`next_request`) until it gets NEED_DATA or
CLOSED, gives each request's answer to its slot (`answer`), and writes what
`data_to_send` holds, saying how much went (`sent`: a non-blocking socket may
take part of it). So line framing, the 1 MiB line limit, answer order and the
bound on unread answers are decided here, apart from sockets and threads, and
tested directly; localapi/server.py only moves bytes and carries out requests.

Answers leave in request order whenever they are given: a `call` is answered
seconds later and the answers behind it wait in their slots. Those waiting
answers count towards MAX_PENDING_OUTPUT like the unsent ones: a client that
does not read its answers, or piles requests behind a slow call, stops being
read until they drain (bounded memory per connection).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections import deque
from typing import NamedTuple

from twelvefactor_agent.localapi.proxycall import Call, CallRefused, parse_call
from twelvefactor_agent.protocol.names import STREAM_RE

MAX_LINE = 1024 * 1024
# Stop reading a client whose answers (unsent, or waiting behind a call) exceed this.
MAX_PENDING_OUTPUT = 1024 * 1024
# At most this much per data_to_send (one socket send takes about that much).
SEND_CHUNK = 256 * 1024


class Publish(NamedTuple):
    stream: str
    payload: bytes


class Status(NamedTuple):
    pass


class Checkin(NamedTuple):
    """Check in now (the metered profile); answered with the status."""


class Refusal(NamedTuple):
    error: str
    message: str

    def answer(self) -> dict[str, object]:
        return {"ok": False, "error": self.error, "message": self.message}


class CallRequest(NamedTuple):
    call: Call


Request = Publish | Status | Checkin | CallRequest | Refusal


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
    if op == "checkin":
        return Checkin()
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


class Wait(enum.Enum):
    NEED_DATA = "need data"  # no complete line yet: read more
    CLOSED = "closed"  # no request will come any more (EOF, an overlong line)


NEED_DATA = Wait.NEED_DATA
CLOSED = Wait.CLOSED


class Received(NamedTuple):
    """A request, or its refusal, and the slot its answer goes to."""

    slot: int
    request: Request


class Connection:
    def __init__(self) -> None:
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._closed = False  # no more requests
        self._aborted = False
        # Answers owed, from slot number _first on: None until given.
        self._slots: deque[bytes | None] = deque()
        self._first = 0
        self._next = 0  # the slot of the next request
        self._queued = 0  # bytes of the given answers still in _slots

    # -- input ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """What the client sent; b"" when it closed its side."""
        if self._closed:
            return
        if data:
            self._in += data
        else:
            self._eof = True

    @property
    def reading(self) -> bool:
        """Whether to read from the client now."""
        if self._eof or self._closed:
            return False
        if len(self._out) + self._queued >= MAX_PENDING_OUTPUT:
            return False  # it does not read its answers
        # A line already too long: next_request refuses it, reading more is pointless.
        return len(self._in) <= MAX_LINE or b"\n" in self._in

    def next_request(self, max_message_bytes: int) -> Received | Wait:
        """The next request in the input, NEED_DATA, or CLOSED.

        A line over MAX_LINE is refused and ends the requests (the rest of the
        input cannot be framed reliably); a last line without its newline
        counts at EOF. Blank lines are skipped."""
        if self._closed:
            return CLOSED
        while True:
            end = self._in.find(b"\n")
            if end == -1:
                if len(self._in) > MAX_LINE or (self._eof and self._in.strip()):
                    end = len(self._in)
                elif self._eof:
                    self._close_input()
                    return CLOSED
                else:
                    return NEED_DATA
            if end > MAX_LINE:
                self._close_input()
                return self._slot(Refusal("bad_request", "line longer than 1 MiB"))
            line = bytes(self._in[:end])
            del self._in[: end + 1]
            if line.strip():
                return self._slot(parse_request(line, max_message_bytes))

    def _slot(self, request: Request) -> Received:
        self._slots.append(None)
        self._next += 1
        return Received(self._next - 1, request)

    def _close_input(self) -> None:
        self._closed = True
        self._in.clear()

    # -- output --------------------------------------------------------------------

    def answer(self, slot: int, answer: bytes | dict[str, object]) -> None:
        """The answer to the request of `slot` (an encoded line, or a JSON object)."""
        if self._aborted:
            return  # the client is gone; a late call answer goes nowhere
        data = answer if isinstance(answer, bytes) else encode(answer)
        slots = self._slots
        i = slot - self._first
        if not 0 <= i < len(slots) or slots[i] is not None:
            raise ValueError(f"slot {slot} is not waiting for an answer")
        if i:
            slots[i] = data
            self._queued += len(data)
            return
        # The first one owed: it leaves, with the answers that waited behind it.
        slots.popleft()
        self._first += 1
        self._out += data
        while slots and (waited := slots[0]) is not None:
            slots.popleft()
            self._first += 1
            self._queued -= len(waited)
            self._out += waited

    def data_to_send(self) -> bytes:
        """The answers ready to go, in order (at most SEND_CHUNK); b"" if none."""
        return bytes(self._out[:SEND_CHUNK])

    def sent(self, count: int) -> None:
        """The first `count` bytes of data_to_send went out."""
        del self._out[:count]

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken as requests (an unfinished line)."""
        return len(self._in)

    @property
    def waiting(self) -> bool:
        """Whether an answer is still owed (a call in progress, or answers not yet sent)."""
        return self._first < self._next or bool(self._out)

    @property
    def wants_write(self) -> bool:
        """Answers are ready to go."""
        return bool(self._out)

    @property
    def done(self) -> bool:
        """Nothing more to read, to answer or to send: close the socket."""
        return self._aborted or (self._closed and not self._out and not self._slots)

    def abort(self) -> None:
        """The socket failed: drop everything; answers given later go nowhere."""
        self._aborted = self._closed = True
        self._in.clear()
        self._out.clear()
        self._slots.clear()
        self._queued = 0
