"""The data batch: several queued messages of one stream in one binary publish.

A JSON envelope per message cost 2.5 times its payload on the wire (base64,
field names, an MQTT packet, a TLS record and the tunnel's headers each;
issue 18). A batch carries consecutive messages of one stream, in seq order,
on the same topic as one message would take (`sol/<id>/up/data/<stream>`):

    MAGIC (4 bytes: 00 'T' 'F' 'B'; JSON never starts with a zero byte)
    version, 1 byte (1)
    queue id length, 1 byte; the queue id (ASCII)
    then each message:
        seq, 8 bytes, unsigned big-endian
        ts, 8 bytes, IEEE 754 double big-endian (seconds since the epoch)
        payload length, 4 bytes, unsigned big-endian; the payload

20 bytes per message beyond its payload. The solution service turns each
into the same record a JSON envelope gives receivers (docs/protocol.md).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol, TypeVar

from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.names import QUEUE_ID_RE

MAGIC = b"\x00TFB"
VERSION = 1
_HEAD = struct.Struct(">QdI")  # seq, ts, payload length
MAX_SEQ = 2**63 - 1  # SQLite INTEGER
# A batch stops growing past this many payload bytes (a larger message goes alone):
# well inside the broker's packet limit, and one batch is at most this much to resend.
BATCH_BYTES = 64 * 1024


class Item(NamedTuple):
    seq: int
    ts: float
    payload: bytes


class Batched(NamedTuple):
    queue_id: str
    items: list[Item]


def is_batch(raw: bytes) -> bool:
    return raw[:4] == MAGIC


def encode(queue_id: str, items: Sequence[tuple[int, float, bytes]]) -> bytes:
    """A batch of (seq, ts, payload), seqs increasing."""
    qid = queue_id.encode()
    parts = [MAGIC, bytes((VERSION, len(qid))), qid]
    for seq, ts, payload in items:
        parts.append(_HEAD.pack(seq, ts, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode(raw: bytes) -> Batched:
    """A batch's queue id and messages, or ProtocolError saying what is wrong with it."""
    if not is_batch(raw):
        raise ProtocolError("not a data batch (no magic)")
    if len(raw) < 6:
        raise ProtocolError("data batch: truncated header")
    if raw[4] != VERSION:
        raise ProtocolError(f"data batch: unsupported version {raw[4]}")
    end = 6 + raw[5]
    if len(raw) < end:
        raise ProtocolError("data batch: truncated queue id")
    try:
        queue_id = raw[6:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("data batch: queue id is not ASCII") from None
    if not QUEUE_ID_RE.fullmatch(queue_id):
        raise ProtocolError(f"data batch: {queue_id!r} is not a queue id")
    items: list[Item] = []
    at = end
    while at < len(raw):
        if len(raw) - at < _HEAD.size:
            raise ProtocolError(f"data batch: message {len(items) + 1} has a truncated header")
        seq, ts, size = _HEAD.unpack_from(raw, at)
        at += _HEAD.size
        if len(raw) - at < size:
            raise ProtocolError(f"data batch: message {len(items) + 1} is truncated")
        if seq > MAX_SEQ:
            raise ProtocolError(f"data batch: seq {seq} is out of range")
        if not math.isfinite(ts):
            raise ProtocolError(
                f"data batch: message {len(items) + 1} has a time that is not finite"
            )
        if items and seq <= items[-1].seq:
            raise ProtocolError(f"data batch: seq {seq} is not above {items[-1].seq}")
        items.append(Item(seq, ts, raw[at : at + size]))
        at += size
    if not items:
        raise ProtocolError("data batch: no messages")
    return Batched(queue_id, items)


class Queued(Protocol):
    @property
    def stream(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


M = TypeVar("M", bound=Queued)


def runs(messages: Sequence[M], max_bytes: int = BATCH_BYTES) -> Iterator[list[M]]:
    """Consecutive messages of one stream, at most `max_bytes` of payload each (a larger
    message alone): the batches to publish, in seq order."""
    run: list[M] = []
    size = 0
    for m in messages:
        if run and (m.stream != run[0].stream or size + len(m.payload) > max_bytes):
            yield run
            run, size = [], 0
        run.append(m)
        size += len(m.payload)
    if run:
        yield run
