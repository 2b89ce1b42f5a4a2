"""The data envelope (docs/protocol.md, solution side) and retry timing, without I/O."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.protocol import batch, envelope
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.names import QUEUE_ID_RE, STREAM_RE

MAX_SEQ = batch.MAX_SEQ  # SQLite INTEGER, the protocol's bound


@dataclass(frozen=True)
class Envelope:
    device: str
    queue_id: str  # the device's queue file: seqs are unique within one
    seq: int
    stream: str
    ts: float
    body: dict[str, Any]  # everything the device sent, unknown fields included

    def record(self, received_ts: float) -> str:
        """What receivers get: the envelope plus the time the service accepted it."""
        record = {**self.body, "received_ts": received_ts}
        return json.dumps(record, separators=(",", ":"), allow_nan=False)


def parse_data(device: str, rest: tuple[str, ...], raw: bytes) -> list[Envelope]:
    """The messages in ``sol/<device>/up/<rest>``'s payload, a batch (protocol/batch.py)
    or one JSON envelope; ProtocolError says why the publish is dropped, whole."""
    if len(rest) != 2 or rest[0] != "data":
        raise ProtocolError(f"unexpected solution topic suffix {'/'.join(rest)!r}")
    if not batch.is_batch(raw):
        return [parse_envelope(device, rest, raw)]
    stream = rest[1]
    if not STREAM_RE.fullmatch(stream):
        raise ProtocolError(f"topic stream {stream!r} is not a stream name")
    queue_id, items = batch.decode(raw)
    return [
        Envelope(
            device,
            queue_id,
            seq,
            stream,
            ts,
            # What a JSON envelope of the same message holds: receivers see no difference.
            {
                "v": 1,
                "device": device,
                "queue_id": queue_id,
                "seq": seq,
                "stream": stream,
                "ts": ts,
                "payload": base64.b64encode(payload).decode(),
            },
        )
        for seq, ts, payload in items
    ]


def parse_envelope(device: str, rest: tuple[str, ...], raw: bytes) -> Envelope:
    """Validate ``sol/<device>/up/<rest>``'s JSON payload; ProtocolError says why it is dropped."""
    if len(rest) != 2 or rest[0] != "data":
        raise ProtocolError(f"unexpected solution topic suffix {'/'.join(rest)!r}")
    topic_stream = rest[1]
    obj = envelope.parse(raw)
    if obj.get("device") != device:
        raise ProtocolError(f"envelope names device {obj.get('device')!r} but came from {device!r}")
    queue_id = envelope.text(obj, "queue_id", pattern=QUEUE_ID_RE)
    seq = envelope.integer(obj, "seq", 0, MAX_SEQ)
    stream = envelope.text(obj, "stream", pattern=STREAM_RE)
    if stream != topic_stream:
        raise ProtocolError(f"envelope stream {stream!r} but topic stream {topic_stream!r}")
    ts = envelope.number(obj, "ts")
    payload = obj.get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("field 'payload' is not a base64 string")
    try:
        binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        raise ProtocolError(f"field 'payload' is not valid base64: {exc}") from None
    return Envelope(device, queue_id, seq, stream, ts, obj)


def backoff(attempt: int, first: float = 0.5, cap: float = 30.0) -> float:
    """Delay before retry number ``attempt`` (1-based): doubling from ``first`` up to ``cap``."""
    if attempt < 1:
        return 0.0
    return float(min(cap, first * 2 ** min(attempt - 1, 32)))
