"""The layer's side of delta updates (issue 14), checked without BitBake.

The delta sw-description template against the full one (the same versions,
boards, selections and boot environment; only the image entries differ),
rendered with meta-swupdate's own two substitutions; the class function the
template calls; the image's zchunk outputs that the delta recipe packs; and
SWUpdate's settings file, which must parse as libconfig and point the delta
handler at the identity enrolment writes to /data.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import types
from pathlib import Path
from urllib.parse import urlsplit

import libconf
import pytest
from twelvefactor_agent.enrol.datafiles import DEVICE_CA, DEVICE_CERT, DEVICE_KEY
from twelvefactor_services.artifact.zchunk import data_size, make_zck, write_header

from refimage import image_contents as ic
from refimage import layer_files as lf

LAYER = lf.LAYER
UPDATE = LAYER / "recipes-support/twelvefactor-update"
SWUPDATE = LAYER / "recipes-support/swupdate"
DELTA_RECIPE = UPDATE / "twelvefactor-update-delta_1.0.bb"
DELTA_CLASS = LAYER / "classes-recipe/twelvefactor_delta.bbclass"
MACHINES = ("qemux86-64", "qemuarm64", "raspberrypi4-64")
URL = "https://10.99.0.1:8443"
DIGEST = {
    "swupdate_get_sha256": "a" * 64,
    "twelvefactor_deploy_sha256": "b" * 64,
    "twelvefactor_zck_size": "123456",
}


def _render(name: str, machine: str) -> tuple[str, list[tuple[str, str]]]:
    """The template as meta-swupdate's swupdate-common.bbclass makes it: every
    @@VAR@@, then one `$function(parms)` per line (its regular expression); the
    calls made are returned beside the text."""
    base = f"twelvefactor-image-{machine}.rootfs.ext4"
    values = {
        "MACHINE": machine,
        "TWELVEFACTOR_UPDATE_VERSION": "1.0",
        "TWELVEFACTOR_HW_REVISION": "1.0",
        "TWELVEFACTOR_ROOTFS_IMAGE": f"{base}.zst",
        "TWELVEFACTOR_ROOTFS_ZCK": f"{base}.zck",
        "TWELVEFACTOR_ROOTFS_ZCKHEADER": f"{base}.zck.zckheader",
        "TWELVEFACTOR_ARTIFACT_URL": URL,
    }
    calls = []
    lines = []
    for line in (UPDATE / "files" / name).read_text().splitlines():
        while m := re.match(r"^(?P<b>.*)@@(?P<v>\w+)@@(?P<a>.*)$", line):
            assert m["v"] in values, f"{name} names @@{m['v']}@@"
            line = m["b"] + values[m["v"]] + m["a"]
        m = re.match(r"^(?P<b>.+)\$(?P<f>\w+)\((?P<p>.+)\)(?P<a>.+)$", line)
        if m:
            assert m["f"] in DIGEST, f"{name} calls {m['f']}"
            calls.append((m["f"], m["p"]))
            line = m["b"] + DIGEST[m["f"]] + m["a"]
        assert "$" not in line and "@@" not in line, line
        lines.append(line)
    return "\n".join(lines), calls


def _without_images(software: dict[str, object], machine: str) -> dict[str, object]:
    board = dict(software[machine])  # type: ignore[call-overload]
    stable = {
        copy: {k: v for k, v in selection.items() if k != "images"}
        for copy, selection in board.pop("stable").items()
    }
    return {"version": software["version"], "board": board, "stable": stable}


@pytest.mark.parametrize("machine", MACHINES)
def test_delta_template_differs_from_the_full_one_only_in_its_images(machine: str) -> None:
    full_text, full_calls = _render("sw-description", machine)
    delta_text, delta_calls = _render("sw-description-delta", machine)
    full = libconf.loads(full_text)["software"]
    delta = libconf.loads(delta_text)["software"]
    assert set(delta) == set(full) == {"version", "description", machine}
    assert _without_images(delta, machine) == _without_images(full, machine)

    base = f"twelvefactor-image-{machine}.rootfs.ext4"
    assert full_calls == [("swupdate_get_sha256", f"{base}.zst")] * 2
    # per selection: the header's digest (in the .swu), the .zck's (on the server)
    assert sorted(delta_calls) == sorted(
        [("swupdate_get_sha256", f"{base}.zck.zckheader")] * 2
        + [("twelvefactor_deploy_sha256", f"{base}.zck")] * 2
        + [("twelvefactor_zck_size", f"{base}.zck.zckheader")] * 2
    )
    for copy, target, source in (
        ("copy1", "rootfs-a", "rootfs-b"),
        ("copy2", "rootfs-b", "rootfs-a"),
    ):
        (image,) = delta[machine]["stable"][copy]["images"]
        (full_image,) = full[machine]["stable"][copy]["images"]
        assert image["device"] == full_image["device"] == f"/dev/disk/by-partlabel/{target}"
        assert image["type"] == "delta" and image["filename"] == f"{base}.zck.zckheader"
        assert image["sha256"] == DIGEST["swupdate_get_sha256"]
        props = image["properties"]
        assert props["chain"] == "raw"
        assert props["source"] == f"/dev/disk/by-partlabel/{source}"
        assert props["url"] == f"{URL}/artifacts/{DIGEST['twelvefactor_deploy_sha256']}.zck"
        assert props["source-size"] == DIGEST["twelvefactor_zck_size"]


def _python_defs(text: str) -> str:
    """The plain `def` functions of a class file (BitBake runs them as Python)."""
    return "\n".join(re.findall(r"^def .*?(?=^\S|\Z)", text, re.M | re.S))


def test_deploy_sha256_is_the_digest_of_the_deployed_file(tmp_path: Path) -> None:
    # called as meta-swupdate's swupdate_exec_functions calls it: name(d, s, "parms")
    (tmp_path / "x.zck").write_bytes(b"chunks" * 1000)
    fatal: list[str] = []
    namespace: dict[str, object] = {"bb": types.SimpleNamespace(fatal=fatal.append)}
    exec(_python_defs(DELTA_CLASS.read_text()), namespace)
    d = types.SimpleNamespace(getVar=lambda name: {"DEPLOY_DIR_IMAGE": str(tmp_path)}[name])
    function = namespace["twelvefactor_deploy_sha256"]
    assert callable(function)
    assert function(d, "/unused", "x.zck") == hashlib.sha256(b"chunks" * 1000).hexdigest()
    assert not fatal


@pytest.mark.parametrize("size", ["8M", "40M"])
def test_zck_size_is_the_file_systems_as_the_artifact_tool_reads_it(
    tmp_path: Path, size: str
) -> None:
    # real mkfs.ext4 and zck (the layer's zchunk-native makes the same header)
    for tool in ("mkfs.ext4", "zck"):
        assert shutil.which(tool) or Path("/sbin", tool).exists(), f"{tool}: run scripts/setup"
    fs = tmp_path / "rootfs.ext4"
    subprocess.run(["truncate", "-s", size, fs], check=True)
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    subprocess.run([mkfs, "-q", "-F", "-d", LAYER, fs], check=True)
    zck = make_zck(fs, tmp_path / "rootfs.ext4.zck")
    header = write_header(zck, tmp_path / "rootfs.ext4.zck.zckheader")

    def fatal(message: str) -> None:
        raise AssertionError(message)

    namespace: dict[str, object] = {"bb": types.SimpleNamespace(fatal=fatal)}
    exec(_python_defs(DELTA_CLASS.read_text()), namespace)
    function = namespace["twelvefactor_zck_size"]
    assert callable(function)
    got = function(types.SimpleNamespace(), str(tmp_path), header.name)
    assert got == str(fs.stat().st_size) == str(data_size(header.read_bytes()))
    (tmp_path / "not-zck").write_bytes(b"\x00ZCK2" + header.read_bytes()[5:])
    with pytest.raises(AssertionError, match="not a zchunk header"):
        function(types.SimpleNamespace(), str(tmp_path), "not-zck")


def _assigned(text: str, name: str) -> str:
    m = re.search(rf'^{re.escape(name)}\s*\??=\s*"([^"]*)"', text, re.M)
    assert m, name
    return m.group(1)


def test_delta_recipe_packs_the_header_the_image_makes() -> None:
    text = DELTA_RECIPE.read_text()
    assert re.search(r"^require twelvefactor-update\.inc$", text, re.M)
    assert re.search(r"^inherit twelvefactor_delta$", text, re.M)
    assert re.search(
        r"^do_swuimage\[postfuncs\] \+= \"twelvefactor_deploy_zck\"$", DELTA_CLASS.read_text(), re.M
    )
    # the template goes in as sw-description, and not a second time under its own name
    assert lf.src_uri_files(DELTA_RECIPE) == ["sw-description-delta"]
    assert _assigned(text, "SWUPDATE_SRC_URI_EXCLUDE") == "sw-description-delta"
    fstype = _assigned(text, "SWUPDATE_IMAGES_FSTYPES[twelvefactor-image]")
    suffix = "${IMAGE_MACHINE_SUFFIX}"
    header = _assigned(text, "TWELVEFACTOR_ROOTFS_ZCKHEADER")
    zck = _assigned(text, "TWELVEFACTOR_ROOTFS_ZCK")
    assert header == f"twelvefactor-image{suffix}{fstype}" == f"{zck}.zckheader"

    image = ic.Recipe("twelvefactor-image", ic.IMAGE_RECIPE)
    for machine in MACHINES:
        fstypes = image.get("IMAGE_FSTYPES", machine).split()
        assert {"ext4.zck", "ext4.zck.zckheader"} <= set(fstypes)
        assert fstype.removeprefix(".rootfs.") in fstypes
        assert "image_types_zchunk" in image.get("IMAGE_CLASSES", machine, "").split()


def test_artifact_url_is_a_distro_default_without_a_path() -> None:
    distro = (LAYER / "conf/distro/twelvefactor.conf").read_text()
    assert re.search(r'^TWELVEFACTOR_ARTIFACT_URL \?= "', distro, re.M), "a ?= default"
    url = urlsplit(lf.layer_variables()["TWELVEFACTOR_ARTIFACT_URL"])
    assert url.scheme == "https" and url.port and url.path == "" and not url.query


def _kconfig(path: Path) -> dict[str, str]:
    return ic.parse_kconfig(path.read_text())


def test_swupdate_builds_the_delta_handler_with_libcurl() -> None:
    config = _kconfig(SWUPDATE / "files/twelvefactor.cfg")
    assert config["CONFIG_DELTA"] == "y" and config["CONFIG_ZSTD"] == "y"
    append = ic.Recipe("swupdate", SWUPDATE / "swupdate_%.bbappend")
    assert "curl" in append.get("DEPENDS", "qemux86-64", "").split()
    # cml1.bbclass merges every *.cfg in SRC_URI into the .config: only fragments may be so named
    for machine in MACHINES:
        for name in lf.src_uri_files(SWUPDATE / "swupdate_%.bbappend", machine):
            if name.endswith(".cfg"):
                found = lf.find_source(SWUPDATE / "swupdate_%.bbappend", name, machine)
                assert found is not None
                for line in found.read_text().splitlines():
                    assert not line.strip() or line.startswith(("#", "CONFIG_")), (name, line)


def test_swupdate_settings_name_the_device_identity() -> None:
    installed = {f.dest: f.source for f in lf.device_files() if f.recipe == "swupdate_%.bbappend"}
    default = _kconfig(SWUPDATE / "files/twelvefactor.cfg")["CONFIG_DEFAULT_CONFIG_FILE"]
    path = default.strip('"')
    assert path == "/etc/swupdate.cfg" and path in installed, "SWUpdate would not read it"
    settings = libconf.loads(installed[path].read_text())
    assert "globals" in settings, "SWUpdate refuses a settings file without globals"
    delta = settings["delta"]
    assert (delta["cafile"], delta["sslcert"], delta["sslkey"]) == (
        DEVICE_CA,
        DEVICE_CERT,
        DEVICE_KEY,
    )
    assert delta.get("nocheckcert", False) is False
    assert delta.get("retry") == 0  # a resumed multi-range request asks for the rest of the .zck
