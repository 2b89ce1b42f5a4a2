"""The update job's record and what the agent does with it after a (re)start."""

from __future__ import annotations

import json

import pytest
from twelvefactor_agent.protocol.states import TRANSITIONS
from twelvefactor_agent.update import steps
from twelvefactor_agent.update.steps import (
    Download,
    Finish,
    Hold,
    Install,
    Reboot,
    Record,
    RecordError,
    Verify,
)

BOOT = "boot-1"
RECORD = Record("j-abc", "1.1", "0" * 64, 1000, "https://10.0.0.1:8443/a.swu", "downloading", "A")
IDLE_ENV = {"slot": "A", "upgrade_available": "0", "bootcount": "0"}
INSTALLED_B = {"slot": "B", "upgrade_available": "1", "bootcount": "0"}


def test_record_round_trips() -> None:
    r = RECORD._replace(state="rebooting", target_slot="B", boot_id=BOOT, installs=2)
    assert steps.parse_record(r.to_json()) == r
    done = r.finished("failed", "install_failed: x")
    assert steps.parse_record(done.to_json()) == done


FULL = ("1" * 64, 5000, "https://10.0.0.1:8443/full.swu")
DELTA_RECORD = RECORD._replace(full=FULL)


def test_a_delta_record_round_trips_with_its_full_swu() -> None:
    assert DELTA_RECORD.path == "delta" and RECORD.path == "full"
    assert steps.parse_record(DELTA_RECORD.to_json()) == DELTA_RECORD
    assert steps.parse_record(DELTA_RECORD.to_json()).full == FULL  # a tuple, as saved
    fell_back = RECORD._replace(fallback="install_failed: delta handler: x", installs=0)
    parsed = steps.parse_record(fell_back.to_json())
    assert parsed == fell_back and parsed.path == "full"


def test_a_record_from_before_delta_updates_reads_as_the_full_path() -> None:
    raw = RECORD.to_json().replace(b',\n "full": null', b"").replace(b',\n "fallback": null', b"")
    assert b"full" not in raw and b"fallback" not in raw
    parsed = steps.parse_record(raw)
    assert parsed == RECORD and parsed.path == "full" and parsed.fallback is None


@pytest.mark.parametrize(
    "full",
    [
        "x",
        {"sha256": FULL[0], "size": FULL[1], "url": FULL[2]},
        [FULL[0], FULL[1]],
        [*FULL, "extra"],
        [FULL[0], str(FULL[1]), FULL[2]],
        [FULL[0], True, FULL[2]],
        [FULL[0], 5000.0, FULL[2]],
        [None, FULL[1], FULL[2]],
    ],
)
def test_a_malformed_full_is_refused(full: object) -> None:
    doc = json.loads(DELTA_RECORD.to_json())
    doc["full"] = full
    with pytest.raises(RecordError, match=r"full is not \[sha256, size, url\]"):
        steps.parse_record(json.dumps(doc).encode())


@pytest.mark.parametrize("fallback", [1, ["x"], {"why": "x"}, True])
def test_a_fallback_of_the_wrong_type_is_refused(fallback: object) -> None:
    doc = json.loads(RECORD.to_json())
    doc["fallback"] = fallback
    with pytest.raises(RecordError, match="fallback has the wrong type"):
        steps.parse_record(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "job": "j-a"}',
        RECORD.to_json().replace(b'"downloading"', b'"dancing"'),
        RECORD.to_json().replace(b"1000", b'"1000"'),
        RECORD.finished("exploded", None).to_json(),
        RECORD._replace(hold=True).to_json().replace(b"true", b'"yes"'),
    ],
)
def test_bad_records_are_refused(raw: bytes) -> None:
    with pytest.raises(RecordError):
        steps.parse_record(raw)


def test_download_continues() -> None:
    assert steps.resume(RECORD, running_slot="A", boot_id=BOOT, env=IDLE_ENV) == Download()


def test_a_record_from_before_download_only_reads_as_not_held() -> None:
    raw = RECORD.to_json().replace(b',\n "hold": false', b"")
    assert b"hold" not in raw and steps.parse_record(raw) == RECORD


def test_a_held_download_holds_again_and_a_released_one_installs() -> None:
    held = RECORD._replace(state="downloaded", hold=True)
    assert steps.resume(held, running_slot="A", boot_id=BOOT, env=IDLE_ENV) == Hold()
    released = held._replace(hold=False)
    assert steps.resume(released, running_slot="A", boot_id=BOOT, env=IDLE_ENV) == Install()


def test_install_is_retried_after_a_cut_until_the_limit() -> None:
    r = RECORD._replace(state="installing", installs=1)
    assert steps.resume(r, running_slot="A", boot_id=BOOT, env=IDLE_ENV) == Install()
    # SWUpdate marks its transaction; a cut inside it leaves the old slot selected
    mid = {**INSTALLED_B, "recovery_status": "in_progress"}
    assert steps.resume(r, running_slot="A", boot_id=BOOT, env=mid) == Install()
    worn = r._replace(installs=steps.MAX_INSTALLS)
    step = steps.resume(worn, running_slot="A", boot_id=BOOT, env=IDLE_ENV)
    assert isinstance(step, Finish) and step.state == "failed"
    assert step.reason.startswith("install_interrupted")


def test_install_that_finished_unnoticed_goes_on_to_the_reboot() -> None:
    r = RECORD._replace(state="installing", installs=1)
    assert steps.resume(r, running_slot="A", boot_id=BOOT, env=INSTALLED_B) == Reboot("B")


def test_after_the_reboot_the_new_slot_is_verified() -> None:
    r = RECORD._replace(state="rebooting", target_slot="B", boot_id=BOOT)
    env = {**INSTALLED_B, "bootcount": "1"}
    assert steps.resume(r, running_slot="B", boot_id="boot-2", env=env) == Verify()


def test_same_boot_requests_the_reboot_again() -> None:
    r = RECORD._replace(state="rebooting", target_slot="B", boot_id=BOOT)
    assert steps.resume(r, running_slot="A", boot_id=BOOT, env=INSTALLED_B) == Reboot("B")
    step = steps.resume(r, running_slot="A", boot_id=BOOT, env=IDLE_ENV)
    assert isinstance(step, Finish) and step.reason.startswith("boot_environment")


def test_back_on_the_old_slot_is_a_rollback_with_the_reason() -> None:
    r = RECORD._replace(state="rebooting", target_slot="B", boot_id=BOOT)
    env = {"slot": "A", "upgrade_available": "0", "bootcount": "0", "rollback": "B"}
    step = steps.resume(r, running_slot="A", boot_id="boot-5", env=env)
    assert isinstance(step, Finish) and step.state == "rolled_back"
    assert "slot B did not confirm itself in 3 boots" in step.reason
    other = steps.resume(r, running_slot="A", boot_id="boot-5", env=IDLE_ENV)
    assert isinstance(other, Finish) and "came back on slot A" in other.reason


def test_final_record_repeats_its_report() -> None:
    r = RECORD._replace(state="rebooting").finished("succeeded", None)
    assert steps.resume(r, running_slot="B", boot_id=BOOT, env=IDLE_ENV) == Finish("succeeded", "")


def test_unknown_slot_or_environment_fails() -> None:
    assert isinstance(steps.resume(RECORD, running_slot=None, boot_id=BOOT, env={}), Finish)
    assert isinstance(steps.resume(RECORD, running_slot="A", boot_id=BOOT, env=None), Finish)


def test_final_chain_leads_through_legal_transitions() -> None:
    assert steps.final_chain("succeeded") == (
        "downloading", "installing", "rebooting", "verifying", "succeeded",
    )  # fmt: skip
    assert steps.final_chain("rolled_back") == (
        "downloading", "installing", "rebooting", "rolled_back",
    )  # fmt: skip
    assert steps.final_chain("failed") == ("failed",)
    # from wherever the service last heard, the chain ends the job as the device says
    for final in ("succeeded", "rolled_back", "failed"):
        for heard in ("queued", "downloading", "downloaded", "installing", "rebooting"):
            state = heard
            for step in steps.final_chain(final):
                if step in TRANSITIONS[state]:  # the service skips the others
                    state = step
            assert state == final, (final, heard)


def test_confirmed_and_remembered() -> None:
    assert steps.confirmed({"slot": "B", "upgrade_available": "0"}, "B")
    assert not steps.confirmed({"slot": "B", "upgrade_available": "1"}, "B")
    assert not steps.confirmed(None, "B")
    ids = [f"j-{i}" for i in range(steps.HANDLED_KEPT)]
    kept = steps.remember(ids, "j-new")
    assert kept[-1] == "j-new" and len(kept) == steps.HANDLED_KEPT and "j-0" not in kept
    assert steps.remember(["j-a", "j-b"], "j-a") == ["j-b", "j-a"]
