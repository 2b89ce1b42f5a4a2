"""The fleet as operators look at it: `GET /devices` a page at a time, filtered in SQL, and
`GET /fleet`, the counts the console's overview shows.

A fleet of thousands is never sent whole (issue 15: the whole list, 2,000 devices and
half a megabyte of JSON, was the operator API's slowest answer). Pages are keyset pages
in id order (`after` = the last id of the page before): stable while devices come and go,
and as cheap at the millionth device as at the first.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.protocol.names import FLEET_GROUP_RE, TAG_RE

from twelvefactor_services.management.logic import OVERDUE_AFTER
from twelvefactor_services.management.registry import DEVICES_LISTED, device_summary
from twelvefactor_services.management.store import Db

PAGE = 500  # devices per page unless `limit` says
PAGE_MAX = 1000
PRESENCES = ("online", "asleep", "overdue", "offline")
UNKNOWN_VERSION = "unknown"  # the version filter's word for a device that reported none
_ID_PART_RE = re.compile(r"[a-z0-9-]{1,63}")

# presence (logic.presence) in SQL; parameters: overdue_after, now
PRESENCE_SQL = (
    "CASE WHEN d.online IS NULL THEN NULL WHEN d.online <> 0 THEN 'online'"
    " WHEN d.checkin_due IS NULL THEN 'offline'"
    " WHEN d.checkin_due + ? >= ? THEN 'asleep' ELSE 'overdue' END"
)


class QueryError(ValueError):
    """A filter that cannot match anything by its form (a 400, with this text)."""


@dataclass(frozen=True)
class DeviceQuery:
    """One page of the devices matching every filter given, in id order."""

    limit: int = PAGE
    after: str | None = None  # the last id of the page before
    q: str | None = None  # part of the id
    group: str | None = None  # configuration group
    tag: str | None = None
    version: str | None = None  # what it runs, or UNKNOWN_VERSION
    presence: str | None = None  # one of PRESENCES

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= PAGE_MAX:
            raise QueryError(f"limit must be an integer in 1..{PAGE_MAX}")
        if self.q is not None and not _ID_PART_RE.fullmatch(self.q):
            raise QueryError("q must be part of a device id (a-z, 0-9 and -)")
        if self.group is not None and not FLEET_GROUP_RE.fullmatch(self.group):
            raise QueryError(f"no group can be named {self.group[:70]!r}")
        if self.tag is not None and not TAG_RE.fullmatch(self.tag):
            raise QueryError(f"no tag can be {self.tag[:70]!r}")
        if self.presence is not None and self.presence not in PRESENCES:
            raise QueryError(f"presence must be one of {', '.join(PRESENCES)}")


def _like(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\' (an id or tag may hold `_`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_devices(
    db: Db, query: DeviceQuery | None = None, overdue_after: float = OVERDUE_AFTER
) -> list[dict[str, Any]]:
    """The page `query` asks for (the first `PAGE` devices by default); the next page is
    `after=<the last id>` while a page comes back full."""
    query = query or DeviceQuery()
    where: list[str] = ["d.id > ?"]
    params: list[object] = [query.after or ""]
    if query.q is not None:
        where.append("d.id LIKE ? ESCAPE '\\'")
        params.append(f"%{_like(query.q)}%")
    if query.group is not None:
        where.append("d.grp = ?")
        params.append(query.group)
    if query.tag is not None:  # tags are a sorted JSON list of TAG_RE words: '"tag"' is one
        where.append("d.tags LIKE ? ESCAPE '\\'")
        params.append(f'%"{_like(query.tag)}"%')
    if query.version == UNKNOWN_VERSION:
        where.append("d.os_version IS NULL")
    elif query.version is not None:
        where.append("d.os_version = ?")
        params.append(query.version)
    if query.presence is not None:
        where.append(f"{PRESENCE_SQL} = ?")
        params += [overdue_after, time.time(), query.presence]
    rows = db.execute(
        f"SELECT * FROM ({DEVICES_LISTED}) AS d WHERE {' AND '.join(where)} ORDER BY d.id LIMIT ?",
        (*params, query.limit),
    ).fetchall()
    return [device_summary(r, overdue_after) for r in rows]


def fleet(db: Db, overdue_after: float = OVERDUE_AFTER) -> dict[str, Any]:
    """The fleet in numbers: devices in service by presence and by version, the retired,
    and every tag and version in use (the console's filters offer them)."""
    rows = db.execute(
        f"SELECT {PRESENCE_SQL} AS presence, d.os_version, d.tags,"
        " CASE WHEN d.retired IS NULL THEN 0 ELSE 1 END AS retired, COUNT(*) AS n"
        f" FROM ({DEVICES_LISTED}) AS d GROUP BY 1, 2, 3, 4",
        (overdue_after, time.time()),
    ).fetchall()
    by_presence = dict.fromkeys((*PRESENCES, "never_seen"), 0)
    versions: dict[str | None, int] = {}
    tags: set[str] = set()
    in_service = retired = 0
    for r in rows:
        n = int(r["n"])
        if r["tags"]:
            tags.update(json.loads(r["tags"]))
        if r["retired"]:
            retired += n
            continue
        in_service += n
        by_presence[r["presence"] or "never_seen"] += n
        versions[r["os_version"]] = versions.get(r["os_version"], 0) + n
    return {
        "devices": in_service,
        "retired": retired,
        "presence": by_presence,
        "versions": [
            {"version": v, "devices": n}
            for v, n in sorted(versions.items(), key=lambda vn: (vn[0] is None, vn[0] or ""))
        ],
        "tags": sorted(tags),
    }
