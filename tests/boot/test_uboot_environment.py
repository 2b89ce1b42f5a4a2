"""The U-Boot environment through power cuts during U-Boot's own writes (qemuarm64).

The reference image's U-Boot (refimage/uboot.py: Debian's source, the layer's
fragments) on a disk laid out as the layer's wks, its ESP filled as the image
recipe fills it, with a freshly installed slot B that has no kernel: every
power-on counts a boot (CONFIG_BOOTCOUNT_ENV saves the environment, one copy
per save, alternately), boot.scr finds nothing to boot and resets, and QEMU
exits (-no-reboot). The power is cut while U-Boot writes ("Saving Environment
to FAT..."), then both copies are read from the ESP: at least one must be
whole, libubootenv must read the environment, and the next boot must load it
and count on from the count it held. One copy torn on purpose shows that the
other carries the environment alone.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from helpers import require_root, require_tool

from refimage import disk, uboot
from refimage import image as refimage_image
from refimage.lock import locked
from refimage.uboot_env import EnvCopy, read_copy
from testbed.boot import pace
from testbed.boot.pace import PACE

ROOT = Path(__file__).resolve().parents[2]
COPIES = ("uboot.env", "uboot-redund.env")
ENV_SIZE = 0x4000
SAVING = "Saving Environment to FAT... "
CUTS = 6
# power-on to the reset of a boot that finds no kernel, on an idle machine (3-5 s)
BOOT_SECONDS = 10.0
_booted: list[float] = []  # this run's boots of U-Boot here, power-on to reset (s)


def boot_limit() -> float:
    """Seconds to allow one U-Boot boot: the tier's pace applied to BOOT_SECONDS, or
    a multiple of the slowest boot timed here if that is longer. A boot this short
    is noisy, so the slowest one alone could be a tight limit on a machine that
    gets busier; the pace keeps a floor under it."""
    return max(PACE.limit(BOOT_SECONDS), pace.FACTOR * max(_booted, default=0.0))


@pytest.fixture(scope="module")
def built() -> uboot.UBoot:
    require_root()
    for tool in ("aarch64-linux-gnu-gcc", "mkimage", "mkenvimage", "qemu-system-aarch64"):
        require_tool(tool)
    out = refimage_image.default_out("qemuarm64")
    with locked(out):
        return uboot.build(out, out / refimage_image.BUILD_LOG)


class Board:
    """A disk with the layer's ESP and a slot B without a kernel, and U-Boot on it."""

    LAYOUT = (
        disk.Partition("esp", 64, disk.ESP_TYPE),
        disk.Partition("rootfs-a", 8, disk.LINUX_TYPE),
        disk.Partition("rootfs-b", 8, disk.LINUX_TYPE),
    )

    def __init__(self, built: uboot.UBoot, work: Path) -> None:
        for tool in ("mkfs.vfat", "mcopy", "mmd", "sfdisk", "mkfs.ext4", "fw_printenv"):
            require_tool(tool)
        self.uboot = built
        self.work = work
        log = work / "build.log"
        # bootlimit 100: the counter must not run out (altbootcmd) within these tests' boots
        ab = ("slot=B", "upgrade_available=1", "bootcount=0", "bootlimit=100")
        env = uboot.environment(built.initial_env, work, log, *ab)
        files = {"boot.scr": uboot.boot_script(work, log), **dict.fromkeys(COPIES, env)}
        offsets = disk.offsets(self.LAYOUT)
        self.disk = work / "disk.img"
        disk.partition_table(self.disk, self.LAYOUT)
        esp = work / "esp.vfat"
        disk.make_esp(esp, offsets["esp"][1], files, log)
        disk.write_into(self.disk, esp, *offsets["esp"])
        for name in ("rootfs-a", "rootfs-b"):
            fs = work / f"{name}.ext4"
            disk.make_ext4(None, fs, name, offsets[name][1], log)
            disk.write_into(self.disk, fs, *offsets[name])
        self.esp_offset = offsets["esp"][0]
        self.console = (work / "console.log").open("a", encoding="utf-8", errors="replace")

    def spawn(self) -> pexpect.spawn:
        child = pexpect.spawn(
            "qemu-system-aarch64",
            [
                "-machine", "virt", "-cpu", "cortex-a57", "-m", "512", "-nographic",
                "-no-reboot", "-bios", str(self.uboot.binary),
                "-drive", f"if=none,id=disk0,format=raw,file={self.disk},cache=writethrough",
                "-device", "virtio-blk-device,drive=disk0",
            ],
            encoding="utf-8",
            codec_errors="replace",
            timeout=boot_limit(),
        )  # fmt: skip
        child.logfile_read = self.console
        return child

    def boot(self) -> str:
        """One boot to its reset; the console."""
        started = time.monotonic()
        child = self.spawn()
        child.expect(pexpect.EOF, timeout=boot_limit())
        _booted.append(time.monotonic() - started)
        return str(child.before)

    def cut_while_saving(self, delay: float) -> None:
        """Power on and cut the power `delay` seconds after U-Boot starts writing."""
        child = self.spawn()
        child.expect_exact(SAVING, timeout=boot_limit())
        time.sleep(delay)
        child.kill(9)
        child.close(force=True)

    def copies(self) -> dict[str, EnvCopy]:
        out = {}
        for name in COPIES:
            target = self.work / name
            target.unlink(missing_ok=True)
            subprocess.run(
                ["mcopy", "-n", "-i", f"{self.disk}@@{self.esp_offset}", f"::/{name}", target],
                check=True,
                capture_output=True,
            )
            raw = target.read_bytes()
            assert len(raw) == ENV_SIZE, f"{name}: {len(raw)} bytes"
            out[name] = read_copy(raw)
        return out

    def printenv(self) -> dict[str, str]:
        """The environment as libubootenv (fw_printenv, SWUpdate's library) reads it
        from both copies as they are on the ESP now."""
        self.copies()  # fresh out of the disk
        config = self.work / "fw_env.config"
        config.write_text("".join(f"{self.work / n} 0x0000 {ENV_SIZE:#x}\n" for n in COPIES))
        done = subprocess.run(
            ["fw_printenv", "-c", str(config)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"fw_printenv: {done.stderr.strip()}"
        return dict(line.partition("=")[::2] for line in done.stdout.splitlines())


@pytest.fixture
def board(built: uboot.UBoot, tmp_path: Path) -> Iterator[Board]:
    b = Board(built, tmp_path)
    yield b
    b.console.close()


def test_each_boot_of_an_unconfirmed_slot_is_counted_in_the_other_copy(board: Board) -> None:
    before = board.copies()
    assert all(c.whole for c in before.values())
    out = board.boot()
    assert "Loading Environment from FAT... OK" in out, out[-2000:]
    assert "twelvefactor: slot B did not boot" in out, out[-2000:]
    after = board.copies()
    changed = [n for n in COPIES if after[n] != before[n]]
    assert changed, "U-Boot saved nothing"
    assert [after[n].variables["bootcount"] for n in changed] == ["1"]
    assert board.printenv()["bootcount"] == "1"
    board.boot()
    assert board.printenv()["bootcount"] == "2"
    flags = sorted(c.serial for c in board.copies().values())
    assert flags[1] - flags[0] == 1, f"the copies did not alternate: {flags}"


def test_a_power_cut_during_the_write_loses_at_most_that_write(board: Board) -> None:
    rng = random.Random(16)
    count = 0
    torn = 0
    lost = 0
    for cut in range(CUTS):
        # from the start of the write to well past its end under TCG
        board.cut_while_saving(rng.uniform(0.0, 0.05))
        copies = board.copies()
        torn += sum(not c.whole for c in copies.values())
        assert any(c.whole for c in copies.values()), f"cut {cut}: neither copy is whole"
        after = int(board.printenv()["bootcount"])
        assert after in (count, count + 1), f"cut {cut}: bootcount {after} after {count}"
        lost += after == count
        count = after
        out = board.boot()  # the next boot loads what survived and counts on
        assert "Loading Environment from FAT... OK" in out, f"cut {cut}:\n{out[-2000:]}"
        count += 1
        assert int(board.printenv()["bootcount"]) == count, f"cut {cut}: not counted on"
        assert all(c.whole for c in board.copies().values()), f"cut {cut}: a torn copy remains"
    print(f"{CUTS} cuts at U-Boot's environment write: {lost} lost the write, {torn} tore a copy")


def test_a_torn_copy_leaves_the_other_to_carry_the_environment(board: Board) -> None:
    board.boot()
    board.boot()
    newer = max(board.copies().items(), key=lambda item: item[1].serial)[0]
    older = board.copies()[next(n for n in COPIES if n != newer)]
    # tear the newer copy as a cut in the middle of its write would
    path = board.work / newer
    raw = bytearray(path.read_bytes())
    raw[ENV_SIZE // 2 :] = b"\xff" * (ENV_SIZE - ENV_SIZE // 2)
    path.write_bytes(bytes(raw))
    subprocess.run(
        ["mcopy", "-o", "-i", f"{board.disk}@@{board.esp_offset}", path, f"::/{newer}"],
        check=True,
        capture_output=True,
    )
    assert not board.copies()[newer].whole
    assert board.printenv()["bootcount"] == older.variables["bootcount"]
    out = board.boot()
    assert "Loading Environment from FAT... OK" in out, out[-2000:]
    counted = int(older.variables["bootcount"]) + 1
    assert board.printenv()["bootcount"] == str(counted)
    assert all(c.whole for c in board.copies().values()), "the torn copy was not rewritten"
