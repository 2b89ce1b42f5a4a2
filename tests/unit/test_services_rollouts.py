"""Phased rollouts: the request, the phase sizes and each step's decision, without I/O."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twelvefactor_services.management import jobstore
from twelvefactor_services.management.rollouts import (
    PAUSED,
    RUNNING,
    SCHEDULED,
    Phase,
    Progress,
    RolloutError,
    Spec,
    decide,
    parse_spec,
    phase_sizes,
)
from twelvefactor_services.management.store import Db

SHA = "a" * 64


def spec(**kw: object) -> Spec:
    doc: dict[str, object] = {"artifact": SHA, "group": "field"}
    doc.update(kw)
    return parse_spec(doc)


def test_a_request_with_every_field() -> None:
    s = parse_spec(
        {
            "artifact": SHA,
            "devices": ["dev-1", "dev-2"],
            "phases": [{"count": 1}, {"percent": 100}],
            "success_percent": 90,
            "success_min": 1,
            "error_percent": 25,
            "error_min": 4,
            "on_error": "abort",
            "start_at": 1_900_000_000,
        }
    )
    assert s.devices == ("dev-1", "dev-2") and s.group is None
    assert s.phases == (Phase(count=1), Phase(percent=100.0))
    assert (s.error_percent, s.error_min, s.on_error) == (25.0, 4, "abort")


def test_every_problem_is_listed() -> None:
    with pytest.raises(RolloutError) as info:
        parse_spec(
            {
                "artifact": "abc",
                "group": "field",
                "devices": ["dev-1", "dev-1"],
                "phases": [{"count": 0}, {"percent": 150}, {"count": 2, "percent": 5}],
                "error_percent": -1,
                "error_min": 0,
                "on_error": "ignore",
                "colour": "red",
            }
        )
    assert info.value.problems == [
        "unknown field 'colour'",
        "artifact must be the artifact's sha256",
        "give exactly one target: group, devices or tags",
        "devices lists a device twice",
        'phase 1: {"count": N > 0} or {"percent": 0 < P <= 100}',
        'phase 2: {"count": N > 0} or {"percent": 0 < P <= 100}',
        'phase 3: {"count": N > 0} or {"percent": 0 < P <= 100}',
        "error_percent must be a number in 0..100",
        "error_min must be a number in 1..100000",
        "on_error must be 'pause' or 'abort'",
    ]
    with pytest.raises(RolloutError, match="give exactly one target"):
        parse_spec({"artifact": SHA})
    with pytest.raises(RolloutError, match="tags must be a list of 1 to 20 tags"):
        parse_spec({"artifact": SHA, "tags": ["Site Berlin"]})
    assert parse_spec({"artifact": SHA, "tags": ["site:b", "bench", "bench"]}).tags == (
        "bench",
        "site:b",
    )
    with pytest.raises(RolloutError, match="JSON object"):
        parse_spec([SHA])


@pytest.mark.parametrize(
    ("total", "phases", "sizes"),
    [
        (20, [Phase(count=4), Phase(percent=50), Phase(percent=100)], [4, 10, 6]),
        (20, [Phase(count=4), Phase(count=4)], [4, 16]),  # the last takes the rest
        (3, [Phase(count=4), Phase(percent=50), Phase(percent=100)], [3]),  # empty ones dropped
        (7, [Phase(percent=10), Phase(percent=100)], [1, 6]),  # rounded up
        (0, [Phase(count=1)], []),
    ],
)
def test_phase_sizes(total: int, phases: list[Phase], sizes: list[int]) -> None:
    assert phase_sizes(total, tuple(phases)) == sizes


def progress(**kw: int) -> Progress:
    base = {
        "phase": 0,
        "phases": 3,
        "phase_size": 4,
        "phase_succeeded": 0,
        "succeeded": 0,
        "failed": 0,
        "unfinished": 4,
    }
    base.update(kw)
    return Progress(**base)


def test_a_scheduled_rollout_starts_at_its_time() -> None:
    later = spec(start_at=1000)
    assert decide(later, SCHEDULED, None, 999).action == "wait"
    assert decide(later, SCHEDULED, None, 1000).action == "start"
    assert decide(spec(), SCHEDULED, None, 0).action == "start"


def test_the_error_threshold_waits_for_the_minimum_then_pauses() -> None:
    s = spec(error_percent=25, error_min=4)
    assert decide(s, RUNNING, progress(failed=2, unfinished=2), 0).action == "wait"
    d = decide(s, RUNNING, progress(failed=2, succeeded=2, phase_succeeded=2, unfinished=0), 0)
    assert (d.action, d.reason) == ("pause", "error threshold 25% reached (2 of 4)")
    aborting = spec(error_percent=25, error_min=4, on_error="abort")
    assert decide(aborting, RUNNING, progress(failed=4, unfinished=0), 0).action == "abort"


def test_failures_accepted_by_resuming_do_not_count_again() -> None:
    s = spec(error_percent=25, error_min=4, success_percent=50)
    p = progress(failed=2, succeeded=2, phase_succeeded=2, unfinished=0)
    resumed = Progress(**{**p.__dict__, "accepted_failed": 2, "accepted_executed": 4})
    assert decide(s, RUNNING, resumed, 0).action == "next"


def test_the_success_threshold_moves_to_the_next_phase_and_the_last_finishes() -> None:
    s = spec(success_percent=75, success_min=2, error_percent=50, error_min=4)
    assert decide(s, RUNNING, progress(succeeded=2, phase_succeeded=2), 0).action == "wait"
    d = decide(s, RUNNING, progress(succeeded=3, phase_succeeded=3, unfinished=1), 0)
    assert (d.action, d.reason) == ("next", "success threshold 75% reached in phase 1 (3 of 4)")
    last = progress(phase=2, succeeded=19, phase_succeeded=5, phase_size=6, unfinished=1)
    assert decide(s, RUNNING, last, 0).action == "wait"  # every job ends before it finishes
    done = progress(phase=2, succeeded=19, failed=1, phase_succeeded=5, phase_size=6, unfinished=0)
    d = decide(s, RUNNING, done, 0)
    assert (d.action, d.reason) == ("finish", "19 succeeded, 1 failed or rolled back")


def test_a_paused_rollout_does_nothing() -> None:
    assert decide(spec(), PAUSED, progress(succeeded=4, phase_succeeded=4), 0).action == "wait"


def test_download_only_and_its_install_time() -> None:
    s = spec(download_only=True, install_at=1_900_000_000)
    assert s.download_only and s.install_at == 1_900_000_000
    assert not spec().download_only
    with pytest.raises(RolloutError) as info:
        spec(install_at=1_900_000_000)
    assert info.value.problems == ["install_at is for a download-only rollout"]
    with pytest.raises(RolloutError, match="download_only must be true or false"):
        spec(download_only="yes")


def test_a_registry_from_before_download_only_gets_its_columns(tmp_path: Path) -> None:
    """An older registry (no `install`, `install_at`, `go`) opens with them added, its rows
    read as jobs that install at once; opening it again changes nothing."""
    path = tmp_path / "registry.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE update_jobs (id TEXT PRIMARY KEY, artifact TEXT NOT NULL,
            target TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE device_jobs (job TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL,
            percent INTEGER, reason TEXT, updated REAL NOT NULL,
            published INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job, device));
        INSERT INTO update_jobs VALUES ('j-000000000001', 'ab', 'device:dev-1', 1.0);
        INSERT INTO device_jobs VALUES ('j-000000000001', 'dev-1', 'queued', NULL, NULL, 1.0, 1);
        """
    )
    old.close()
    for _ in range(2):
        db = Db(path)
        job = jobstore.get_job(db, "j-000000000001")
        assert job is not None and job["install_at"] is None
        assert job["devices"][0]["install"] == "now"
        assert "go" in {r[1] for r in db.execute("PRAGMA table_info(rollouts)")}
        db.close()
