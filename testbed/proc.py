"""Running a command, stopping a process and reading its log: one way for the whole test bed.

The functions are the product's own (`twelvefactor_services.process`, which the
hub uses): the test bed runs tools and stops processes exactly as the shipped
hub does, and there is one copy of each.
"""

from __future__ import annotations

from twelvefactor_services.process import CommandError, read_log, run, stop, tail

__all__ = ["CommandError", "TestbedError", "read_log", "run", "stop", "tail"]


class TestbedError(RuntimeError):
    """A step of the test bed failed; the message names the command or the wait."""

    __test__ = False  # not a test class, whatever pytest's name patterns say
