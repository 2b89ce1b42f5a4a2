"""Identifier patterns both sides check: device ids, streams, jobs, digests, versions, services.

A device id is also the CN of the device's certificate and a topic level, so
its pattern excludes everything MQTT and JSON would need to escape; the same
holds for streams and service names. Match with ``fullmatch``.
"""

from __future__ import annotations

import re

DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
STREAM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
JOB_ID_RE = re.compile(r"j-[a-z0-9]{1,32}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Dotted numbers, compared as numbers (update.version_key).
VERSION_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,5}")
# A third-party API by name (the solution service holds its URL and credentials).
SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# The path of a proxied call: RFC 3986 path characters only (no ?, #, space, ..-tricks decoded).
PATH_RE = re.compile(r"/[A-Za-z0-9\-._~%!$&'()*+,;=:@/]*")
# The identity of a device's queue file (the data envelope's queue_id): 64 random bits.
QUEUE_ID_RE = re.compile(r"[0-9a-f]{16}")
# A fleet group in the management service (not a Unix group).
FLEET_GROUP_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# A fleet tag given at enrolment (`twelvefactor-hub enrol --tag`), e.g. `site:berlin`.
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_.:=-]{0,62}")
# An HTTP header name (RFC 9110 token), bounded.
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
