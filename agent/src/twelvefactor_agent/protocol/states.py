"""Job and configuration states as the protocol carries them.

An update job (docs/protocol.md, "Updates"):

    queued ──> downloading ──> installing ──> rebooting ──> verifying ──> succeeded
       │            │              │              │             │
       └────────────┴──────────────┴──> failed    └─────────────┴──> rolled_back, failed

The management service keeps `queued`; the device reports the rest.
`downloading` and `installing` repeat with a percent; `failed` carries a reason;
the last three are final. A configuration version ends applied, rejected or
reverted (docs/protocol.md, "Configuration").
"""

from __future__ import annotations

QUEUED = "queued"
DOWNLOADING = "downloading"
INSTALLING = "installing"
REBOOTING = "rebooting"
VERIFYING = "verifying"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"

JOB_STATES = (QUEUED, DOWNLOADING, INSTALLING, REBOOTING, VERIFYING, SUCCEEDED, FAILED, ROLLED_BACK)
FINAL = frozenset({SUCCEEDED, FAILED, ROLLED_BACK})
WITH_PERCENT = frozenset({DOWNLOADING, INSTALLING})
REPORTABLE = frozenset(JOB_STATES) - {QUEUED}

# state -> states a report may move it to (a state with a percent may repeat)
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({DOWNLOADING, FAILED}),
    DOWNLOADING: frozenset({DOWNLOADING, INSTALLING, FAILED}),
    INSTALLING: frozenset({INSTALLING, REBOOTING, FAILED}),
    REBOOTING: frozenset({VERIFYING, ROLLED_BACK, FAILED}),
    VERIFYING: frozenset({SUCCEEDED, ROLLED_BACK, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    ROLLED_BACK: frozenset(),
}

APPLIED = "applied"
REJECTED = "rejected"
REVERTED = "reverted"
CONFIG_STATUSES = (APPLIED, REJECTED, REVERTED)
# A configuration version is in 1..2^53: exact in every JSON implementation, and
# far enough below SQLite's 2^63 that the service's "one above" never overflows.
CONFIG_VERSION_MAX = 2**53
