"""Decide whether to take an update job: pure logic, no I/O.

The management service publishes a job, retained, on `mgmt/<id>/down/update`
(docs/protocol.md). Before downloading anything the agent checks, in order,
that the job is well formed, that it names this device, that the artifact is
built for this hardware (`/etc/hwrevision`, SWUpdate's own file), that its
version is newer than the running one (a downgrade or a reinstall only if the
device's policy allows it) and that /data has room. Each refusal is a
specific reason code that the agent reports as the job's `failed` reason.
SWUpdate checks the signature and the hardware again when installing: these
checks spare the download, they are not the security boundary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.names import JOB_ID_RE, SHA256_RE, VERSION_RE
from twelvefactor_agent.protocol.states import FAILED, INSTALL_MODES, INSTALL_NOW

MAX_SIZE = 1 << 40
# Room kept free on /data beyond the artifact: the queue and state files live there too.
DEFAULT_RESERVE = 32 * 1024 * 1024

INVALID_JOB = "invalid_job"
WRONG_DEVICE = "wrong_device"
NO_HWREVISION = "no_hwrevision"
WRONG_HARDWARE = "wrong_hardware"
VERSION_UNKNOWN = "version_unknown"
SAME_VERSION = "same_version"
DOWNGRADE = "downgrade"
NO_SPACE = "no_space"


class Delta(NamedTuple):
    """A job's delta .swu (issue 14): tried first, the full .swu if anything fails."""

    sha256: str
    size: int
    url: str


class UpdateJob(NamedTuple):
    job: str
    device: str
    version: str
    hardware: dict[str, tuple[str, ...]]  # board ("" = any board) -> revisions
    sha256: str
    size: int
    url: str
    install: str = INSTALL_NOW  # "now", "hold" (download only) or "cancel" (a held job)
    delta: Delta | None = None


class Refusal(NamedTuple):
    reason: str  # one of the reason codes above
    detail: str


class Policy(NamedTuple):
    allow_downgrade: bool = False
    reserve_bytes: int = DEFAULT_RESERVE


DEFAULT_POLICY = Policy()


class JobError(ProtocolError):
    pass


def parse_job(payload: bytes) -> UpdateJob:
    """The job in a `down/update` payload; JobError says what is wrong."""
    doc = envelope.parse(payload, error=JobError)
    job = envelope.text(doc, "job", pattern=JOB_ID_RE, error=JobError)
    version = envelope.text(doc, "version", pattern=VERSION_RE, error=JobError)
    sha = envelope.text(doc, "sha256", pattern=SHA256_RE, error=JobError)
    size = envelope.integer(doc, "size", 1, MAX_SIZE, error=JobError)
    url = _url(envelope.text(doc, "url", error=JobError))
    delta: Delta | None = None
    if "delta" in doc:
        d = doc["delta"]
        if not isinstance(d, dict):
            raise JobError("delta must be an object {sha256, size, url}")
        try:
            delta = Delta(
                envelope.text(d, "sha256", pattern=SHA256_RE, error=JobError),
                envelope.integer(d, "size", 1, MAX_SIZE, error=JobError),
                _url(envelope.text(d, "url", error=JobError)),
            )
        except JobError as exc:  # said as the delta's: the job's own fields are the same
            raise JobError(f"delta: {exc}") from None
    hw = doc.get("hardware")
    if not isinstance(hw, dict) or not hw:
        raise JobError("hardware must be a non-empty object {board: [revisions]}")
    hardware: dict[str, tuple[str, ...]] = {}
    for board, revs in hw.items():
        if not isinstance(revs, list) or not revs or not all(isinstance(r, str) for r in revs):
            raise JobError(f"hardware[{board!r}] must be a non-empty list of strings")
        hardware[board] = tuple(revs)
    device = envelope.text(doc, "device", error=JobError)
    install = doc.get("install", INSTALL_NOW)
    if install not in INSTALL_MODES:
        raise JobError(f"install must be one of {', '.join(INSTALL_MODES)}, got {install!r}")
    return UpdateJob(job, device, version, hardware, sha, size, url, install, delta)


def _url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise JobError(f"url must be https://host..., got {url!r}")
    return url


def version_key(version: str) -> tuple[int, ...]:
    """Dotted numeric versions compare as numbers, trailing zeros ignored (1.2 == 1.2.0)."""
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid version {version!r}")
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def hardware_matches(hardware: dict[str, tuple[str, ...]], hwrevision: str) -> bool:
    """SWUpdate's rule: `<board> <revision>` from /etc/hwrevision, the revision listed for
    the board (or in a list outside any board); `#RE:` entries are regular expressions."""
    fields = hwrevision.split()
    if len(fields) != 2:
        return False
    board, revision = fields
    for key in (board, ""):
        for accepted in hardware.get(key, ()):
            if accepted.startswith("#RE:"):
                try:
                    if re.fullmatch(accepted[4:], revision):
                        return True
                except re.error:
                    continue
            elif accepted == revision:
                return True
    return False


def decide(
    job: UpdateJob,
    *,
    device: str,
    hwrevision: str | None,
    os_version: str | None,
    free_bytes: int,
    partial_bytes: int = 0,
    policy: Policy = DEFAULT_POLICY,
) -> Refusal | None:
    """None if the device should download and install `job`, else why not.

    `partial_bytes` is what a previous attempt already has on /data (it resumes).
    """
    if job.device != device:
        return Refusal(WRONG_DEVICE, f"job for {job.device!r}, this device is {device!r}")
    if hwrevision is None:
        return Refusal(NO_HWREVISION, "/etc/hwrevision is missing or empty")
    if not hardware_matches(job.hardware, hwrevision):
        return Refusal(WRONG_HARDWARE, f"artifact not built for {hwrevision!r}")
    running = _maybe_key(os_version)
    if running is None and not policy.allow_downgrade:
        return Refusal(VERSION_UNKNOWN, f"running version {os_version!r} cannot be compared")
    if running is not None and not policy.allow_downgrade:
        offered = version_key(job.version)
        if offered == running:
            return Refusal(SAME_VERSION, f"version {job.version} is already running")
        if offered < running:
            return Refusal(DOWNGRADE, f"{job.version} is older than {os_version} (policy)")
    needed = max(0, job.size - max(0, partial_bytes)) + policy.reserve_bytes
    if free_bytes < needed:
        return Refusal(NO_SPACE, f"needs {needed} bytes free on /data, {free_bytes} free")
    return None


def _maybe_key(version: str | None) -> tuple[int, ...] | None:
    if version is None or not VERSION_RE.fullmatch(version):
        return None
    return version_key(version)


def report_payload(
    job: str,
    state: str,
    *,
    ts: float,
    percent: int | None = None,
    reason: str | None = None,
    path: str | None = None,
    fallback: str | None = None,
    after: Sequence[str] = (),
) -> bytes:
    """A report for `mgmt/<id>/up/update` (docs/protocol.md, "Updates"); `path` is the
    artifact in hand ("delta" or "full"), `fallback` why a delta was given up, `after`
    (a final report) the steps that lead to it."""
    doc: dict[str, Any] = {"v": envelope.V, "job": job, "state": state, "ts": ts}
    if after:
        doc["after"] = list(after)
    if percent is not None:
        doc["percent"] = percent
    if reason is not None:
        doc["reason"] = reason
    if path is not None:
        doc["path"] = path
    if fallback is not None:
        doc["fallback"] = fallback
    return envelope.dumps(doc)


def refusal_payload(job: UpdateJob, refusal: Refusal, ts: float) -> bytes:
    return report_payload(job.job, FAILED, ts=ts, reason=f"{refusal.reason}: {refusal.detail}")


class ProgressGate:
    """Which progress reports to send: every state change, then every `step` percent.

    A download calls back every 64 KiB; over a metered link a report each time
    would cost more than the progress is worth.
    """

    def __init__(self, step: int = 5) -> None:
        if not 1 <= step <= 100:
            raise ValueError(f"step must be in 1..100, got {step}")
        self.step = step
        self._last: tuple[str, int] | None = None

    def percent(self, done: int, total: int) -> int:
        return 100 if total <= 0 else min(100, done * 100 // total)

    def should_report(self, state: str, percent: int) -> bool:
        last = self._last
        if (
            last is None
            or last[0] != state
            or percent == 100 != last[1]
            or abs(percent - last[1]) >= self.step
        ):
            self._last = (state, percent)
            return True
        return False
