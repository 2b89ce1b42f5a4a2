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
    group: int  # deliveries made durable (flush) and forgotten by the outbox together

    def reset(self) -> None:
        """Forget cached state: another copy may have delivered since we last held the lease."""

    def deliver(self, device: str, queue_id: str, seq: int, record: str) -> None: ...

    def flush(self) -> None:
        """Make what `deliver` took durable (the outbox forgets it next); ReceiverError if
        it could not: all of it is offered again."""


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
    """Append-only JSON lines per device, ``<dir>/<device>.jsonl``, fsync'd by `flush`
    once per file and batch (before the outbox forgets the batch), not once per line.

    Exactly once per (device, seq), across restarts: the seqs already in a
    device's file are read back before its first append, so a message
    delivered just before a crash (and redelivered after it) is not written
    twice. A torn last line (crash mid-write) is cut off and rewritten.
    """

    name = "archive"
    group = 100  # one fsync per file per 100 messages, not one per line

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        # device -> (queue_id, seq) already in its file ("" for lines before queue ids)
        self._seen: dict[str, set[tuple[str, int]]] = {}
        self._unsynced: set[str] = set()  # devices whose file has lines not yet fsync'd
        self._new_file = False  # a file made since the last flush: fsync the folder too

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
        self._new_file |= not path.exists()
        try:
            with open(path, "ab") as f:
                f.write(record.encode() + b"\n")
        except OSError as exc:
            self._seen.pop(device, None)  # re-read the file before the retry
            raise ReceiverError(f"archive write failed: {exc}") from exc
        seen.add((queue_id, seq))
        self._unsynced.add(device)

    def flush(self) -> None:
        unsynced, self._unsynced = self._unsynced, set()
        try:
            for device in sorted(unsynced):
                _fsync(self.path(device))
            if self._new_file:  # the new files' directory entries, durable too
                _fsync(self.dir)
                self._new_file = False
        except OSError as exc:
            for device in unsynced:
                self._seen.pop(device, None)  # re-read the files before the retry
            raise ReceiverError(f"archive write failed: {exc}") from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WebhookReceiver:
    """HTTP POST of each record (JSON) to a URL; any 2xx answer is success."""

    name = "webhook"
    group = 1  # forgotten at once: a crash sends it at most one message again

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://: {url!r}")
        self.url = url
        self.timeout = timeout

    def reset(self) -> None:
        pass

    def flush(self) -> None:
        pass  # a 2xx answer is the receiver's word that it has it

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
