"""Bytes a delta update moves against the full .swu, installed by the image's own SWUpdate.

Issue 14, before the layer ships delta artifacts: what SWUpdate's `delta` handler (in
the reference image's SWUpdate, Debian 13's 2024.12, built with libzck) does with a
delta `.swu` of the reference `good` update, fetching from the management service's
artifact server (`ArtifactServer`, mutual TLS, multi-range answers), in one guest:

1. on the host, the update's new root file system (uncompressed) made into a zchunk
   file with `zck -u -h sha256` (zstd chunks, SHA-256 chunk hashes and the
   uncompressed hashes the handler compares with the running slot); its header goes
   into a signed `.swu` (type `delta` chained to `raw`, `source` the running slot,
   `url` the artifact server), the `.zck` stays on the server;
2. the guest (the reference image, TCG, booted from slot A) installs that `.swu` into
   slot B with `swupdate -i`; SWUpdate indexes slot A, fetches the missing chunks;
3. slot B is read back and its sha256 compared with the new root file system's.

Made here by hand, because the layer has none of it yet: the sw-description (one
collection, A to B), the guest's `swupdate.cfg` with a `delta` section naming a test
device's certificate (on /run), its link address (QEMU's user network: the host is
10.0.2.2) and an empty firewall (the image lets nothing out but its tunnel). Prints
the bytes each way and the ratio delta / full (target <= 10 %, issue 14).

    sudo .venv/bin/python bench/delta_install.py [--image IMG] [--version 9.0]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twelvefactor_services.management.artifact_server import ArtifactServer, server_context

from refimage import image as refimage_image
from refimage import swu, updates
from testbed.boot.vm import VM
from testbed.stack import make_pki

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 1800.0
ZCK_MAGIC = b"\x00ZCK1"
SECTOR = 512
DEVICE = "dev-delta"


def zck_header_length(lead: bytes) -> int:
    """The length of a zchunk file's header, lead included, from its first bytes: the
    magic, the hash type and the header's size (zchunk's compressed integers: 7 bits a
    byte, low first, the high bit set on the last byte), then the header's digest."""
    if not lead.startswith(ZCK_MAGIC):
        raise SystemExit("not a zchunk file")
    at, values = len(ZCK_MAGIC), []
    for _ in range(2):
        value = shift = 0
        while True:
            byte = lead[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80:
                break
        values.append(value)
    hash_type, size = values
    if hash_type != 1:  # SHA-256, what `zck -h sha256` writes
        raise SystemExit(f"zchunk header hash type {hash_type}, not SHA-256")
    return at + 32 + size


def description(version: str, board: str, revision: str, header: Path, url: str) -> str:
    return f"""software =
{{
\tversion = "{version}";
\t{board} = {{
\t\thardware-compatibility: [ "{revision}" ];
\t\tstable = {{
\t\t\tcopy2 = {{
\t\t\t\timages: (
\t\t\t\t\t{{
\t\t\t\t\t\tfilename = "{header.name}";
\t\t\t\t\t\tdevice = "/dev/disk/by-partlabel/rootfs-b";
\t\t\t\t\t\ttype = "delta";
\t\t\t\t\t\tsha256 = "{swu.sha256_file(header)}";
\t\t\t\t\t\tproperties: {{
\t\t\t\t\t\t\turl = "{url}";
\t\t\t\t\t\t\tchain = "raw";
\t\t\t\t\t\t\tsource = "/dev/disk/by-partlabel/rootfs-a";
\t\t\t\t\t\t\tmax-ranges = "150";
\t\t\t\t\t\t}};
\t\t\t\t\t}}
\t\t\t\t);
\t\t\t}};
\t\t}};
\t}};
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="disk image (default: the reference image)")
    parser.add_argument("--version", default="9.0", help="the update's version")
    args = parser.parse_args()
    if shutil.which("zck") is None:
        print("bench/delta_install.py needs zck (Debian's zchunk: scripts/setup)", file=sys.stderr)
        return 2
    image = args.image or refimage_image.build(ROOT / "build" / "refimage").disk
    full = updates.build(
        ROOT, image, ROOT / "build" / "refimage", kind="good", version=args.version
    )
    board, revision = swu.hwrevision(image)
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp:
        work = Path(tmp)
        with full.open("rb") as archive:
            subprocess.run(["cpio", "-id", "--quiet"], stdin=archive, cwd=work, check=True)
        raw = work / "rootfs.ext4"
        subprocess.run(["zstd", "-d", "-q", next(work.glob("*.ext4.zst")), "-o", raw], check=True)
        zck = work / "rootfs.zck"
        subprocess.run(["zck", "-u", "-h", "sha256", "-o", zck, raw], check=True)
        with zck.open("rb") as f:
            lead = f.read(64)
            f.seek(0)
            header = work / "rootfs.zck.header"
            header.write_bytes(f.read(zck_header_length(lead)))

        pki = make_pki(work / "pki")
        served = pki.server("artifacts", ips=["10.0.2.2"])
        dev = pki.device(DEVICE)
        zck_sha = swu.sha256_file(zck)

        class OneFile:  # the artifact server's store, holding the .zck only
            def path(self, sha256: str) -> Path:
                return zck if sha256 == zck_sha else work / "none"

        sent: list[int] = []  # body bytes of each answer
        server = ArtifactServer(
            ("0.0.0.0", 0),
            OneFile(),  # type: ignore[arg-type]
            server_context(served.cert, served.key, pki.ca_cert),
            lambda device, sha: device == DEVICE,
            lambda device, sha, n: sent.append(n),
        )
        server.start()
        url = f"https://10.0.2.2:{server.server_address[1]}/artifacts/{zck_sha}.swu"
        text = description(args.version, board, revision, header, url)
        (work / swu.DESCRIPTION).write_text(text)
        (work / swu.SIGNATURE).write_bytes(swu.sign(ROOT, text))
        delta = swu.pack(
            work / "delta.swu",
            [
                (swu.DESCRIPTION, work / swu.DESCRIPTION),
                (swu.SIGNATURE, work / swu.SIGNATURE),
                (header.name, header),
            ],
        )
        delta_size = delta.stat().st_size
        with delta.open("ab") as f:  # whole sectors for the virtio disk (cpio ignores them)
            f.write(bytes(-delta_size % SECTOR))
        disk = work / "disk.img"
        shutil.copyfile(image, disk)
        vm = VM(disk, work / "vm")
        vm.extra_drives = [delta]
        vm.power_on()
        try:
            vm.login()
            assert "twelvefactor.slot=A" in vm.check("cat /proc/cmdline")
            vm.check(
                "systemctl stop twelvefactor-confirm swupdate.socket swupdate.service;"
                " nft flush ruleset; nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1);"
                " ip link set dev $nic up && ip addr add 10.0.2.15/24 dev $nic"
            )
            for name, path in (
                ("ca.crt", pki.ca_cert),
                ("dev.crt", dev.cert),
                ("dev.key", dev.key),
            ):
                vm.put(f"/run/{name}", path.read_bytes())
            vm.put(
                "/run/swupdate.cfg",
                b"globals: { loglevel = 5; };\n"  # SWUpdate refuses a file without it
                b'delta: { cafile = "/run/ca.crt"; sslkey = "/run/dev.key";'
                b' sslcert = "/run/dev.crt"; };\n',
            )
            sectors = delta.stat().st_size // SECTOR
            vm.check(f"dd if=/dev/vdb of=/run/delta.swu bs={SECTOR} count={sectors} status=none")
            done = vm.run(
                "swupdate -f /run/swupdate.cfg -v -k /etc/swupdate/update-signing.crt"
                " -e stable,copy2 -i /run/delta.swu > /run/swupdate.log 2>&1; echo rc=$?",
                timeout=INSTALL_TIMEOUT,
            )
            log = vm.run("grep -E 'Total bytes|downloaded|SWUpdate' /run/swupdate.log").output
            if "rc=0" not in done.output:
                tail = vm.run("tail -30 /run/swupdate.log").output
                raise SystemExit(f"the delta install failed:\n{tail}")
            size = raw.stat().st_size
            got = vm.check(
                f"dd if=/dev/disk/by-partlabel/rootfs-b bs=4M iflag=count_bytes count={size}"
                " status=none | sha256sum",
                timeout=INSTALL_TIMEOUT,
            ).split()[0]
        finally:
            vm.power_cut()
            server.stop()
        want = hashlib.sha256(raw.read_bytes()).hexdigest()
        fetched = sum(sent)
        moved = delta_size + fetched
        print(log)
        print(f"root file system: {size} B raw; full .swu {full.stat().st_size} B")
        print(f"zchunk file: {zck.stat().st_size} B, its header {header.stat().st_size} B")
        print(f"delta .swu (sw-description, signature, header): {delta_size} B")
        requests = len(server.served)
        print(f"chunks fetched from the artifact server: {fetched} B in {requests} request(s)")
        print(f"slot B after the install: {'the new root file system' if got == want else 'WRONG'}")
        print(
            f"moved: {moved} B, delta / full = {moved / full.stat().st_size:.4f} (target <= 0.10)"
        )
        return 0 if got == want else 1


if __name__ == "__main__":
    sys.exit(main())
