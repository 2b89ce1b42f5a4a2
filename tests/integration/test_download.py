"""Artifact server (mutual TLS, Range) and the agent's resumable downloader, end to end.

The server runs in this process on loopback with certificates from a real PKI;
the agent's downloader talks to it over real TLS. A link drop is a TCP proxy
on loopback that closes both sides after N bytes from the server.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twelvefactor_agent.protocol.states import DOWNLOADED, DOWNLOADING, FAILED
from twelvefactor_agent.update.download import (
    ChecksumError,
    ClientIdentity,
    DownloadError,
    DownloadInterrupted,
    download,
    tls_context,
)
from twelvefactor_agent.update.worker import Paths, Updater
from twelvefactor_services.artifact.swu import newc_archive
from twelvefactor_services.management.artifact_server import (
    SERVED_KEPT,
    ArtifactServer,
    Served,
    server_context,
)
from twelvefactor_services.management.artifacts import Artifact, ArtifactStore
from twelvefactor_services.pki import Pki

from testbed.pace import PACE, ROUND_TRIP
from testbed.stack import make_pki, wait_until

DESCRIPTION = b"""software = { version = "2.0";
  qemux86-64 = { hardware-compatibility: [ "1.0" ]; }; };"""


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki: Pki = make_pki(root / "pki")
        self.server_paths = self.pki.server("artifacts", dns=["localhost"], ips=["127.0.0.1"])
        self.store = ArtifactStore(root / "artifacts")
        swu = root / "update.swu"
        swu.write_bytes(
            newc_archive([("sw-description", DESCRIPTION), ("rootfs.zlib", os.urandom(3 << 20))])
        )
        self.artifact: Artifact = self.store.add(swu)
        self.allowed = {("dev-001", self.artifact.sha256)}
        self.told: list[tuple[str, str, int]] = []  # what the server told its owner it sent
        self.server = ArtifactServer(
            ("127.0.0.1", 0),
            self.store,
            server_context(self.server_paths.cert, self.server_paths.key, self.pki.ca_cert),
            lambda device, sha: (device, sha) in self.allowed,
            lambda device, sha, sent: self.told.append((device, sha, sent)),
        )
        self.server.start()
        self.port = self.server.server_address[1]

    def identity(self, device: str) -> ClientIdentity:
        paths = self.pki.device_paths(device)
        if not paths.cert.exists():
            paths = self.pki.device(device)
        return ClientIdentity(paths.cert, paths.key, paths.ca)

    def url(self, port: int | None = None, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{port or self.port}/artifacts/{self.artifact.sha256}.swu"

    def fetch(self, dest: Path, port: int | None = None, device: str = "dev-001") -> Path:
        return download(
            self.url(port),
            dest,
            sha256=self.artifact.sha256,
            size=self.artifact.size,
            identity=self.identity(device),
            timeout=PACE.limit(ROUND_TRIP),
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.server.stop()


class CuttingProxy:
    """Forwards loopback TCP to `port`; the first connection is closed after `cut` bytes
    from the server (mid-TLS: the client sees the link drop), or with `stall` only stops
    forwarding (the client waits, as on a dead link)."""

    def __init__(self, port: int, cut: int, stall: bool = False) -> None:
        self.upstream = port
        self.cut: int | None = cut
        self.stall = stall
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            cut, self.cut = self.cut, None
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, cut), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = src.recv(65536 if limit is None else min(65536, limit - sent))
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        if limit is not None and self.stall:
            self.release.wait(PACE.limit(STALL))  # until the test has seen the stall
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.release.set()
        self.listener.close()


def test_full_download_with_progress(env: Env, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "data" / "job.swu.part"
    download(
        env.url(),
        dest,
        sha256=env.artifact.sha256,
        size=env.artifact.size,
        identity=env.identity("dev-001"),
        progress=lambda have, total: seen.append((have, total)),
    )
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == env.artifact.sha256
    assert seen[-1] == (env.artifact.size, env.artifact.size)
    assert [h for h, _ in seen] == sorted(h for h, _ in seen)
    assert env.server.served == [Served("dev-001", env.artifact.sha256, 200, 0)]


def test_cut_link_resumes_with_range_from_the_byte_reached(env: Env, tmp_path: Path) -> None:
    proxy = CuttingProxy(env.port, cut=1_000_000)
    dest = tmp_path / "job.swu.part"
    try:
        with pytest.raises(DownloadInterrupted):
            env.fetch(dest, port=proxy.port)
        reached = dest.stat().st_size
        assert 0 < reached < env.artifact.size
        env.fetch(dest, port=proxy.port)
    finally:
        proxy.close()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == env.artifact.sha256
    assert env.server.served[-1] == Served("dev-001", env.artifact.sha256, 206, reached)
    assert len(env.server.served) == 2
    # both requests counted: what was written before the cut, and the rest
    wait_until(lambda: len(env.told) == 2, PACE.limit(ROUND_TRIP), "the answers told")
    assert [t[:2] for t in env.told] == [("dev-001", env.artifact.sha256)] * 2
    assert env.artifact.size - reached in [t[2] for t in env.told]  # the resumed request
    assert sum(t[2] for t in env.told) >= env.artifact.size


KILLED_DOWNLOAD = """
import sys
from pathlib import Path
from twelvefactor_agent.update.download import ClientIdentity, download
url, dest, sha, size, cert, key, ca, timeout = sys.argv[1:]
download(url, Path(dest), sha256=sha, size=int(size),
         identity=ClientIdentity(Path(cert), Path(key), Path(ca)), timeout=float(timeout))
"""
# 1.5 MB through the proxy, then ten polls of a file that stopped growing: 1.3 s measured
# in the reference run (testbed/pace.py)
STALL = 1.4


def test_download_killed_midway_resumes_from_the_file_on_disk(env: Env, tmp_path: Path) -> None:
    """The downloading process dies (SIGKILL) on a stalled link; a new one continues."""
    proxy = CuttingProxy(env.port, cut=1_500_000, stall=True)
    dest = tmp_path / "job.swu.part"
    ident = env.identity("dev-001")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_DOWNLOAD,
            env.url(proxy.port),
            str(dest),
            env.artifact.sha256,
            str(env.artifact.size),
            str(ident.cert),
            str(ident.key),
            str(ident.ca),
            str(2 * PACE.limit(STALL)),  # its reads outlast the test's wait for the stall
        ]
    )
    try:
        # the proxy stops forwarding after 1.5 MB: wait for the file to stop growing
        sizes: list[int] = []

        def stalled() -> bool:
            sizes.append(dest.stat().st_size if dest.exists() else 0)
            return len(sizes) > 10 and sizes[-1] > 0 and sizes[-1] == sizes[-11]

        wait_until(stalled, PACE.limit(STALL), what="the download to stall")
        assert child.poll() is None
        child.kill()
        child.wait(PACE.limit(ROUND_TRIP))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(PACE.limit(ROUND_TRIP))
        proxy.close()
    on_disk = dest.stat().st_size
    assert 0 < on_disk < env.artifact.size
    env.fetch(dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == env.artifact.sha256
    assert env.server.served[-1] == Served("dev-001", env.artifact.sha256, 206, on_disk)


def test_tampered_file_is_refused_and_deleted(env: Env, tmp_path: Path) -> None:
    stored = env.store.path(env.artifact.sha256)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    dest = tmp_path / "job.swu.part"
    with pytest.raises(ChecksumError, match="deleted"):
        env.fetch(dest)
    assert not dest.exists()


def test_partial_file_longer_than_the_artifact_starts_over(env: Env, tmp_path: Path) -> None:
    dest = tmp_path / "job.swu.part"
    dest.write_bytes(b"x" * (env.artifact.size + 1))
    env.fetch(dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == env.artifact.sha256
    assert env.server.served[-1].status == 200


def test_only_artifacts_of_jobs_addressed_to_the_device(env: Env, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        env.fetch(tmp_path / "x", device="dev-002")
    assert env.server.served == [Served("dev-002", env.artifact.sha256, 404, 0)]
    assert not (tmp_path / "x").exists() or (tmp_path / "x").stat().st_size == 0


def _raw_get(env: Env, ctx: ssl.SSLContext, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    status, got, _ = _raw_get_body(env, ctx, headers)
    return status, got


def _raw_get_body(
    env: Env, ctx: ssl.SSLContext, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    limit = PACE.limit(ROUND_TRIP)
    conn = http.client.HTTPSConnection("127.0.0.1", env.port, timeout=limit, context=ctx)
    try:
        conn.request("GET", f"/artifacts/{env.artifact.sha256}.swu", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), body
    finally:
        conn.close()


def test_range_answers(env: Env) -> None:
    ctx = tls_context(env.identity("dev-001"))
    size = env.artifact.size
    status, h = _raw_get(env, ctx, {"Range": "bytes=10-19"})
    assert (status, h["Content-Range"], h["Content-Length"]) == (206, f"bytes 10-19/{size}", "10")
    status, h = _raw_get(env, ctx, {"Range": f"bytes={size}-"})
    assert (status, h["Content-Range"]) == (416, f"bytes */{size}")
    status, h = _raw_get(env, ctx, {"Range": "bytes=5-6,0-1"})  # out of order
    assert status == 400


def test_several_ranges_answer_multipart_byteranges_and_the_bytes_sent_are_counted(
    env: Env,
) -> None:
    """What SWUpdate's delta handler asks for: the missing chunks, many ranges at once."""
    ctx = tls_context(env.identity("dev-001"))
    data = env.store.path(env.artifact.sha256).read_bytes()
    size = len(data)
    assert env.told == []
    status, h, body = _raw_get_body(env, ctx, {"Range": "bytes=0-9,4096-8191,-100"})
    assert status == 206
    assert int(h["Content-Length"]) == len(body)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {h['Content-Type']}\r\n\r\n".encode() + body
    )
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        f"bytes 0-9/{size}",
        f"bytes 4096-8191/{size}",
        f"bytes {size - 100}-{size - 1}/{size}",
    ]
    assert [p.get_payload(decode=True) for p in parts] == [
        data[:10],
        data[4096:8192],
        data[-100:],
    ]
    # told after the last write, which the client may have read first: waited for
    counted = PACE.limit(ROUND_TRIP)
    wait_until(lambda: len(env.told) == 1, counted, "the answer told")
    status, _, whole = _raw_get_body(env, ctx, {})
    assert status == 200 and whole == data
    wait_until(lambda: len(env.told) == 2, counted, "the answers told")
    sha = env.artifact.sha256  # framing included: what crossed the link
    assert env.told == [("dev-001", sha, len(body)), ("dev-001", sha, size)]


def test_client_without_a_device_certificate_is_refused(env: Env) -> None:
    no_cert = ssl.create_default_context(cafile=str(env.pki.ca_cert))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_get(env, no_cert, {})
    # a service certificate is signed by the service CA, not the device CA
    svc = env.pki.service_paths("management")
    other_ca = ssl.create_default_context(cafile=str(env.pki.ca_cert))
    other_ca.load_cert_chain(str(svc.cert), str(svc.key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_get(env, other_ca, {})
    assert env.server.served == []
    # the server keeps serving after refusing them
    assert _raw_get(env, tls_context(env.identity("dev-001")), {})[0] == 200


def test_server_name_is_verified(env: Env, tmp_path: Path) -> None:
    # a server whose certificate (from the right CA) names another host
    wrong = env.pki.server("elsewhere", dns=["artifacts.example"])
    other = ArtifactServer(
        ("127.0.0.1", 0),
        env.store,
        server_context(wrong.cert, wrong.key, env.pki.ca_cert),
        lambda _d, _s: True,
    )
    other.start()
    try:
        with pytest.raises(DownloadError, match="certificate refused"):
            env.fetch(tmp_path / "x", port=other.server_address[1])
    finally:
        other.stop()
    assert other.served == []


def test_the_request_log_keeps_the_last_answers_only(tmp_path: Path) -> None:
    """Issue 19, finding 15: the artifact server's log of answered requests never shrank."""
    server = ArtifactServer(
        ("127.0.0.1", 0),
        ArtifactStore(tmp_path),
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        lambda _device, _sha: True,
    )
    try:
        for i in range(SERVED_KEPT + 500):
            server.record(Served("dev-001", "0" * 64, 206, i))
        kept = server.served
        assert len(kept) == SERVED_KEPT
        assert [s.start for s in kept] == list(range(500, SERVED_KEPT + 500))
    finally:
        server.server_close()


class Reports:
    """The update worker's reports, as the management session would publish them."""

    def __init__(self) -> None:
        self.docs: list[dict[str, object]] = []
        self.on_report: Callable[[dict[str, object]], None] = lambda doc: None

    def publish(self, payload: bytes, acked: threading.Event | None) -> bool:
        doc = json.loads(payload)
        self.docs.append(doc)
        self.on_report(doc)
        if acked is not None:
            acked.set()
        return True

    def states(self) -> list[str]:
        return [str(d["state"]) for d in self.docs]


def test_a_download_waits_for_the_check_in_and_resumes_at_the_next_one(
    env: Env, tmp_path: Path
) -> None:
    """A metered device (issue 18): a job that comes while the link is closed fetches
    nothing until it opens; a check-in that ends in the middle of the download stops it
    where it is; the next one continues it with a Range from the byte on /data."""
    ident = env.identity("dev-001")
    reports = Reports()
    updater = Updater(
        device="dev-001",
        identity=(ident.cert, ident.key, ident.ca),
        paths=Paths(tmp_path / "data", tmp_path / "run"),
        publish=reports.publish,
        read_env=lambda: {"slot": "A", "upgrade_available": "0", "bootcount": "0"},
        running_slot=lambda: "A",
        hardware=lambda: "qemux86-64 1.0",
        os_version=lambda: "1.0",
    )
    dest = updater.paths.artifact(env.artifact.sha256)
    job = {
        "v": 1,
        "job": "j-metered",
        "device": "dev-001",
        "version": "2.0",
        "hardware": {"qemux86-64": ["1.0"]},
        "sha256": env.artifact.sha256,
        "size": env.artifact.size,
        "url": env.url(),
        "install": "hold",  # download only: the test ends with the file checked
    }

    def sleep_at_a_fifth(doc: dict[str, object]) -> None:  # the check-in ends mid-download
        if doc["state"] == DOWNLOADING and int(str(doc.get("percent") or 0)) >= 20:
            updater.set_link(False)
            reports.on_report = lambda doc: None

    # The quiet spells below last three times what the whole artifact takes here now:
    # were the link open, the download would have ended in them.
    started = time.monotonic()
    env.fetch(tmp_path / "measured.swu")
    quiet = 3 * (time.monotonic() - started)
    served = env.server.served

    def requests() -> list[Served]:
        return env.server.served[len(served) :]

    updater.set_link(False)  # asleep when the job comes
    updater.start()
    try:
        updater.offer(json.dumps(job).encode())
        wait_until(lambda: updater.record is not None, PACE.limit(ROUND_TRIP), what="the job taken")
        time.sleep(quiet)
        assert requests() == [] and not dest.exists()

        reports.on_report = sleep_at_a_fifth
        updater.set_link(True)  # a check-in
        wait_until(
            lambda: not updater.link_open.is_set() and dest.exists(),
            PACE.limit(ROUND_TRIP),
            what="the download stopped by the end of the check-in",
        )
        paused_at = dest.stat().st_size
        assert 0 < paused_at < env.artifact.size
        time.sleep(quiet)  # nothing moves while it sleeps
        assert dest.stat().st_size == paused_at and len(requests()) == 1

        updater.set_link(True)  # the next check-in
        wait_until(
            lambda: DOWNLOADED in reports.states(),
            PACE.limit(ROUND_TRIP),
            what="the download finished at the next check-in",
        )
    finally:
        updater.stop()
        updater.join(PACE.limit(ROUND_TRIP))
    assert requests() == [
        Served("dev-001", env.artifact.sha256, 200, 0),
        Served("dev-001", env.artifact.sha256, 206, paused_at),
    ]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == env.artifact.sha256
    assert FAILED not in reports.states(), reports.docs
