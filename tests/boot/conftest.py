"""Boot tier: the device image in QEMU (OVMF, TCG), driven over the serial console.

The image is a parameter: `pytest tests/boot --image PATH` runs these tests
against any image with the twelvefactor disk contract (GPT names esp,
rootfs-a, rootfs-b, data; root logs in on the serial console), for example a
Yocto `twelvefactor-image-qemux86-64.wic` built with kas/dev.yml. Without
--image the reference image is built (or taken from its cache in
build/refimage). One provisioned copy of the image is booted once per session
and shared by the tests; a power cycle restarts QEMU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the refimage builder and provisioning live at the top level
    sys.path.insert(0, str(ROOT))

from bootdevice import BOOT_TIMES, Device  # noqa: E402
from boothub import DEVICE_ADDRESS, HUB_ADDRESS, PREFIX, SLIRP_HOST, WG_PORT, Hub  # noqa: E402
from bootvm import VM  # noqa: E402

from refimage import image as refimage_image  # noqa: E402
from refimage import provision  # noqa: E402

DEVICE_ID = "boot-dev-1"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if BOOT_TIMES:
        terminalreporter.section("boot: power-on to online")
        for what, seconds in BOOT_TIMES:
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")


def _option(config: pytest.Config, name: str, default: Any) -> Any:
    # The options are declared in tests/conftest.py, so `pytest --image X` works from the top.
    value = config.getoption(name)
    return default if value is None else value


@pytest.fixture(scope="session")
def boot_image(request: pytest.FixtureRequest) -> Path:
    """The image under test: --image, or the reference image (built once, cached)."""
    given = _option(request.config, "image", None)
    if given is not None:
        path = Path(given).resolve()
        if not path.is_file():
            pytest.fail(f"--image {path}: no such file", pytrace=False)
        return path
    require_root()
    for tool in ("mmdebstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "grub-mkstandalone"):
        require_tool(tool)
    return refimage_image.build(ROOT / "build" / "refimage").disk


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require_root()
    for tool in ("ip", "wireguard-go", "wg", "mosquitto"):
        require_tool(tool)
    h = Hub(tmp_path_factory.mktemp("hub"))
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def device(
    request: pytest.FixtureRequest,
    boot_image: Path,
    hub: Hub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Device]:
    """A provisioned copy of the image, booted and online; shared by the session."""
    for tool in ("qemu-system-x86_64", "debugfs", "fallocate"):
        require_tool(tool)
    work = tmp_path_factory.mktemp("device")
    certs = provision_identity(hub)
    private, public = provision.wg_keypair()
    hub.add_device(public)
    tunnel = provision.Tunnel(
        private_key=private,
        hub_public_key=hub.public_key,
        hub_endpoint_address=SLIRP_HOST,
        hub_endpoint_port=WG_PORT,
        tunnel_address=f"{DEVICE_ADDRESS}/{PREFIX}",
        service_address=HUB_ADDRESS,
        management_mqtt_port=int(hub.info["management_port"]),
        solution_mqtt_port=int(hub.info["solution_port"]),
        management_https_port=int(hub.info["artifact_port"]),
    )
    disk = provision.provision(boot_image, work / "device.img", certs, tunnel)
    accel = _option(request.config, "accel", os.environ.get("TWELVEFACTOR_QEMU_ACCEL", "tcg"))
    vm = VM(disk, work / "vm", netns=hub.netns, accel=accel)
    dev = Device(vm, hub, DEVICE_ID, public)
    try:
        dev.boot("first boot")
        yield dev
    finally:
        vm.power_cut()
        print(f"console log: {vm.console_log}")


def provision_identity(hub: Hub) -> provision.Identity:
    """The device's certificate from the services' PKI (the device CA)."""
    from twelvefactor_services.pki import Pki

    paths = Pki(hub.pki_dir).device(DEVICE_ID)
    return provision.Identity(DEVICE_ID, paths.cert, paths.key, paths.ca)
