"""Job and configuration states as the protocol carries them.

An update job (docs/protocol.md, "Updates"):

    queued ──> downloading ──> installing ──> rebooting ──> verifying ──> succeeded
       │          │   ↑            ↑   │              │             │
       │          ↓   │            │   │              │             │
       │         downloaded ───────┘   │              │             │
       └──────────────┴────────────────┴──> failed    └─────────────┴──> rolled_back, failed

The management service keeps `queued`; the device reports the rest.
`downloading` and `installing` repeat with a percent; `failed` carries a reason;
the last three are final. `downloaded` is a job held before its install (a
download-only job): the device has the checked file and waits for the go; it
may come straight from `queued` (the service missed the downloads while the
device was offline) and go back to `downloading` (the file went from /data).
A configuration version ends applied, rejected or reverted (docs/protocol.md,
"Configuration").
"""

from __future__ import annotations

QUEUED = "queued"
DOWNLOADING = "downloading"
DOWNLOADED = "downloaded"
INSTALLING = "installing"
REBOOTING = "rebooting"
VERIFYING = "verifying"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"

JOB_STATES = (
    QUEUED,
    DOWNLOADING,
    DOWNLOADED,
    INSTALLING,
    REBOOTING,
    VERIFYING,
    SUCCEEDED,
    FAILED,
    ROLLED_BACK,
)
FINAL = frozenset({SUCCEEDED, FAILED, ROLLED_BACK})
WITH_PERCENT = frozenset({DOWNLOADING, INSTALLING})
REPORTABLE = frozenset(JOB_STATES) - {QUEUED}

# state -> states a report may move it to (a state with a percent may repeat)
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({DOWNLOADING, DOWNLOADED, FAILED}),
    DOWNLOADING: frozenset({DOWNLOADING, DOWNLOADED, INSTALLING, FAILED}),
    DOWNLOADED: frozenset({DOWNLOADING, INSTALLING, FAILED}),
    # installing -> downloading: a delta the device gave up for the full .swu (issue 14)
    INSTALLING: frozenset({INSTALLING, DOWNLOADING, REBOOTING, FAILED}),
    REBOOTING: frozenset({VERIFYING, ROLLED_BACK, FAILED}),
    VERIFYING: frozenset({SUCCEEDED, ROLLED_BACK, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    ROLLED_BACK: frozenset(),
}

# How a job's install goes (its `install` field): at once, held after the
# download until the service sends the same job with "now", or cancelled while
# held (the device drops the file and reports `failed`, reason `cancelled`).
INSTALL_NOW = "now"
INSTALL_HOLD = "hold"
INSTALL_CANCEL = "cancel"
INSTALL_MODES = (INSTALL_NOW, INSTALL_HOLD, INSTALL_CANCEL)

APPLIED = "applied"
REJECTED = "rejected"
REVERTED = "reverted"
CONFIG_STATUSES = (APPLIED, REJECTED, REVERTED)
# A configuration version is in 1..2^53: exact in every JSON implementation, and
# far enough below SQLite's 2^63 that the service's "one above" never overflows.
CONFIG_VERSION_MAX = 2**53
