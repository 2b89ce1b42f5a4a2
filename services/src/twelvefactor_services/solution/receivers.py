"""Receivers: where accepted messages go. ``deliver`` raises ReceiverError to be retried."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from twelvefactor_agent.protocol.names import DEVICE_ID_RE


class ReceiverError(Exception):
    """The receiver did not take the message; it stays in the outbox for a retry."""


class Receiver(Protocol):
    name: str

    def reset(self) -> None:
        """Forget cached state: another copy may have delivered since we last held the lease."""

    def deliver(self, device: str, queue_id: str, seq: int, record: str) -> None: ...


def archive_lines(path: Path) -> Iterator[bytes]:
    """The whole lines of an archive file, one at a time (a device's file can be large:
    it is never read into memory at once). A torn last line is not yielded."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a generator holds it open)
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if line.endswith(b"\n"):
                yield line


def read_archive(path: Path) -> list[dict[str, Any]]:
    """The records of one device's archive file, in the order they were written."""
    return [json.loads(line) for line in archive_lines(path)]


class ArchiveReceiver:
    """Append-only JSON lines per device, ``<dir>/<device>.jsonl``, each line fsync'd.

    Exactly once per (device, seq), across restarts: the seqs already in a
    device's file are read back before its first append, so a message
    delivered just before a crash (and redelivered after it) is not written
    twice. A torn last line (crash mid-write) is cut off and rewritten.
    """

    name = "archive"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        # device -> (queue_id, seq) already in its file ("" for lines before queue ids)
        self._seen: dict[str, set[tuple[str, int]]] = {}

    def reset(self) -> None:
        self._seen.clear()

    def path(self, device: str) -> Path:
        if not DEVICE_ID_RE.fullmatch(device):  # the topic's id names a file: be strict
            raise ValueError(f"invalid device id {device!r}")
        return self.dir / f"{device}.jsonl"

    def _load(self, device: str) -> set[tuple[str, int]]:
        seen = self._seen.get(device)
        if seen is not None:
            return seen
        seen = set()
        path = self.path(device)
        whole = 0  # bytes in whole lines
        for line in archive_lines(path):
            record = json.loads(line)
            seen.add((str(record.get("queue_id", "")), int(record["seq"])))
            whole += len(line)
        if path.exists() and path.stat().st_size != whole:
            with open(path, "r+b") as f:  # a line torn by a crash: cut it off
                f.truncate(whole)
                os.fsync(f.fileno())
        self._seen[device] = seen
        return seen

    def deliver(self, device: str, queue_id: str, seq: int, record: str) -> None:
        seen = self._load(device)
        if (queue_id, seq) in seen:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(device)
        new = not path.exists()
        try:
            with open(path, "ab") as f:
                f.write(record.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            if new:  # make the new file's directory entry durable too
                fd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self._seen.pop(device, None)  # re-read the file before the retry
            raise ReceiverError(f"archive write failed: {exc}") from exc
        seen.add((queue_id, seq))


class WebhookReceiver:
    """HTTP POST of each record (JSON) to a URL; any 2xx answer is success."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://: {url!r}")
        self.url = url
        self.timeout = timeout

    def reset(self) -> None:
        pass

    def deliver(self, device: str, queue_id: str, seq: int, record: str) -> None:
        req = urllib.request.Request(
            self.url,
            data=record.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Twelvefactor-Device": device,
                "X-Twelvefactor-Seq": str(seq),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise ReceiverError(f"webhook answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ReceiverError(f"webhook unreachable: {exc}") from None
