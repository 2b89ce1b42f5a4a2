"""The demo's screen: a live in-place view on a terminal (rich), plain lines otherwise.

On a terminal the URLs and paths stay pinned at the top, one row per device
below them, and the last events under the table; nothing scrolls away. Piped
into a file (or a test), the same content comes as lines: the pinned part
once, then each event as it happens and the table at every report.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from testbed.demo_watch import DeviceRow, age_text, clock

HEADERS = (
    "DEVICE",
    "STATE",
    "UP",
    "SLOT",
    "VERSION",
    "LOAD",
    "QUEUE",
    "DROPPED",
    "ARCHIVED",
    "CONFIG",
    "UPDATE",
)
EVENTS_SHOWN = 12


def cells(row: DeviceRow, archived: int, agent: str | None) -> list[str]:
    """One table row. `agent` says why a host agent is not running, if it is not."""
    state = "-" if row.online is None else ("online" if row.online else "OFFLINE")
    if row.machine:
        state = row.machine
    if agent:
        state += f" (agent {agent})"
    return [
        row.device,
        state,
        age_text(row.uptime_s),
        row.slot or ("-" if row.machine else "none"),  # a host agent has no A/B slots
        row.version or "-",
        "-" if row.load is None else f"{row.load:.2f}",
        "-" if row.queue_depth is None else str(row.queue_depth),
        "-" if row.dropped is None else str(row.dropped),
        str(archived),
        row.config or "-",
        row.job or "-",
    ]


class Screen:
    """Pinned lines, a device table and an event log, on a terminal or as plain lines."""

    def __init__(
        self, pinned: Sequence[str], *, live: bool | None = None, out: TextIO = sys.stdout
    ) -> None:
        self.pinned = list(pinned)
        self.events: deque[str] = deque(maxlen=EVENTS_SHOWN)
        self.rows: list[list[str]] = []
        self.out = out
        self.live_mode = out.isatty() if live is None else live
        self._live: Live | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Screen:
        if self.live_mode:
            console = Console(file=self.out, force_terminal=True)
            self._live = Live(self._render(), console=console, auto_refresh=False)
            self._live.__enter__()
        else:
            for line in self.pinned:
                print(line, file=self.out, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def event(self, text: str) -> None:
        line = f"{clock()}  {text}"
        self.events.append(line)
        if self._live is None:
            print(f"event {line}", file=self.out, flush=True)
        else:
            self._live.update(self._render(), refresh=True)

    def table(self, rows: list[list[str]]) -> None:
        self.rows = rows
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            return
        print(f"-- t+{time.monotonic() - self._started:5.0f} s " + "-" * 60, file=self.out)
        for line in plain_table(rows):
            print(f"  {line}", file=self.out)
        self.out.flush()

    def _render(self) -> Group:
        pinned = Panel(
            Text("\n".join(self.pinned), overflow="fold"), title="twelvefactor demo", expand=True
        )
        table = Table(expand=True)
        for h in HEADERS:
            table.add_column(h, no_wrap=h in ("DEVICE", "STATE"))
        for r in self.rows:
            style = "red" if r[1].startswith("OFFLINE") else None
            table.add_row(*r, style=style)
        events = Panel(Text("\n".join(self.events) or "(none yet)"), title="events")
        return Group(pinned, table, events)


def plain_table(rows: list[list[str]]) -> list[str]:
    """The table as aligned text lines, its header first."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*HEADERS).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]
