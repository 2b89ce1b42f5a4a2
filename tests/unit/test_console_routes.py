"""The routes the console's artifact and configuration pages added (issue 13): what uses an
artifact, its signature checked again, `DELETE /artifacts/ID` refused while an unfinished job or
a rollout that has not ended names it (and audited either way), and `POST /config/check`, the
PUT routes' check without the change (a viewer's, and not an audited write)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ConsoleApi, require_tool
from twelvefactor_services.artifact.build import build_swu
from twelvefactor_services.artifact.cms import Signer
from twelvefactor_services.artifact.swu import newc_archive
from twelvefactor_services.artifact.template import Hardware
from twelvefactor_services.management import jobstore, rolloutstore
from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.configlogic import OverlayError, check_overlay
from twelvefactor_services.management.rollouts import parse_spec

pytestmark = pytest.mark.unit

DEV_SIGNING = Path(__file__).resolve().parents[2] / "meta-twelvefactor" / "files" / "dev-signing"


def swu(path: Path, version: str) -> Path:
    board = 'qemux86-64 = { hardware-compatibility: [ "1.0" ]; };'
    desc = f'software = {{ version = "{version}"; {board} }};'
    path.write_bytes(newc_archive([("sw-description", desc.encode()), ("rootfs.zst", b"x" * 100)]))
    return path


def test_an_artifact_is_deleted_only_when_nothing_unfinished_uses_it(
    api: ConsoleApi, tmp_path: Path
) -> None:
    store = api.srv.artifacts
    jobbed = store.add(swu(tmp_path / "a.swu", "2.0")).sha256
    rolled = store.add(swu(tmp_path / "b.swu", "2.1")).sha256
    free = store.add(swu(tmp_path / "c.swu", "2.2")).sha256
    db = api.srv.db
    job = jobstore.create_job(db, store, jobbed, device="dev-1", now=time.time())["id"]
    spec = parse_spec({"artifact": rolled, "devices": ["dev-2"], "start_at": 4_000_000_000})
    rollout = rolloutstore.create(db, store, spec, time.time(), "olga")["id"]

    status, listed = api("GET", "/artifacts", api.vera)
    assert status == 200
    used = {a["sha256"]: a["used_by"] for a in listed}
    assert used == {
        jobbed: [{"kind": "job", "id": job, "state": "unfinished"}],
        rolled: [{"kind": "rollout", "id": rollout, "state": "scheduled"}],
        free: [],
    }
    status, one = api("GET", f"/artifacts/{jobbed[:8]}", api.vera)
    assert status == 200 and one["used_by"] == used[jobbed]
    assert one["signature"] == {"status": "not_checked", "certificate": None, "problems": []}

    assert api("DELETE", f"/artifacts/{free}", api.vera)[0] == 403  # a viewer's: no
    status, refused = api("DELETE", f"/artifacts/{jobbed[:8]}", api.olga)
    assert status == 409 and refused["error"] == "in_use"
    assert refused["problems"] == [
        f"artifact {jobbed[:12]} is in use by job {job} (unfinished):"
        " delete it when the job has ended"
    ]
    status, refused = api("DELETE", f"/artifacts/{rolled}", api.olga)
    assert status == 409 and f"rollout {rollout} (scheduled)" in refused["problems"][0]
    assert store.get(jobbed) is not None and store.get(rolled) is not None

    assert api("DELETE", f"/artifacts/{free}", api.olga) == (
        200,
        {"sha256": free, "version": "2.2", "deleted": True},
    )
    assert not (store.root / f"{free}.swu").exists()
    assert not (store.root / f"{free}.json").exists()
    assert api("GET", f"/artifacts/{free}", api.olga)[0] == 404
    assert api("DELETE", f"/artifacts/{free}", api.olga)[0] == 404

    # the job ends, the rollout is cancelled: both may go
    db.execute("UPDATE device_jobs SET state = 'succeeded' WHERE job = ?", (job,))
    rolloutstore.control(db, rollout, "cancel", time.time(), "olga")
    assert api("DELETE", f"/artifacts/{jobbed}", api.olga)[0] == 200
    assert api("DELETE", f"/artifacts/{rolled}", api.olga)[0] == 200
    assert api("GET", "/artifacts", api.olga)[1] == []

    # every attempt is in the audit log, with the artifact's full id
    deletes = [
        (e["operator"], e["status"], (e["detail"] or {}).get("sha256"))
        for e in reversed(api.audit())
        if e["method"] == "DELETE"
    ]
    assert deletes == [
        ("vera", 403, None),
        ("olga", 409, jobbed),
        ("olga", 409, rolled),
        ("olga", 200, free),
        ("olga", 404, None),
        ("olga", 200, jobbed),
        ("olga", 200, rolled),
    ]


def test_the_signature_is_checked_again_against_the_signing_certificate(tmp_path: Path) -> None:
    for name in ("openssl", "zstd", "mkfs.ext4"):
        require_tool(name)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hwrevision").write_text("qemux86-64 1.0\n")
    fs = tmp_path / "rootfs.ext4"
    subprocess.run(
        [require_tool("mkfs.ext4"), "-q", "-d", tree, "-L", "rootfs-a", fs, "4M"], check=True
    )
    cert = DEV_SIGNING / "twelvefactor-dev-update.crt"
    signed = build_swu(
        fs,
        tmp_path / "signed.swu",
        version="3.0",
        hardware=[Hardware("qemux86-64", ("1.0",))],
        signer=Signer(DEV_SIGNING / "twelvefactor-dev-update.key", cert),
    ).path
    plain = ArtifactStore(tmp_path / "artifacts")  # added before the service had the cert
    unsigned = plain.add(swu(tmp_path / "u.swu", "3.1")).sha256
    store = ArtifactStore(tmp_path / "artifacts", cert)
    good = store.add(signed).sha256
    assert store.signature(good) == {
        "status": "verified",
        "certificate": "twelvefactor-dev-update.crt",
        "problems": [],
    }
    checked = store.signature(unsigned)
    assert checked["status"] == "refused" and checked["problems"]
    assert any("signature" in p for p in checked["problems"])
    assert not any(str(tmp_path) in p for p in checked["problems"])
    assert plain.signature(good)["status"] == "not_checked"


def test_an_overlay_is_checked_as_the_put_routes_check_it_and_nothing_changes(
    api: ConsoleApi,
) -> None:
    good = {"agent": {"keepalive": 9}}
    assert api("POST", "/config/check", api.vera, json.dumps(good).encode()) == (
        200,
        {"ok": True, "problems": []},
    )
    nan = {"agent": {"keepalive": float("nan")}}
    for bad in [{"nope": 1}, nan, [], {"agent": {"identity": "x"}}]:
        with pytest.raises(OverlayError) as caught:
            check_overlay(bad)
        status, said = api("POST", "/config/check", api.vera, json.dumps(bad).encode())
        assert status == 200 and said == {"ok": False, "problems": caught.value.problems}, bad
        # and the PUT route refuses it with the same problems
        status, put = api("PUT", "/groups/field/config", api.olga, json.dumps(bad).encode())
        assert status == 400 and put["problems"] == caught.value.problems, bad
    assert api("POST", "/config/check", api.vera, b"{not json")[0] == 400
    assert api("POST", "/config/check", None, json.dumps(good).encode())[0] == 401
    # a check is no write: the audit log has only the PUTs
    paths = {e["path"] for e in api.audit()}
    assert paths == {"/groups/field/config"}
    assert api("GET", "/groups", api.vera)[1] == []
