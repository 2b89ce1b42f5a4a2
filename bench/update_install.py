"""Install time of the root file system update against a raw dd of the same bytes.

One guest (the reference image in QEMU, TCG unless --accel kvm), one run:

1. SWUpdate installs the signed .swu (kind good) into the idle slot, the way
   the agent hands it over (`swupdate-client -`, the file on stdin): the
   signature check, zstd decompression and the raw write of the rootfs partition, and the
   boot environment. Timed alone, and with the dry run the agent runs first
   (every check, nothing written).
2. `dd` writes the same bytes (the uncompressed ext4 image the .swu carries)
   to the same partition, with a final fsync (`conv=fsync`), as SWUpdate's
   raw handler ends with one.
3. The baseline a compressed update cannot beat (issue 14): `zstd -dc` of the
   same compressed payload piped into the same `dd`, in the same guest. Under
   TCG the emulated CPU's decompression dominates the install, so install / dd
   mostly measures the emulator; install / (zstd | dd) is what SWUpdate adds.
   The image has no zstd program (the layer's has none either), so this
   host's `zstd` is handed to the guest for the run (its libraries, libzstd,
   liblzma, liblz4 and zlib, are in the image for SWUpdate and systemd).

The files reach the guest as read-only virtio disks (the compressed payload
padded to whole sectors with a zstd skippable frame). Prints the times and
the ratios install / dd (target <= 1.3) and install / (zstd | dd).

    sudo .venv/bin/python bench/update_install.py [--image IMG] [--accel tcg|kvm]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from refimage import image as refimage_image
from refimage import updates
from testbed.boot.vm import VM

ROOT = Path(__file__).resolve().parent.parent

INSTALL_TIMEOUT = 1800.0


def guest_seconds(vm: VM, command: str) -> float:
    """Run `command` in the guest; its wall time measured by the guest's clock."""
    out = vm.check(
        f"s=$(date +%s.%N); {command} >/run/bench.log 2>&1; rc=$?; e=$(date +%s.%N);"
        ' echo "rc=$rc $s $e"',
        timeout=INSTALL_TIMEOUT,
    )
    m = re.search(r"rc=(\d+) ([\d.]+) ([\d.]+)", out)
    if m is None or m.group(1) != "0":
        log = vm.run("tail -20 /run/bench.log").output
        raise SystemExit(f"`{command}` failed: {out}\n{log}")
    return float(m.group(3)) - float(m.group(2))


SECTOR = 512
SKIPPABLE_MAGIC = 0x184D2A50  # a zstd skippable frame: decoders pass over it


def sector_padded(src: Path, dst: Path, *, zstd_frame: bool) -> int:
    """`src` copied to `dst` padded to whole sectors (a virtio disk's size is whole
    sectors): zeros after an ELF program, a skippable frame after a zstd stream. The
    size of what the guest reads back, in sectors."""
    data = src.read_bytes()
    pad = -len(data) % SECTOR
    if zstd_frame:
        if pad < 8:  # the frame's own header is 8 bytes
            pad += SECTOR
        body = pad - 8
        data += SKIPPABLE_MAGIC.to_bytes(4, "little") + body.to_bytes(4, "little") + bytes(body)
    else:
        data += bytes(pad)
    dst.write_bytes(data)
    return len(data) // SECTOR


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="disk image (default: the reference image)")
    parser.add_argument("--accel", default="tcg")
    args = parser.parse_args()
    image = args.image or refimage_image.build(ROOT / "build" / "refimage").disk
    swu = updates.build(ROOT, image, ROOT / "build" / "refimage", kind="good", version="9.0")
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        work = Path(tmp)
        raw = work / "rootfs.ext4"
        with swu.open("rb") as archive:
            subprocess.run(["cpio", "-id", "--quiet"], stdin=archive, cwd=work, check=True)
        packed = next(work.glob("*.ext4.zst"))
        zstd = shutil.which("zstd")
        if zstd is None:
            raise SystemExit("bench/update_install.py needs zstd on this host (scripts/setup)")
        sector_padded(packed, work / "payload.zst", zstd_frame=True)
        zstd_sectors = sector_padded(Path(zstd), work / "zstd.bin", zstd_frame=False)
        subprocess.run(["zstd", "-d", "-q", packed, "-o", raw], check=True)
        packed_mb = packed.stat().st_size / 1e6
        size = raw.stat().st_size
        disk = work / "disk.img"
        shutil.copyfile(image, disk)
        vm = VM(disk, work / "vm", accel=args.accel)
        vm.extra_drives = [swu, raw, work / "payload.zst", work / "zstd.bin"]  # vdb-vde
        vm.power_on()
        try:
            vm.login()
            idle = "b" if "twelvefactor.slot=A" in vm.check("cat /proc/cmdline") else "a"
            target = f"/dev/disk/by-partlabel/rootfs-{idle}"
            client = "TMPDIR=/run/swupdate swupdate-client"
            # no hub here, so the agent never comes online: keep the boot confirmation
            # from rebooting the guest into the slot the install just selected
            vm.check("systemctl stop twelvefactor-confirm; systemctl start swupdate.socket")
            dry = guest_seconds(vm, f"{client} -d - < /dev/vdb")
            install = guest_seconds(vm, f"{client} - < /dev/vdb")
            dd = guest_seconds(vm, f"dd if=/dev/vdc of={target} bs=4M conv=fsync status=none")
            # SWUpdate's raw handler writes in 16 KiB blocks
            dd_small = guest_seconds(
                vm, f"dd if=/dev/vdc of={target} bs=16k conv=fsync status=none"
            )
            # /run is mounted noexec: a tmpfs of the bench's own for the program
            vm.check(
                "mkdir -p /run/bench && mount -t tmpfs -o exec,size=16m bench /run/bench"
                f" && dd if=/dev/vde of=/run/bench/zstd bs={SECTOR} count={zstd_sectors}"
                " status=none && chmod 0755 /run/bench/zstd && /run/bench/zstd --version"
            )
            # from stdin: zstd skips a block device named as a file (not a regular file);
            # pipefail, so that a zstd that fails is not a fast baseline
            unpack = guest_seconds(
                vm,
                "bash -o pipefail -c '/run/bench/zstd -dc < /dev/vdd"
                f" | dd of={target} bs=4M iflag=fullblock conv=fsync status=none'",
            )
        finally:
            vm.power_cut()
    print(f"rootfs image: {packed_mb:.1f} MB compressed, {size / 1e6:.1f} MB raw")
    print(f"SWUpdate dry run (checks only):  {dry:8.1f} s")
    print(f"SWUpdate install:                {install:8.1f} s")
    print(f"dd of the same bytes (fsync):    {dd:8.1f} s")
    print(f"dd, 16 KiB writes (fsync):       {dd_small:8.1f} s")
    print(f"zstd -dc | dd (fsync):           {unpack:8.1f} s   (the baseline)")
    print(f"ratio install / dd:              {install / dd:8.2f}   (target <= 1.3)")
    print(f"ratio install / (zstd | dd):     {install / unpack:8.2f}   (what SWUpdate adds)")
    print(f"ratio (dry run + install) / dd:  {(dry + install) / dd:8.2f}   (what the agent runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
