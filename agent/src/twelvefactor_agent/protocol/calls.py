"""Calls by service name (docs/protocol.md, "Calls by service name"): what both ends bound.

The device's request and the solution service's answer travel as one MQTT
message each; the body rides base64 inside one local-API line (1 MiB) on the
device, so it is bounded well below that, and both ends refuse the same things.
"""

from __future__ import annotations

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
MAX_BODY = 512 * 1024
MAX_PATH = 2048
MAX_HEADERS = 32
MAX_HEADER_VALUE = 1024
MAX_QUERY = 64
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
ERRORS = (
    "bad_request",
    "unknown_service",
    "not_allowed",
    "upstream_error",
    "timeout",
    "too_large",
    "unavailable",
)
