"""twelvefactor device agent.

The version has one source: agent/pyproject.toml. The installed distribution's
metadata carries it (pip and the Yocto recipe both install from that file).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twelvefactor-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
