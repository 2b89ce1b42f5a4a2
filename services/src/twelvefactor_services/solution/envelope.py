"""The data envelope (docs/protocol.md, solution side) and retry timing, without I/O."""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from twelvefactor_services.management.logic import PayloadError, number, parse_object

STREAM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_SEQ = 2**63 - 1  # SQLite INTEGER


@dataclass(frozen=True)
class Envelope:
    device: str
    seq: int
    stream: str
    ts: float
    body: dict[str, Any]  # everything the device sent, unknown fields included

    def record(self, received_ts: float) -> str:
        """What receivers get: the envelope plus the time the service accepted it."""
        return json.dumps({**self.body, "received_ts": received_ts}, separators=(",", ":"))


def parse_envelope(device: str, rest: tuple[str, ...], raw: bytes) -> Envelope:
    """Validate ``sol/<device>/up/<rest>``'s payload; PayloadError says why it is dropped."""
    if len(rest) != 2 or rest[0] != "data":
        raise PayloadError(f"unexpected solution topic suffix {'/'.join(rest)!r}")
    topic_stream = rest[1]
    obj = parse_object(raw)
    if obj.get("device") != device:
        raise PayloadError(f"envelope names device {obj.get('device')!r} but came from {device!r}")
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise PayloadError(f"field 'seq' is not an integer in 0..2^63-1: {seq!r}")
    stream = obj.get("stream")
    if not isinstance(stream, str) or not STREAM_RE.fullmatch(stream):
        raise PayloadError(f"field 'stream' is not a valid stream name: {stream!r}")
    if stream != topic_stream:
        raise PayloadError(f"envelope stream {stream!r} but topic stream {topic_stream!r}")
    ts = number(obj, "ts")
    payload = obj.get("payload")
    if not isinstance(payload, str):
        raise PayloadError("field 'payload' is not a base64 string")
    try:
        binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        raise PayloadError(f"field 'payload' is not valid base64: {exc}") from None
    return Envelope(device, seq, stream, ts, obj)


def backoff(attempt: int, first: float = 0.5, cap: float = 30.0) -> float:
    """Delay before retry number ``attempt`` (1-based): doubling from ``first`` up to ``cap``."""
    if attempt < 1:
        return 0.0
    return float(min(cap, first * 2 ** min(attempt - 1, 32)))
