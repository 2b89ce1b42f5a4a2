"""Update jobs through the real management service: artifacts, jobs, reports, the server.

A fake device (an MQTT probe with the device's certificate, and the agent's own
downloader) takes the retained job, fetches the artifact over mutual TLS from
the service's artifact server and reports its progress; the job's state is read
back through the HTTP API and the CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_agent.update.decide import decide, parse_job
from twelvefactor_agent.update.download import DownloadError, download
from twelvefactor_services.artifact.build import build_swu
from twelvefactor_services.artifact.cms import Signer
from twelvefactor_services.artifact.swu import newc_archive
from twelvefactor_services.artifact.template import parse_hardware

from testbed.pace import PACE, ROUND_TRIP
from testbed.probe import Probe
from testbed.stack import ServiceProcess, Stack, download_identity, http_get, http_send, wait_until

DESCRIPTION = """software = {{ version = "{version}";
  qemux86-64 = {{ hardware-compatibility: [ "1.0" ]; }}; }};"""


def make_swu(path: Path, version: str = "2.0", size: int = 600_000) -> Path:
    desc = DESCRIPTION.format(version=version).encode()
    path.write_bytes(newc_archive([("sw-description", desc), ("rootfs.zlib", os.urandom(size))]))
    return path


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI against the stack's running management copy, as its admin."""
    svc = next(s for s in stack.services if s.api is not None and s.running)
    return PACE.run(
        [
            sys.executable,
            "-m",
            "twelvefactor_services.management.cli",
            *args,
            *stack.api_options(svc),
        ]
    )


def test_artifact_cli(stack: Stack, management: ServiceProcess, tmp_path: Path) -> None:
    swu = make_swu(tmp_path / "a.swu", "2.1")
    r = cli(stack, "artifact", "add", "--json", str(swu), "--version", "2.2")
    assert r.returncode == 2 and "says version '2.1', not '2.2'" in r.stderr
    r = cli(stack, "artifact", "add", "--json", str(swu), "--hardware", "qemux86-64=1.1")
    assert r.returncode == 2 and "hardware" in r.stderr
    (tmp_path / "bad.swu").write_bytes(b"PK\x03\x04 not a cpio archive" * 10)
    r = cli(stack, "artifact", "add", "--json", str(tmp_path / "bad.swu"))
    assert r.returncode == 2 and "not a cpio newc archive" in r.stderr
    # A version every agent would refuse is refused here (issue 19, finding 16).
    r = cli(stack, "artifact", "add", "--json", str(make_swu(tmp_path / "rc.swu", "2.0-rc1")))
    assert r.returncode == 2 and "version '2.0-rc1' is not numbers separated by dots" in r.stderr
    r = cli(
        stack,
        "artifact",
        "add",
        "--json",
        str(swu),
        "--version",
        "2.1",
        "--hardware",
        "qemux86-64=1.0",
    )
    assert r.returncode == 0, r.stderr
    art = json.loads(r.stdout)
    assert art["version"] == "2.1" and art["hardware"] == {"qemux86-64": ["1.0"]}
    assert art["size"] == swu.stat().st_size
    assert (stack.artifact_dir / f"{art['sha256']}.swu").read_bytes() == swu.read_bytes()
    again = json.loads(cli(stack, "artifact", "add", "--json", str(swu)).stdout)
    assert again == art  # the same file is the same artifact
    r = cli(stack, "artifact", "show", art["sha256"][:8])  # as people read it: ISO 8601 times
    assert r.stdout.startswith(f"artifact {art['sha256']}\n"), r.stdout
    assert re.search(r"version 2\.1, \d+ bytes, added \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]", r.stdout)
    r = cli(stack, "artifact", "list")
    assert art["sha256"][:12] in r.stdout and "1 artifact(s)" in r.stdout
    r = cli(stack, "job", "create", "--json", "--artifact", "0" * 64, "--device", "dev-001")
    assert r.returncode == 1 and f"no artifact '{'0' * 64}'" in r.stderr
    # the id as `artifact list` shows it is enough (any unique prefix, as git does)
    r = cli(
        stack, "job", "create", "--json", "--artifact", art["sha256"][:12], "--device", "dev-001"
    )
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["devices"][0]["state"] == "queued" and job["target"] == "device:dev-001"
    r = cli(stack, "job", "create", "--json", "--artifact", art["sha256"], "--device", "dev-001")
    assert r.returncode == 1 and "unfinished job for dev-001" in r.stderr
    r = cli(stack, "job", "show", "--json", job["id"][:5])
    assert json.loads(r.stdout) == job
    assert cli(stack, "job", "show", "--json", "j-nope").returncode == 1
    r = cli(stack, "job", "list")
    assert job["id"] in r.stdout and "1 queued" in r.stdout


def report(probe: Probe, device: str, job: str, state: str, **kw: Any) -> None:
    probe.publish(
        f"mgmt/{device}/up/update", {"v": 1, "job": job, "state": state, "ts": time.time(), **kw}
    )


def device_state(svc: ServiceProcess, job: str, device: str) -> dict[str, Any]:
    status, body = http_get(svc, f"/jobs/{job}")
    assert status == 200
    return next(d for d in body["devices"] if d["device"] == device)


def wait_state(svc: ServiceProcess, job: str, device: str, state: str) -> dict[str, Any]:
    return wait_until(
        lambda: (d := device_state(svc, job, device))["state"] == state and d,
        what=f"{device} {state}",
    )


def test_job_end_to_end(
    stack: Stack,
    management: ServiceProcess,
    probes: Callable[..., Probe],
    tmp_path: Path,
) -> None:
    swu = make_swu(tmp_path / "u.swu", "2.0")
    art = json.loads(cli(stack, "artifact", "add", "--json", str(swu)).stdout)
    status, listed = http_get(management, "/artifacts")
    assert status == 200 and [a["sha256"] for a in listed] == [art["sha256"]]
    status, _body = http_send(management, "POST", "/jobs", {"artifact": art["sha256"]})
    assert status == 400
    status, job = http_send(
        management, "POST", "/jobs", {"artifact": art["sha256"], "device": "dev-001"}
    )
    assert status == 201, job

    def offer() -> Probe:
        probe = probes(stack.management_endpoint, stack.device("dev-001"), "dev-001-mgmt")
        probe.subscribe("mgmt/dev-001/down/update")
        return probe

    dev = offer()
    msg = dev.wait_for(lambda m: m.topic == "mgmt/dev-001/down/update", PACE.limit(ROUND_TRIP))
    if not msg.retain:
        # subscribed before the service published (a loaded machine): delivered live,
        # without the flag. The job must be kept for a device that comes later.
        dev.disconnect()
        dev = offer()
        msg = dev.wait_for(lambda m: m.topic == "mgmt/dev-001/down/update", PACE.limit(ROUND_TRIP))
    assert msg.retain
    offered = parse_job(msg.payload)
    assert (offered.job, offered.sha256, offered.size) == (job["id"], art["sha256"], art["size"])
    assert offered.url == (
        f"https://127.0.0.1:{management.artifact_port}/artifacts/{art['sha256']}.swu"
    )
    refusal = decide(
        offered, device="dev-001", hwrevision="qemux86-64 1.0", os_version="1.0", free_bytes=1 << 34
    )
    assert refusal is None

    # another device gets nothing from the artifact server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(
            offered.url,
            tmp_path / "other",
            sha256=offered.sha256,
            size=offered.size,
            identity=download_identity(stack, "dev-002"),
        )
    report(dev, "dev-001", offered.job, "downloading", percent=0)
    wait_state(management, offered.job, "dev-001", "downloading")
    download(
        offered.url,
        tmp_path / "job.swu.part",
        sha256=offered.sha256,
        size=offered.size,
        identity=download_identity(stack, "dev-001"),
    )
    report(dev, "dev-001", offered.job, "downloading", percent=100)
    report(dev, "dev-001", offered.job, "installing", percent=40)
    assert wait_state(management, offered.job, "dev-001", "installing")["percent"] == 40
    report(dev, "dev-001", offered.job, "succeeded")  # not before verifying: ignored
    report(dev, "dev-001", offered.job, "rebooting")
    report(dev, "dev-001", offered.job, "verifying")
    wait_state(management, offered.job, "dev-001", "verifying")
    report(dev, "dev-001", offered.job, "succeeded")
    wait_state(management, offered.job, "dev-001", "succeeded")
    assert "verifying -> succeeded" in management.log_tail(80)
    assert "installing -> succeeded is not a legal transition" in management.log_tail(80)

    # a finished job no longer opens the artifact server to the device
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(
            offered.url,
            tmp_path / "again",
            sha256=offered.sha256,
            size=offered.size,
            identity=download_identity(stack, "dev-001"),
        )


def test_group_job_and_failure_reason(
    stack: Stack,
    management: ServiceProcess,
    probes: Callable[..., Probe],
    tmp_path: Path,
) -> None:
    art = json.loads(
        cli(stack, "artifact", "add", "--json", str(make_swu(tmp_path / "g.swu"))).stdout
    )
    r = cli(stack, "job", "create", "--json", "--artifact", art["sha256"], "--group", "field")
    assert r.returncode == 1 and "has no members" in r.stderr
    assert http_send(management, "PUT", "/groups/field/config", {})[0] == 200
    assert (
        http_send(management, "POST", "/groups/field/members", {"devices": ["dev-a", "dev-b"]})[0]
        == 200
    )
    status, job = http_send(
        management, "POST", "/jobs", {"artifact": art["sha256"], "group": "field"}
    )
    assert status == 201 and [d["device"] for d in job["devices"]] == ["dev-a", "dev-b"]
    for device in ("dev-a", "dev-b"):
        p = probes(stack.management_endpoint, stack.device(device), f"{device}-mgmt")
        p.subscribe(f"mgmt/{device}/down/update")
        offer = p.wait_for(lambda m: m.topic.endswith("/down/update"), PACE.limit(ROUND_TRIP))
        got = parse_job(offer.payload)
        assert (got.job, got.device) == (job["id"], device)
        if device == "dev-a":
            report(p, device, got.job, "failed", reason="wrong_hardware")
        else:
            report(p, device, got.job, "downloading", percent=5)
    assert wait_state(management, job["id"], "dev-a", "failed")["reason"] == "wrong_hardware"
    wait_state(management, job["id"], "dev-b", "downloading")
    status, body = http_send(
        management, "POST", "/jobs", {"artifact": art["sha256"], "device": "dev-b"}
    )
    assert status == 409 and "unfinished job for dev-b" in body["problems"][0]


def test_foreign_and_malformed_reports_and_a_restart(
    stack: Stack,
    management: ServiceProcess,
    probes: Callable[..., Probe],
    tmp_path: Path,
) -> None:
    art = json.loads(
        cli(stack, "artifact", "add", "--json", str(make_swu(tmp_path / "r.swu"))).stdout
    )
    status, body = http_send(
        management, "POST", "/jobs", {"artifact": "f" * 64, "device": "dev-001"}
    )
    assert status == 409 and "unknown artifact" in body["problems"][0]
    job = json.loads(
        cli(
            stack, "job", "create", "--json", "--artifact", art["sha256"], "--device", "dev-001"
        ).stdout
    )
    other = probes(stack.management_endpoint, stack.device("dev-002"), "dev-002-mgmt")
    # another device reporting this job's id moves nothing
    report(other, "dev-002", job["id"], "downloading", percent=50)
    other.publish("mgmt/dev-002/up/update", b"{not json")
    wait_until(
        lambda: (
            "no such job for this device" in management.log_tail(80)
            and "dropped update report from dev-002" in management.log_tail(80)
        ),
        what="both reports logged and ignored",
    )
    assert device_state(management, job["id"], "dev-001")["state"] == "queued"

    dev = probes(stack.management_endpoint, stack.device("dev-001"), "dev-001-mgmt")
    report(dev, "dev-001", job["id"], "downloading", percent=10)
    wait_state(management, job["id"], "dev-001", "downloading")
    management.stop()
    copy = stack.management()
    copy.start()
    assert device_state(copy, job["id"], "dev-001")["percent"] == 10
    report(dev, "dev-001", job["id"], "failed", reason="sha256 mismatch")
    failed = wait_state(copy, job["id"], "dev-001", "failed")
    assert failed["reason"] == "sha256 mismatch"
    # a finished job frees the device for the next one
    status, _ = http_send(copy, "POST", "/jobs", {"artifact": art["sha256"], "device": "dev-001"})
    assert status == 201


# mkfs.ext4 of a 4 MiB image: 0.01-0.02 s measured here (testbed/pace.py's machine)
MKFS = 0.02


def test_with_the_signing_certificate_what_no_device_would_install_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 12, item 5: checked when added, against the certificate the devices use."""
    dev_signing = Path(__file__).parents[2] / "meta-twelvefactor" / "files" / "dev-signing"
    cert = dev_signing / "twelvefactor-dev-update.crt"
    svc = stack.management(signing_cert=cert)
    svc.start()
    rootfs = tmp_path / "rootfs.ext4"
    with rootfs.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(rootfs)], check=True, timeout=PACE.limit(MKFS))
    signed = build_swu(
        rootfs,
        tmp_path / "signed.swu",
        version="3.0",
        hardware=[parse_hardware("qemux86-64=1.0")],
        signer=Signer(dev_signing / "twelvefactor-dev-update.key", cert),
    ).path
    unsigned = build_swu(
        rootfs,
        tmp_path / "unsigned.swu",
        version="3.1",
        hardware=[parse_hardware("qemux86-64=1.0")],
        signer=None,
    ).path
    r = cli(stack, "artifact", "add", "--json", str(unsigned))
    assert r.returncode == 2, r.stderr
    assert "devices would refuse it (twelvefactor-dev-update.crt)" in r.stderr, r.stderr
    assert "signature" in r.stderr
    r = cli(stack, "artifact", "add", "--json", str(make_swu(tmp_path / "nohw.swu", "3.2")))
    assert r.returncode == 2 and "signature" in r.stderr, r.stderr
    r = cli(stack, "artifact", "add", "--json", str(signed))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == "3.0"
    listed = cli(stack, "artifact", "list", "--json")
    assert [a["version"] for a in json.loads(listed.stdout)] == ["3.0"]
