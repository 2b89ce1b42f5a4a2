"""twelvefactor-artifact: build, inspect and verify signed `.swu` files outside Yocto.

One way to make an update artifact here: the reference-image builder
(refimage/swu.py, refimage/updates.py) calls these functions, and the layer's
twelvefactor-update recipe renders the same sw-description template. The
`.swu` format itself (cpio reader and writer, sw-description parser) is
`twelvefactor_services.artifact.swu`, shared with the management service.
"""

from __future__ import annotations


class ArtifactToolError(Exception):
    """A build, inspection or verification could not be done; the message says why."""
