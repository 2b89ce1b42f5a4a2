"""The payloads the agent publishes (docs/protocol.md). Pure: values in, bytes out."""

from __future__ import annotations

import base64
from typing import Any

from twelvefactor_agent.forward.queue import Message, QueueStats
from twelvefactor_agent.protocol.envelope import V, dumps


def online(ts: float) -> bytes:
    return dumps({"v": V, "online": True, "ts": ts})


def will() -> bytes:
    return dumps({"v": V, "online": False, "reason": "lost"})


def shutdown(ts: float, reason: str = "shutdown") -> bytes:
    """The goodbye: reason "shutdown", or "reconfigure" when the sessions restart."""
    return dumps({"v": V, "online": False, "reason": reason, "ts": ts})


def asleep(ts: float, next_checkin: float) -> bytes:
    """The goodbye of a metered device: back by `next_checkin` (its clock)."""
    return dumps(
        {"v": V, "online": False, "reason": "asleep", "ts": ts, "next_checkin": next_checkin}
    )


def meta(
    *,
    ts: float,
    device: str,
    agent_version: str,
    os: dict[str, str | None],
    kernel: str,
    machine: str,
    hardware: str | None,
    slot: str | None,
    boot: dict[str, object] | None,
) -> bytes:
    return dumps(
        {
            "v": V,
            "ts": ts,
            "device": device,
            "agent_version": agent_version,
            "os": os,
            "kernel": kernel,
            "machine": machine,
            "hardware": hardware,
            "slot": slot,
            "boot": boot,
        }
    )


def health(**fields: Any) -> bytes:
    """The health report (`health_fields`) as it goes on the wire."""
    return dumps(health_fields(**fields))


def health_fields(
    *,
    ts: float,
    uptime_s: float | None,
    load: list[float] | None,
    memory: dict[str, int | None],
    data: dict[str, object],
    slot: str | None,
    os_version: str | None,
    agent_version: str,
    queue: QueueStats,
    last_error: str | None,
) -> dict[str, object]:
    return {
        "v": V,
        "ts": ts,
        "uptime_s": uptime_s,
        "load": load,
        "memory": memory,
        "data": data,
        "slot": slot,
        "os_version": os_version,
        "agent_version": agent_version,
        "queue": queue.as_json(),
        "last_error": last_error,
    }


def data_envelope(device: str, queue_id: str, message: Message) -> bytes:
    """The solution-side envelope. Built by formatting rather than json.dumps: it
    is the per-message hot path, and device ids and stream names never need
    escaping (their patterns exclude quotes and backslashes); json renders
    floats with repr() too, so the bytes are the same."""
    return b"".join(
        (
            b'{"v":1,"device":"',
            device.encode(),
            b'","queue_id":"',
            queue_id.encode(),
            b'","seq":',
            str(message.seq).encode(),
            b',"stream":"',
            message.stream.encode(),
            b'","ts":',
            repr(float(message.ts)).encode(),
            b',"payload":"',
            base64.b64encode(message.payload),
            b'"}',
        )
    )
