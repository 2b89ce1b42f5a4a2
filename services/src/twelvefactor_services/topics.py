"""The services' shared-subscription groups (topic names: twelvefactor_agent.protocol.topics).

mosquitto 2.0.11 never checks a SUBSCRIBE filter against an ``acl_file``; it
only checks READ rights on each message as it delivers it. A device may
therefore subscribe to ``$share/<group>/mgmt/+/up/#`` and, if ``<group>`` is
the services' group, join it: the broker hands every n-th message to the
device, the ACL refuses delivery, and the message is dropped for the whole
group. The services' group name is therefore a secret (``share_group``),
derived from the service's private key unless set explicitly: copies that
share a certificate share a group, devices cannot guess it.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def share_group(service: str, key_file: Path) -> str:
    """``<service>-<32 hex>``: an HMAC of the service name under the service's private key."""
    digest = hmac.new(key_file.read_bytes(), f"share-group:{service}".encode(), hashlib.sha256)
    return f"{service}-{digest.hexdigest()[:32]}"


def shared(group: str, topic_filter: str) -> str:
    return f"$share/{group}/{topic_filter}"
