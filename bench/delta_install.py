"""Bytes a delta update moves against the full .swu, installed by the image's own SWUpdate.

Issue 14, before the layer ships delta artifacts: what SWUpdate's `delta` handler (in
the reference image's SWUpdate, Debian 13's 2024.12, built with libzck) does with a
delta `.swu` of a reference update (by default the `package` kind, a one-package
release: the agent's version and another build of dosfstools), fetching from the
management service's artifact server (`ArtifactServer`, mutual TLS, multi-range
answers), in one guest:

1. on the host, the artifact tool's `build_delta` (`twelvefactor-artifact build
   --delta-url`) makes the delta `.swu` of the update (the layer's
   sw-description-delta: the zchunk header, type `delta` chained to `raw`,
   `source` the running slot, `url` the artifact server) and its `.zck`; the
   management service's artifact store takes the full `.swu`, the `.zck` and the
   delta as an operator adds them (`artifact add --delta --zck`);
2. the guest (the reference image, TCG, booted from slot A) installs that `.swu` into
   slot B with `swupdate -i`; SWUpdate indexes slot A, fetches the missing chunks;
3. slot B is read back and its sha256 compared with the new root file system's.

Made here by hand, because the bench runs the image unprovisioned (no tunnel, no
identity on /data): the guest's `swupdate.cfg` with a `delta` section naming a test
device's certificate (on /run), its link address (QEMU's user network: the host is
10.0.2.2) and an empty firewall (the image lets nothing out but its tunnel). Prints
the bytes each way and the ratio delta / full (target <= 10 %, issue 14).

    sudo .venv/bin/python bench/delta_install.py [--image IMG] [--version 9.0] [--kind package]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twelvefactor_services.artifact import swu as swuformat
from twelvefactor_services.artifact.build import build_delta
from twelvefactor_services.artifact.template import (
    DELTA_TEMPLATE_NAME,
    Hardware,
    default_template,
)
from twelvefactor_services.management.artifact_server import ArtifactServer, server_context
from twelvefactor_services.management.artifacts import ArtifactStore
from update_install import guest_seconds, sector_padded  # beside this script

from refimage import image as refimage_image
from refimage import swu, updates
from testbed.boot.vm import VM
from testbed.stack import make_pki

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 1800.0
SECTOR = 512
DEVICE = "dev-delta"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="disk image (default: the reference image)")
    parser.add_argument("--version", default="9.0", help="the update's version")
    parser.add_argument(
        "--kind",
        default="package",
        choices=("package", "good"),
        help="the update: one package changed (default), or only os-release",
    )
    args = parser.parse_args()
    if shutil.which("zck") is None or shutil.which("zstd") is None:
        print(
            "bench/delta_install.py needs zck and zstd (Debian's zchunk and zstd: scripts/setup)",
            file=sys.stderr,
        )
        return 2
    image = args.image or refimage_image.build(ROOT / "build" / "refimage").disk
    built_full = updates.build(
        ROOT, image, ROOT / "build" / "refimage", kind=args.kind, version=args.version
    )
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp:
        work = Path(tmp)
        # a copy: another build may prune the cache while the guest installs
        full = work / "full.swu"
        shutil.copyfile(built_full, full)
        info = swuformat.describe(full)
        packed = work / info.files[0].filename
        with full.open("rb") as archive, packed.open("wb") as out:
            subprocess.run(
                ["cpio", "-i", "--quiet", "--to-stdout", packed.name],
                stdin=archive,
                stdout=out,
                check=True,
            )
        raw = work / "rootfs.ext4"
        subprocess.run(["zstd", "-d", "-q", packed, "-o", raw], check=True)
        pki = make_pki(work / "pki")
        served = pki.server("artifacts", ips=["10.0.2.2"])
        dev = pki.device(DEVICE)
        store = ArtifactStore(work / "store", ROOT / swu.SIGNING_CERT)
        sent: list[int] = []  # body bytes of each answer
        server = ArtifactServer(
            ("0.0.0.0", 0),
            store,
            server_context(served.cert, served.key, pki.ca_cert),
            lambda device, sha: device == DEVICE,
            lambda device, sha, n: sent.append(n),
        )
        url = f"https://10.0.2.2:{server.server_address[1]}"
        hardware = [Hardware(b, r) for b, r in info.hardware.items()]
        # the same delta without source-size: SWUpdate indexes the whole source partition
        whole_template = work / "sw-description-delta-whole"
        whole_template.write_text(
            "".join(
                line
                for line in default_template(DELTA_TEMPLATE_NAME).read_text().splitlines(True)
                if "source-size" not in line and "index the running file system" not in line
            )
        )
        built, whole = (
            build_delta(
                raw,
                work / name,
                work / "rootfs.zck",
                version=info.version,
                hardware=hardware,
                signer=swu.signer(ROOT),
                url=url,
                template=template,
            )
            for name, template in (("delta.swu", None), ("whole.swu", whole_template))
        )
        artifact = store.add(full)
        store.add_zck(artifact.sha256, built.zck)
        store.add_delta(artifact.sha256, built.swu)
        server.start()
        delta = built.swu
        header = next(m for m in _members(delta) if m.name.endswith(".zckheader"))
        delta_size = delta.stat().st_size
        for f in (delta, whole.swu):
            with f.open("ab") as out_file:  # whole sectors for the virtio disk (cpio ignores them)
                out_file.write(bytes(-f.stat().st_size % SECTOR))
        disk = work / "disk.img"
        shutil.copyfile(image, disk)
        vm = VM(disk, work / "vm")
        # the baseline a compressed update cannot beat, as bench/update_install.py has it:
        # the full update's payload through the host's zstd into the same partition
        zstd = shutil.which("zstd") or "zstd"
        sector_padded(packed, work / "payload.zst", zstd_frame=True)
        zstd_sectors = sector_padded(Path(zstd), work / "zstd.bin", zstd_frame=False)
        vm.extra_drives = [delta, work / "payload.zst", work / "zstd.bin", whole.swu]  # vdb-vde
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
            for drive, f in (("vdb", delta), ("vde", whole.swu)):
                vm.check(
                    f"dd if=/dev/{drive} of=/run/{f.name} bs={SECTOR}"
                    f" count={f.stat().st_size // SECTOR} status=none"
                )
            # the installs, chunk fetch included (guest_seconds: the log is /run/bench.log);
            # first the whole partition indexed, then the shipped delta (source-size),
            # whose log and slot B are the ones checked
            installs = {}
            for f in (whole.swu, delta):
                # each from a cold page cache: the first would warm the source for the second
                vm.check("sync && echo 3 > /proc/sys/vm/drop_caches")
                answers = len(sent)  # the artifact server's answers before this install
                installs[f.name] = guest_seconds(
                    vm,
                    "swupdate -f /run/swupdate.cfg -v -k /etc/swupdate/update-signing.crt"
                    f" -e stable,copy2 -i /run/{f.name}",
                )
            install = installs[delta.name]
            log = vm.run("grep -E 'Total bytes|downloaded|SWUpdate' /run/bench.log").output
            size = raw.stat().st_size
            got = vm.check(
                f"dd if=/dev/disk/by-partlabel/rootfs-b bs=4M iflag=count_bytes count={size}"
                " status=none | sha256sum",
                timeout=INSTALL_TIMEOUT,
            ).split()[0]
            vm.check(
                "mkdir -p /run/bench && mount -t tmpfs -o exec,size=16m bench /run/bench"
                f" && dd if=/dev/vdd of=/run/bench/zstd bs={SECTOR} count={zstd_sectors}"
                " status=none && chmod 0755 /run/bench/zstd"
            )
            unpack = guest_seconds(
                vm,
                "bash -o pipefail -c '/run/bench/zstd -dc < /dev/vdc"
                " | dd of=/dev/disk/by-partlabel/rootfs-b bs=4M iflag=fullblock conv=fsync"
                " status=none'",
            )
        finally:
            vm.power_cut()
            server.stop()
        want = hashlib.sha256(raw.read_bytes()).hexdigest()
        fetched = sum(sent[answers:])  # the shipped delta's answers
        moved = delta_size + fetched
        print(log)
        print(f"root file system: {size} B raw; full .swu {full.stat().st_size} B")
        print(f"zchunk file: {built.zck.stat().st_size} B, its header {header.size} B")
        print(f"delta .swu (sw-description, signature, header): {delta_size} B")
        requests = len(sent) - answers
        print(f"chunks fetched from the artifact server: {fetched} B in {requests} request(s)")
        print(f"slot B after the install: {'the new root file system' if got == want else 'WRONG'}")
        print(f"delta install (index, chunk fetch, write): {install:8.1f} s")
        whole_s = installs[whole.swu.name]
        print(f"the same without source-size (index the whole partition): {whole_s:8.1f} s")
        print(f"source-size saves: {whole_s / install:6.2f} x")
        print(f"zstd -dc | dd of the full payload (fsync): {unpack:8.1f} s   (the baseline)")
        print(f"ratio (install + chunk fetch) / (zstd | dd): {install / unpack:6.2f}")
        print(
            f"moved: {moved} B, delta / full = {moved / full.stat().st_size:.4f} (target <= 0.10)"
        )
        return 0 if got == want else 1


def _members(path: Path) -> tuple[swuformat.Member, ...]:
    with path.open("rb") as f:
        return swuformat.read_archive(f).members


if __name__ == "__main__":
    sys.exit(main())
