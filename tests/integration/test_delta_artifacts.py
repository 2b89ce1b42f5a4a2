"""Delta artifacts through the real management service (issue 14).

The artifact tool makes a release's full `.swu`, its delta `.swu` and the `.zck`
of its chunks (real `zck`), signed with the layer's development key; the
service, checking signatures with the matching certificate, takes the delta
only as it must be for every device to install it, names it in the job, and
serves the delta's files over mutual TLS to the device with the job (the
`.zck` by multi-range requests, as SWUpdate's delta handler asks), counting
the bytes on the job; the device's reports of which path it took are kept.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_artifacts import cli
from twelvefactor_agent.update.decide import parse_job
from twelvefactor_agent.update.download import ClientIdentity, download
from twelvefactor_services.artifact.build import BuiltDelta, build_delta, build_swu
from twelvefactor_services.artifact.cms import Signer, sign
from twelvefactor_services.artifact.swu import newc_archive, read_archive
from twelvefactor_services.artifact.template import parse_hardware

from testbed.pace import PACE, ROUND_TRIP
from testbed.probe import Probe
from testbed.stack import ServiceProcess, Stack, download_identity, http_get, http_send, wait_until

SIGNING = Path(__file__).parents[2] / "meta-twelvefactor" / "files" / "dev-signing"
CERT = SIGNING / "twelvefactor-dev-update.crt"
SIGNER = Signer(SIGNING / "twelvefactor-dev-update.key", CERT)
HARDWARE = [parse_hardware("qemux86-64=1.0")]
# mkfs.ext4 of an 8 MiB image and zck of it: well under a second each, measured here
TOOLS = 1.0


def rootfs(path: Path, seed: bytes) -> Path:
    """A small ext4 image with a file of pseudo-random content (so chunks differ)."""
    with path.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, timeout=PACE.limit(TOOLS))
    data = path.with_suffix(".data")
    data.write_bytes(seed * 1000 + os.urandom(64 * 1024))
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {data} data.bin", str(path)],
        check=True,
        capture_output=True,
        timeout=PACE.limit(TOOLS),
    )
    return path


def release(
    work: Path, version: str, url: str, *, signer: Signer | None = SIGNER
) -> tuple[Path, BuiltDelta]:
    work.mkdir(parents=True, exist_ok=True)
    fs = rootfs(work / "rootfs.ext4", version.encode())
    full = build_swu(fs, work / "full.swu", version=version, hardware=HARDWARE, signer=SIGNER)
    delta = build_delta(
        fs,
        work / "delta.swu",
        work / "rootfs.zck",
        version=version,
        hardware=HARDWARE,
        signer=signer,
        url=url,
    )
    return full.path, delta


def member(swu: Path, name: str, work: Path) -> bytes:
    """One member of the .swu `swu`, as cpio extracts it."""
    out = work / "member"
    subprocess.run(
        ["sh", "-c", f"cpio -i --quiet --to-stdout '{name}' < {swu} > {out}"],
        check=True,
        timeout=PACE.limit(TOOLS),
    )
    return out.read_bytes()


def upload(svc: ServiceProcess, path: str, file: Path) -> tuple[int, Any]:
    assert svc.api is not None
    with file.open("rb") as f:
        return svc.api.request("POST", path, upload=f, size=file.stat().st_size)


def ranges(url: str, identity: ClientIdentity, spec: str) -> tuple[int, dict[str, str], bytes]:
    """One GET with `Range: spec` over mutual TLS, as SWUpdate's curl makes it."""
    ctx = ssl.create_default_context(cafile=str(identity.ca))
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    parts = url.split("/", 3)
    host, port = parts[2].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=PACE.limit(ROUND_TRIP))
    try:
        conn.request("GET", "/" + parts[3], headers={"Range": spec})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


@pytest.fixture
def service(stack: Stack) -> ServiceProcess:
    svc = stack.management(signing_cert=CERT)
    svc.start(PACE.steps_of("services"))
    return svc


def test_a_delta_is_kept_only_as_every_device_can_install_it(
    stack: Stack, service: ServiceProcess, tmp_path: Path
) -> None:
    url = f"https://127.0.0.1:{service.artifact_port}"
    full, delta = release(tmp_path / "r30", "3.0", url)
    status, art = upload(service, "/artifacts", full)
    assert status == 201, art
    sha = art["sha256"]
    # the delta before its chunks' file
    status, body = upload(service, f"/artifacts/{sha}/delta", delta.swu)
    assert status == 400 and "add the .zck first" in body["problems"][0], body
    # a delta on its own would leave the device no fallback
    status, body = upload(service, "/artifacts", delta.swu)
    assert status == 400 and "installs only beside its release's full one" in str(body), body
    # not a zchunk file
    status, body = upload(service, f"/artifacts/{sha}/zck", full)
    assert status == 400 and "not a zchunk file" in str(body), body
    status, zck = upload(service, f"/artifacts/{sha}/zck", delta.zck)
    assert status == 201 and zck["zck"] == delta.zck_sha256, zck
    # another release's delta
    _, other = release(tmp_path / "r31", "3.1", url)
    upload(service, f"/artifacts/{sha}/zck", other.zck)
    status, body = upload(service, f"/artifacts/{sha}/delta", other.swu)
    assert status == 400 and "cannot stand for artifact" in str(body), body
    # unsigned: every device would refuse it
    _, unsigned = release(tmp_path / "r30u", "3.0", url, signer=None)
    upload(service, f"/artifacts/{sha}/zck", unsigned.zck)
    status, body = upload(service, f"/artifacts/{sha}/delta", unsigned.swu)
    assert status == 400 and "devices would refuse it" in str(body), body
    # the right sw-description carrying another file's header: the chunks would not match
    with delta.swu.open("rb") as f:
        names = [m.name for m in read_archive(f).members]
    mine = {name: member(delta.swu, name, tmp_path) for name in names}
    swapped = tmp_path / "swapped.swu"
    swapped.write_bytes(
        newc_archive([*list(mine.items())[:2], (names[2], member(other.swu, names[2], tmp_path))])
    )
    status, body = upload(service, f"/artifacts/{sha}/delta", swapped)
    assert status == 400 and "is not the header of" in str(body), body
    # signed, but its source-size is not the size its header indexes
    text = mine[names[0]].decode()
    size = re.search(r'source-size = "([0-9]+)"', text)
    assert size and int(size.group(1)) == 8 * 1024 * 1024, text
    text = text.replace(size.group(0), 'source-size = "4096"')
    resized = tmp_path / "resized.swu"
    resized.write_bytes(
        newc_archive(
            [
                (names[0], text.encode()),
                (names[1], sign(text.encode(), SIGNER)),
                (names[2], mine[names[2]]),
            ]
        )
    )
    status, body = upload(service, f"/artifacts/{sha}/delta", resized)
    assert status == 400 and "source-size 4096 is not the 8388608 bytes" in str(body), body
    # and the right one
    status, art = upload(service, f"/artifacts/{sha}/delta", delta.swu)
    assert status == 201, art
    assert art["delta"]["zck"] == delta.zck_sha256
    assert art["delta"]["size"] == delta.swu.stat().st_size
    shown = cli(stack, "artifact", "show", sha[:12])
    assert f"delta {art['delta']['sha256'][:12]}" in shown.stdout, shown
    # the .zck files uploaded for it and not used are gone; deleting it takes its delta
    assert sorted(p.name for p in stack.artifact_dir.glob("*.zck")) == [f"{delta.zck_sha256}.zck"]
    assert cli(stack, "artifact", "delete", sha[:12]).returncode == 0
    assert sorted(p.name for p in stack.artifact_dir.iterdir()) == []


def test_the_job_names_the_delta_and_the_device_with_it_gets_its_chunks(
    stack: Stack, service: ServiceProcess, tmp_path: Path
) -> None:
    url = f"https://127.0.0.1:{service.artifact_port}"
    full, delta = release(tmp_path / "r", "4.0", url)
    added = cli(
        stack,
        "artifact",
        "add",
        "--json",
        str(full),
        "--delta",
        str(delta.swu),
        "--zck",
        str(delta.zck),
    )
    assert added.returncode == 0, added.stderr
    art = json.loads(added.stdout)
    status, job = http_send(
        service, "POST", "/jobs", {"artifact": art["sha256"], "device": "dev-001"}
    )
    assert status == 201, job
    dev = Probe(stack.management_endpoint, stack.device("dev-001"), "dev-001-mgmt")
    dev.connect(timeout=PACE.limit(ROUND_TRIP))
    try:
        dev.subscribe("mgmt/dev-001/down/update")
        msg = dev.wait_for(lambda m: m.topic == "mgmt/dev-001/down/update", PACE.limit(ROUND_TRIP))
        offered = parse_job(msg.payload)
        assert offered.delta is not None
        assert offered.delta.sha256 == art["delta"]["sha256"]
        assert offered.delta.url == f"{url}/artifacts/{offered.delta.sha256}.swu"
        me, other = download_identity(stack, "dev-001"), download_identity(stack, "dev-002")
        download(
            offered.delta.url,
            tmp_path / "d.swu",
            sha256=offered.delta.sha256,
            size=offered.delta.size,
            identity=me,
        )
        zck_url = f"{url}/artifacts/{delta.zck_sha256}.zck"
        body = delta.zck.read_bytes()
        status, headers, got = ranges(zck_url, me, "bytes=0-99,1000-1099,4000-4009")
        assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
        for first, last in ((0, 99), (1000, 1099), (4000, 4009)):
            assert f"Content-Range: bytes {first}-{last}/{len(body)}".encode() in got
            assert body[first : last + 1] in got
        # the device without the job, and a digest asked for with the wrong suffix: 404
        assert ranges(zck_url, other, "bytes=0-99")[0] == 404
        assert ranges(f"{url}/artifacts/{delta.zck_sha256}.swu", me, "bytes=0-9")[0] == 404
        assert ranges(f"{url}/artifacts/{offered.delta.sha256}.zck", me, "bytes=0-9")[0] == 404
        # the bytes sent for the job: the delta .swu and the three ranges' answer
        wait_until(
            lambda: _device(service, job["id"])["sent_bytes"] >= delta.swu.stat().st_size + 210,
            what="the bytes sent counted on the job",
        )
        # which path the device took, and why it gave the delta up
        for state, extra in (
            ("downloading", {"percent": 0, "path": "delta"}),
            ("installing", {"percent": 10, "path": "delta"}),
            ("downloading", {"percent": 0, "path": "full", "fallback": "install_failed: x"}),
            ("installing", {"percent": 50}),
        ):
            dev.publish(
                "mgmt/dev-001/up/update",
                {
                    "v": 1,
                    "job": job["id"],
                    "state": state,
                    "ts": time.time(),
                    **extra,
                },
            )
        entry = wait_until(
            lambda: (d := _device(service, job["id"]))["percent"] == 50 and d,
            what="the fallback's install",
        )
        assert (entry["path"], entry["fallback"]) == ("full", "install_failed: x"), entry
    finally:
        dev.disconnect()
    shown = cli(stack, "job", "show", job["id"])
    assert "by full" in shown.stdout and "the delta was given up: install_failed: x" in shown.stdout


def _device(svc: ServiceProcess, job: str) -> dict[str, Any]:
    status, body = http_get(svc, f"/jobs/{job}")
    assert status == 200
    return dict(body["devices"][0])
