"""Static checks of meta-twelvefactor: lint, kas files, fetched and installed
files, the firewall ruleset, the sw-description template, patches."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import libconf
import pytest
import yaml
from helpers import require_root, require_tool

import kas
from refimage import layer_files as lf

REPO = lf.REPO
LAYER = lf.LAYER
MACHINES = ("qemux86-64", "qemuarm64", "raspberrypi4-64")


def test_oelint_reports_nothing() -> None:
    recipes = [str(p.relative_to(LAYER)) for p in lf.recipe_files()]
    assert recipes
    done = subprocess.run(
        [str(REPO / ".venv/bin/oelint-adv"), "--quiet", *recipes],
        cwd=LAYER,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


def test_every_oelint_suppression_has_a_reason() -> None:
    lines = (LAYER / ".oelint.cfg").read_text().splitlines()
    parser = configparser.ConfigParser()
    parser.read(LAYER / ".oelint.cfg")
    rules = [r.strip() for r in parser["oelint"]["suppress"].splitlines() if r.strip()]
    assert rules
    for rule in rules:
        index = next(i for i, line in enumerate(lines) if line.strip() == rule)
        above = lines[index - 1].strip()
        assert above.startswith("#") and len(above) > 20, f"{rule}: no reason above it"


def _kas_schema() -> dict[str, object]:
    path = Path(kas.__file__).parent / "schema-kas.json"
    schema: dict[str, object] = json.loads(path.read_text())
    return schema


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "kas").glob("*.yml")))
def test_kas_file_is_valid_and_includes_resolve(name: str) -> None:
    data = yaml.safe_load((REPO / "kas" / name).read_text())
    jsonschema.validate(data, _kas_schema())
    for include in data.get("header", {}).get("includes", []):
        assert isinstance(include, str) and (REPO / include).is_file(), include


def test_kas_pins_every_layer_by_commit_on_wrynose() -> None:
    base = yaml.safe_load((REPO / "kas/base.yml").read_text())
    assert base["distro"] == "twelvefactor"
    repos = base["repos"]
    for name in ("bitbake", "openembedded-core", "meta-openembedded", "meta-swupdate"):
        assert re.fullmatch(r"[0-9a-f]{40}", repos[name]["commit"]), name
        assert repos[name]["branch"] == ("2.18" if name == "bitbake" else "wrynose")
    assert set(repos["meta-openembedded"]["layers"]) == {
        "meta-oe",
        "meta-python",
        "meta-networking",
    }
    rpi = yaml.safe_load((REPO / "kas/raspberrypi4-64.yml").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", rpi["repos"]["meta-raspberrypi"]["commit"])


def test_dev_login_features_only_in_dev_fragment() -> None:
    features = ("empty-root-password", "allow-empty-password", "serial-autologin-root")
    for path in [*LAYER.rglob("*.conf"), *LAYER.rglob("*.bb"), *(REPO / "kas").glob("*.yml")]:
        if path.name == "dev.yml":
            continue
        text = path.read_text()
        active = [
            f for f in features if f in text and "remove" not in text.split(f)[0].splitlines()[-1]
        ]
        assert not active, f"{path}: {active}"
    assert "empty-root-password" in (REPO / "kas/dev.yml").read_text()


@pytest.mark.parametrize("machine", MACHINES)
def test_every_fetched_file_exists(machine: str) -> None:
    for recipe in lf.recipe_files():
        for name in lf.src_uri_files(recipe, machine):
            assert lf.find_source(recipe, name, machine), (
                f"{recipe.name}: file://{name} ({machine})"
            )


def test_every_file_in_files_folders_is_used() -> None:
    used: set[Path] = set()
    for machine in MACHINES:
        for recipe in lf.recipe_files():
            for name in lf.src_uri_files(recipe, machine):
                found = lf.find_source(recipe, name, machine)
                if found and found.is_file():
                    used.add(found.resolve())
    for machine in MACHINES:
        used |= {f.source.resolve() for f in lf.device_files(machine)}
    for files_dir in LAYER.glob("recipes-*/*/files"):
        for path in files_dir.rglob("*"):
            if path.is_file():
                assert path.resolve() in used, f"{path.relative_to(REPO)} is not used by any recipe"


@pytest.mark.parametrize("machine", MACHINES)
def test_installed_files_resolve(machine: str) -> None:
    files = lf.device_files(machine)
    dests = [f.dest for f in files]
    assert len(dests) == len(set(dests)), "two recipes install the same path"
    for f in files:
        assert f.source.is_file() and f.dest.startswith("/"), f
    for expected in (
        "/etc/nftables/twelvefactor.nft",
        "/usr/sbin/twelvefactor-netconfig",
        "/etc/hwrevision",
        "/usr/bin/twelvefactor-swupdate-selection",
        "/usr/lib/systemd/system/twelvefactor-agent.service",
    ):
        assert expected in dests, expected
    grub = "/usr/share/twelvefactor/boot/grub.cfg"
    assert (grub in dests) == (machine == "qemux86-64")
    assert ("/etc/fw_env.config" in dests) == (machine != "qemux86-64")


def test_agent_recipe_version_matches_the_agent() -> None:
    # pyproject takes the version from the package (one source); the recipe must agree.
    pyproject = tomllib.loads((REPO / "agent/pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"]
    attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "twelvefactor_agent.__version__"
    init = (REPO / "agent/src/twelvefactor_agent/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', init, re.MULTILINE)
    assert match is not None
    recipes = list(LAYER.glob("recipes-*/twelvefactor-agent/twelvefactor-agent_*.bb"))
    assert len(recipes) == 1
    assert recipes[0].stem.split("_", 1)[1] == match.group(1)


def test_ruleset_passes_nft_check_without_protocols_files() -> None:
    require_root()
    nft = require_tool("nft")
    unshare = require_tool("unshare")
    ruleset = LAYER / "recipes-connectivity/twelvefactor-firewall/files/twelvefactor.nft"
    subprocess.run([nft, "-c", "-f", str(ruleset)], check=True)
    # minimal images have no /etc/protocols or /etc/services: hide them
    script = (
        "mount --bind /dev/null /etc/protocols && mount --bind /dev/null /etc/services && "
        f"{nft} -c -f {ruleset}"
    )
    done = subprocess.run(
        [unshare, "-m", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_ruleset_policies() -> None:
    text = (LAYER / "recipes-connectivity/twelvefactor-firewall/files/twelvefactor.nft").read_text()
    assert "table inet twelvefactor" in text and "flush ruleset" not in text
    for chain in ("input", "forward", "output"):
        body = re.search(rf"chain {chain} \{{(.*?)\n\t\}}", text, re.S)
        assert body and "policy drop;" in body.group(1), chain


def _render_sw_description(machine: str) -> str:
    template = (LAYER / "recipes-support/twelvefactor-update/files/sw-description").read_text()
    values = {
        "MACHINE": machine,
        "TWELVEFACTOR_UPDATE_VERSION": "1.0",
        "TWELVEFACTOR_HW_REVISION": "1.0",
        "TWELVEFACTOR_ROOTFS_IMAGE": f"twelvefactor-image-{machine}.rootfs.ext4.zst",
    }
    lines = []
    # the two substitutions meta-swupdate's swupdate-common.bbclass makes, in its order
    for line in template.splitlines():
        while m := re.match(r"^(.*)@@(\w+)@@(.*)$", line):
            assert m.group(2) in values, f"sw-description names @@{m.group(2)}@@"
            line = m.group(1) + values[m.group(2)] + m.group(3)
        m = re.match(r"^(.+)\$(\w+)\((.+)\)(.+)$", line)
        if m:
            assert m.group(2) == "swupdate_get_sha256"
            line = m.group(1) + "0" * 64 + m.group(4)
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("machine", MACHINES)
def test_sw_description_parses_with_both_selections(machine: str) -> None:
    software = libconf.loads(_render_sw_description(machine))["software"]
    board = software[machine]
    assert board["hardware-compatibility"] == ["1.0"]
    for copy, part, slot in (("copy1", "rootfs-a", "A"), ("copy2", "rootfs-b", "B")):
        selection = board["stable"][copy]
        image = selection["images"][0]
        assert image["device"] == f"/dev/disk/by-partlabel/{part}"
        assert re.fullmatch(r"[0-9a-f]{64}", image["sha256"])
        env = {e["name"]: e["value"] for e in selection["bootenv"]}
        assert env == {"slot": slot, "upgrade_available": "1", "bootcount": "0"}


def test_every_patch_has_upstream_status() -> None:
    for patch in LAYER.rglob("*.patch"):
        assert re.search(r"^Upstream-Status: ", patch.read_text(), re.M), patch


def test_layer_conf() -> None:
    text = (LAYER / "conf/layer.conf").read_text()
    assert 'BBFILE_COLLECTIONS += "twelvefactor"' in text
    assert 'LAYERSERIES_COMPAT_twelvefactor = "wrynose"' in text
    deps = re.search(r'LAYERDEPENDS_twelvefactor = "(.*)"', text)
    assert deps and set(deps.group(1).split()) == {
        "core",
        "openembedded-layer",
        "meta-python",
        "networking-layer",
        "swupdate",
    }


def test_distro_leaves_out_graphics_sound_and_ssh() -> None:
    values = lf.layer_variables()
    features = set(values["DISTRO_FEATURES_DEFAULTS"].split())
    unwanted = {
        "x11",
        "wayland",
        "opengl",
        "vulkan",
        "alsa",
        "pulseaudio",
        "bluetooth",
        "nfc",
        "3g",
    }
    assert not features & unwanted
    assert values["INIT_MANAGER"] == "systemd"
    text = (LAYER / "conf/distro/twelvefactor.conf").read_text()
    assert re.search(r'^IMAGE_FEATURES:remove = ".*ssh-server-openssh', text, re.M)
    assert re.search(r'^EXTRA_IMAGE_FEATURES:append = " read-only-rootfs"', text, re.M)
