"""The layer's U-Boot A/B path (qemuarm64, raspberrypi4-64), checked with real tools.

The arm machines boot with U-Boot, which no reference image runs yet, so
these checks stand where a boot test would: the U-Boot fragments against the
Kconfig of the U-Boot wrynose builds (a renamed option is silently dropped by
Kconfig), the environment copies on a fresh ESP as libubootenv reads and
writes them (`fw_printenv`/`fw_setenv`, the library SWUpdate uses), and the
layer's boot.scr and altbootcmd run by a real U-Boot: Debian's u-boot-qemu in
qemu-system-aarch64 (TCG, a few seconds). That U-Boot is 2023.01 with the same
(old) hush parser wrynose's 2026.01 uses by default; its environment lives in
flash, not on the ESP, and it has no `fdt apply`, so the FAT copies are checked
with libubootenv and device-tree overlays are not run here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest
from helpers import require_tool
from twelvefactor_agent.update import steps

from refimage import disk
from refimage import layer_files as lf
from refimage import uboot as uboot_build
from refimage.uboot_env import read_copy

UBOOT_MACHINES = ("qemuarm64", "raspberrypi4-64")
# the layer's files, as the reference image's builder names them
BOOT_CMD = uboot_build.BOOT_CMD
FW_ENV_CONFIG = uboot_build.BOOT_DIR / "files/fw_env.config"
AB_ENV = uboot_build.AB_ENV
ENV_RECIPE = uboot_build.ENV_RECIPE
UBOOT_APPEND = uboot_build.UBOOT_APPEND
KCONFIG_SYMBOLS = Path(__file__).parent / "data/uboot-kconfig-symbols.txt"
UBOOT_QEMU = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")

# U-Boot's built-in environment as its build writes it (u-boot-initial-env,
# `name=value` lines), standing in for the file the U-Boot recipe deploys; the
# layer's variables must replace a built-in one of the same name (bootlimit).
DEFAULT_ENV = """arch=arm
board=rpi
bootcmd=bootflow scan -lb
bootdelay=2
bootlimit=5
fdt_addr_r=0x05600000
kernel_addr_r=0x00080000
"""


# --- the layer's files, read -------------------------------------------------


def fragment_options(machine: str) -> dict[str, str]:
    """CONFIG_ options the layer's U-Boot fragments set for `machine` (wrynose's names)."""
    options: dict[str, str] = {}
    for fragment in uboot_build.fragments(machine):
        for name, value in uboot_build.parse_config(fragment.read_text()).items():
            options[name] = value.strip('"')
    return options


def fw_env_entries() -> list[tuple[str, int, int]]:
    """(file, offset, size) of each environment copy in fw_env.config."""
    entries = []
    for line in FW_ENV_CONFIG.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            path, offset, size = line.split()[:3]
            entries.append((path, int(offset, 0), int(size, 0)))
    return entries


def recipe_value(recipe: Path, name: str) -> str:
    value = lf._assignments(recipe.read_text()).get(name)
    assert value is not None, f"{recipe.name}: no {name}"
    return value


def ab_variables() -> dict[str, str]:
    """The A/B variables the image's environment starts with (uboot-ab.env)."""
    assert AB_ENV.is_file(), f"{AB_ENV.relative_to(lf.REPO)}: missing"
    env = {}
    for line in AB_ENV.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def boot_cmd_defaults() -> dict[str, str]:
    """What boot.cmd sets when it finds no twelvefactor environment (tf_env != 1)."""
    block = re.search(
        r'^if test "\$\{tf_env\}" != "1"; then\n(.*?)^fi$', BOOT_CMD.read_text(), re.M | re.S
    )
    assert block, "boot.cmd: no first-boot block"
    env = {}
    for line in block.group(1).splitlines():
        if m := re.match(r"^\s*setenv (\w+) (.*)$", line):
            env[m.group(1)] = m.group(2).strip("'")
    return env


# --- builders ----------------------------------------------------------------


def compile_boot_script(out: Path) -> Path:
    require_tool("mkimage")
    return uboot_build.boot_script(out, out / "build.log")


def environment_image(out: Path, default_env: str = DEFAULT_ENV) -> Path:
    """The environment image the layer deploys, made as the reference image makes it
    (refimage/uboot.py: the layer's script on U-Boot's built-in environment)."""
    require_tool("mkenvimage")
    default = out / "u-boot-initial-env"
    default.write_text(default_env)
    return uboot_build.environment(default, out, out / "build.log")


def esp_files(machine: str, out: Path) -> dict[str, Path]:
    """ESP path -> built file, for the IMAGE_BOOT_FILES entries the layer builds."""
    built = {"boot.scr": compile_boot_script(out), "twelvefactor/uboot.env": environment_image(out)}
    files = {}
    for entry in lf.image_boot_files(machine):
        source, _, dest = entry.partition(";")
        if source in built:
            files[dest or Path(source).name] = built[source]
    return files


def make_esp(machine: str, work: Path, extra: dict[str, Path] | None = None) -> Path:
    """The FAT ESP the image would hold on `machine` (plus `extra` files)."""
    require_tool("mkfs.vfat")
    require_tool("mcopy")
    esp = work / "esp.img"
    files = esp_files(machine, work) | (extra or {})
    disk.make_esp(esp, 64 * disk.MIB, files, work / "esp.log")
    return esp


def copy_out(esp: Path, dest: Path) -> None:
    """The ESP's files, as the device sees them mounted at /boot."""
    dest.mkdir()
    subprocess.run(
        [require_tool("mcopy"), "-s", "-n", "-i", str(esp), "::/*", str(dest)], check=True
    )


# --- static checks -------------------------------------------------------------


@pytest.mark.parametrize("machine", UBOOT_MACHINES)
def test_fragments_name_options_of_the_uboot_wrynose_builds(machine: str) -> None:
    # Kconfig drops an unknown option without a word: U-Boot 2025.10 renamed
    # SYS_REDUNDAND_ENVIRONMENT to ENV_REDUNDANT, and with the old name the
    # environment is a single copy in a format libubootenv does not expect.
    known = {
        line
        for line in KCONFIG_SYMBOLS.read_text().splitlines()
        if line and not line.startswith("#")
    }
    options = fragment_options(machine)
    assert options
    unknown = sorted(o for o in options if o.removeprefix("CONFIG_") not in known)
    assert not unknown, f"not options of U-Boot v2026.01: {unknown}"


@pytest.mark.parametrize("machine", UBOOT_MACHINES)
def test_environment_copies_are_named_alike_everywhere(machine: str) -> None:
    options = fragment_options(machine)
    assert options.get("CONFIG_ENV_IS_IN_FAT") == "y"
    assert options.get("CONFIG_ENV_REDUNDANT") == "y", "U-Boot keeps a single environment copy"
    size = int(options["CONFIG_ENV_SIZE"], 0)
    files = [
        options["CONFIG_ENV_FAT_FILE"],
        options.get("CONFIG_ENV_FAT_FILE_REDUND", "uboot-redund.env"),
    ]
    # libubootenv (fw_env.config): the same two files on the ESP, mounted at /boot
    assert fw_env_entries() == [(f"/boot/{name}", 0, size) for name in files]
    # the image puts both on the ESP: libubootenv refuses to work with one missing
    on_esp = [entry.partition(";")[2] for entry in lf.image_boot_files(machine)]
    missing = [name for name in files if name not in on_esp]
    assert not missing, f"{machine}: IMAGE_BOOT_FILES puts no {missing} on the ESP"
    assert int(recipe_value(ENV_RECIPE, "TWELVEFACTOR_UBOOT_ENV_SIZE"), 0) == size


def test_boot_script_and_image_environment_start_alike() -> None:
    # One contract in two places: the environment written at image time, and
    # what boot.cmd sets when U-Boot lost both copies and fell back to its own.
    assert boot_cmd_defaults() == ab_variables()


def test_raspberry_pi_esp_holds_no_kernel() -> None:
    # boot.scr loads the kernel from the slot; a copy on the ESP is never updated.
    entries = lf.image_boot_files("raspberrypi4-64")
    assert "${KERNEL_IMAGETYPE}" not in entries, entries
    assert "boot.scr" in entries


def test_boot_script_compiles(tmp_path: Path) -> None:
    script = compile_boot_script(tmp_path)
    listed = subprocess.run(
        [require_tool("mkimage"), "-l", str(script)], capture_output=True, text=True, check=True
    )
    assert "Script" in listed.stdout and "AArch64" in listed.stdout, listed.stdout


# --- libubootenv on a fresh ESP --------------------------------------------------


@pytest.mark.parametrize("machine", UBOOT_MACHINES)
def test_fresh_esp_environment_is_read_and_written_by_libubootenv(
    machine: str, tmp_path: Path
) -> None:
    printenv = require_tool("fw_printenv")
    setenv = require_tool("fw_setenv")
    esp = make_esp(machine, tmp_path)
    boot = tmp_path / "boot"
    copy_out(esp, boot)
    config = tmp_path / "fw_env.config"
    config.write_text(FW_ENV_CONFIG.read_text().replace("/boot/", f"{boot}/"))

    done = subprocess.run(
        [printenv, "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"fw_printenv on a fresh {machine} ESP: {done.stderr.strip()}"
    env = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    # U-Boot's own environment kept (bootcmd), the layer's A/B variables over it
    assert env["bootcmd"] == "bootflow scan -lb"
    assert {k: env.get(k) for k in ab_variables()} == ab_variables()
    for path, _, size in fw_env_entries():
        raw = (boot / Path(path).name).read_bytes()
        assert len(raw) == size
        copy = read_copy(raw)
        assert (copy.whole, copy.serial) == (True, 1), path

    # what SWUpdate writes when it installs into slot B
    script = tmp_path / "swupdate.env"
    script.write_text("slot=B\nupgrade_available=1\nbootcount=0\n")
    done = subprocess.run(
        [setenv, "-c", str(config), "-s", str(script)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"fw_setenv on a fresh {machine} ESP: {done.stderr.strip()}"
    done = subprocess.run([printenv, "-c", str(config)], capture_output=True, text=True, check=True)
    env = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    assert (env["slot"], env["upgrade_available"], env["bootcount"]) == ("B", "1", "0")
    assert env["bootcmd"] == "bootflow scan -lb"
    copies = [read_copy((boot / Path(p).name).read_bytes()) for p, _, _ in fw_env_entries()]
    flags = sorted((c.whole, c.serial) for c in copies)
    assert flags == [(True, 1), (True, 2)], "the write went to the other copy, one serial up"


# --- the boot script and altbootcmd in a real U-Boot --------------------------------

# boot.cmd up to the boot attempt, which with no kernel in the slot ends in a
# reset (QEMU then exits): the bookkeeping the attempt starts from.
BEFORE_ATTEMPT = 'if test "${slot}" = "B"; then setenv tf_root'


class UBoot:
    """Debian's U-Boot for QEMU's virt machine at its prompt, on the serial console."""

    PROMPT = "=> "

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    def run(self, command: str, timeout: float = 30) -> str:
        self.child.sendline(command)
        self.child.expect_exact(command, timeout=timeout)  # U-Boot's echo of it
        self.child.expect_exact(self.PROMPT, timeout=timeout)
        return str(self.child.before).replace("\r", "").strip("\n")

    def printenv(self, *names: str) -> dict[str, str]:
        out = self.run("printenv " + " ".join(names))
        return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)

    def source(self, script: str = "boot.scr") -> str:
        """Run a script from the ESP as U-Boot's script boot method runs boot.scr."""
        self.run("setenv devtype virtio; setenv devnum 0; setenv distro_bootpart 1")
        self.run(f"load virtio 0:1 ${{scriptaddr}} {script}")
        return self.run("source ${scriptaddr}")


@pytest.fixture(scope="module")
def uboot_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk as the layer's wks lays it out: the ESP as the image fills it,
    rootfs-a holding a device tree where the kernel package puts it (no kernel),
    rootfs-b empty."""
    require_tool("qemu-system-aarch64")
    require_tool("sfdisk")
    require_tool("mkfs.ext4")
    if not UBOOT_QEMU.is_file():
        pytest.fail(
            f"this test needs {UBOOT_QEMU} (Debian package u-boot-qemu): run scripts/setup",
            pytrace=False,
        )
    work = tmp_path_factory.mktemp("uboot")
    slot = work / "slot-a"
    (slot / "boot/broadcom").mkdir(parents=True)
    dtb = slot / "boot/broadcom/bcm2711-rpi-4-b.dtb"
    # a real device tree (QEMU's own) stands at the Raspberry Pi 4's DTB path
    subprocess.run(
        ["qemu-system-aarch64", "-M", f"virt,dumpdtb={dtb}", "-cpu", "cortex-a57", "-nographic"],
        check=True,
        capture_output=True,
    )
    head = work / "head"
    head.mkdir()
    text = BOOT_CMD.read_text()
    (head / "boot.cmd").write_text(text[: text.index(BEFORE_ATTEMPT)])
    mkimage = require_tool("mkimage")
    subprocess.run(
        [
            mkimage,
            "-A",
            "arm64",
            "-T",
            "script",
            "-C",
            "none",
            "-d",
            head / "boot.cmd",
            head / "head.scr",
        ],
        check=True,
        capture_output=True,
    )
    layout = (
        disk.Partition("esp", 64, disk.ESP_TYPE),
        disk.Partition("rootfs-a", 16, disk.LINUX_TYPE),
        disk.Partition("rootfs-b", 16, disk.LINUX_TYPE),
    )
    image = work / "disk.img"
    disk.partition_table(image, layout)
    offsets = disk.offsets(layout)
    esp = make_esp("qemuarm64", work, {"test/head.scr": head / "head.scr"})
    disk.write_into(image, esp, *offsets["esp"])
    log = work / "ext4.log"
    for name, src in (("rootfs-a", slot), ("rootfs-b", None)):
        fs = work / f"{name}.img"
        disk.make_ext4(src, fs, name, offsets[name][1], log)
        disk.write_into(image, fs, *offsets[name])
    return image


@contextmanager
def uboot(disk_image: Path) -> Iterator[UBoot]:
    """U-Boot at its prompt on `disk_image` (not changed: snapshot=on). Its own
    environment lives in flash, where this QEMU fails its writes: a saveenv
    reports "Failed (1)" and the variables stay in RAM, which is all these
    checks read."""
    child = pexpect.spawn(
        "qemu-system-aarch64",
        [
            "-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-nographic", "-no-reboot",
            "-bios", str(UBOOT_QEMU),
            "-drive", f"if=none,id=disk,format=raw,file={disk_image},snapshot=on",
            "-device", "virtio-blk-device,drive=disk",
        ],
        encoding="utf-8",
        timeout=60,
        codec_errors="replace",
    )  # fmt: skip
    try:
        child.expect_exact("Hit any key to stop autoboot")
        child.send(" ")
        child.expect_exact(UBoot.PROMPT)
        u = UBoot(child)
        u.run("env default -a -f")  # no twelvefactor environment yet
        yield u
    finally:
        child.terminate(force=True)


def test_altbootcmd_records_the_slot_it_falls_back_from(uboot_disk: Path) -> None:
    with uboot(uboot_disk) as u:
        u.source()  # U-Boot's built-in environment: boot.cmd sets up the A/B variables
        # slot B was installed and never confirmed: U-Boot counted past bootlimit
        # and runs altbootcmd, which ends in bootcmd: boot.scr again, on the other slot
        u.run("setenv slot B; setenv upgrade_available 1; setenv bootcount 4")
        u.run("setenv bootcmd 'load virtio 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}'")
        out = u.run("run altbootcmd")
        assert "twelvefactor: slot A did not boot" in out, out  # boot.scr ran on slot A
        env = u.printenv("slot", "upgrade_available", "bootcount", "bootlimit", "rollback")
    assert (env["slot"], env["upgrade_available"], env["bootcount"]) == ("A", "0", "0")
    assert env.get("rollback") == "B", f"altbootcmd did not record the slot it left: {env}"
    # what the agent reports for this job, from the variables U-Boot left
    reason = steps.rollback_reason(env, target="B", running="A")
    assert "slot B did not confirm itself in 3 boots and the bootloader fell back" in reason


def test_first_attempt_of_a_new_slot_forgets_the_last_rollback(uboot_disk: Path) -> None:
    # As grub.cfg: `rollback` names the last fallback only until the next new
    # slot is tried, so that a later report cannot blame an older attempt.
    with uboot(uboot_disk) as u:
        u.source()
        # rollback=A from an earlier attempt; slot B installed, U-Boot counted its first boot
        u.run("setenv rollback A; setenv slot B; setenv upgrade_available 1; setenv bootcount 1")
        u.source("test/head.scr")
        first = u.printenv("slot", "upgrade_available", "bootcount", "rollback")
        # the second attempt keeps what the first left
        u.run("setenv rollback A; setenv bootcount 2")
        u.source("test/head.scr")
        second = u.printenv("rollback")
    assert (first["slot"], first["upgrade_available"], first["bootcount"]) == ("B", "1", "1")
    assert "rollback" not in first, f"the first attempt of slot B kept rollback: {first}"
    assert second.get("rollback") == "A"


def test_boot_script_keeps_firmware_arguments_and_boots_the_slots_device_tree(
    uboot_disk: Path,
) -> None:
    firmware_args = "coherent_pool=1M 8250.nr_uarts=1 console=ttyS0,115200"
    with uboot(uboot_disk) as u:
        u.source()
        # as the Raspberry Pi firmware hands over: its arguments in /chosen of
        # the tree at fdt_addr, and U-Boot's board code naming the board's DTB
        # (and a place for the slot's tree, as the Pi's environment has: rpi.env)
        u.run("setenv board rpi; setenv fdtfile broadcom/bcm2711-rpi-4-b.dtb")
        u.run("setenv fdt_addr_r 0x48000000")
        u.run("fdt addr ${fdt_addr}; fdt resize 4096")
        u.run(f'fdt set /chosen bootargs "{firmware_args}"')
        out = u.source()
        assert "twelvefactor: slot A did not boot" in out, out  # no kernel in this slot
        env = u.printenv("bootargs", "tf_fdt", "fdt_addr_r")
    assert env["bootargs"].startswith(firmware_args + " "), env["bootargs"]
    ours = env["bootargs"].removeprefix(firmware_args)
    assert "root=PARTLABEL=rootfs-a" in ours and "console=ttyS0,115200" in ours
    assert env.get("tf_fdt") == env["fdt_addr_r"], f"not the slot's device tree: {env}"


def test_boot_script_without_a_slot_device_tree_boots_the_firmwares(uboot_disk: Path) -> None:
    with uboot(uboot_disk) as u:
        out = u.source()  # QEMU's U-Boot names no fdtfile: no tree in the slot to load
        assert "twelvefactor: slot A did not boot" in out, out
        env = u.printenv("bootargs", "tf_fdt", "fdt_addr")
    assert env.get("tf_fdt") == env["fdt_addr"], env
    assert env["bootargs"] == (
        "root=PARTLABEL=rootfs-a ro rootwait twelvefactor.slot=A console=ttyAMA0,115200 panic=5"
        " systemd.gpt_auto=0"
    )
