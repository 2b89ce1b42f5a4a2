"""The layer's image holds what its device code needs, and the reference image no more.

Checks without BitBake (image_contents.py reads the recipes and the upstream
data in data/): every file a recipe installs is shipped by one of its
packages; every program device code runs is installed (or is an applet, with
its options, of oe-core's busybox); every Python import is in the package's
run-time closure of wrynose's split python3; the kernel builds in or installs
what the firewall and the tunnel need; and the reference image installs
exactly the Debian counterparts of the layer image's packages.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from refimage import image_contents as ic
from refimage import layer_files as lf

MACHINES = ic.MACHINES
# Imports that are not standard modules: the package that provides each
THIRD_PARTY = {"paho": "python3-paho-mqtt", "twelvefactor_agent": "twelvefactor-agent"}


def test_upstream_data_names_its_source_commit() -> None:
    base = lf.REPO / "kas/base.yml"
    pinned = re.search(r"openembedded-core:.*?commit:\s*([0-9a-f]{40})", base.read_text(), re.S)
    assert pinned
    for name in ("python3-manifest.json", "busybox-config.json"):
        source = json.loads((ic.DATA / name).read_text())["source"]
        assert source["repository"].endswith("/openembedded-core")
        assert source["commit"] == pinned.group(1), f"{name}: regenerate with extract_upstream.py"
    config = ic.busybox_config()
    # what the checks below rely on, as oe-core configures busybox
    assert "INSTALL" not in config and "FEATURE_FANCY_HEAD" not in config
    assert {"HEAD", "SH_IS_ASH", "TR", "DD"} <= config


@pytest.mark.parametrize("machine", MACHINES)
def test_every_package_of_the_image_is_described(machine: str) -> None:
    found = ic.closure(machine)
    assert found.unknown == {}, (
        "packages nothing describes (a layer recipe, python3-manifest.json or "
        f"data/yocto-packages.toml): {found.unknown}"
    )


def test_reference_image_packages_map_from_the_layer_image() -> None:
    from refimage import machines, packages

    image_table = ic.debian_table()["image"]
    used: set[str] = set()
    for machine in machines.MACHINES:
        found = ic.closure(machine)
        missing = sorted(p for p in found.packages if ic.table_entry(p) is None)
        assert missing == [], f"{machine}: no entry in data/yocto-debian.toml [image] for {missing}"
        used |= {entry[0] for p in found.packages if (entry := ic.table_entry(p))}
    extras = sorted(set(image_table) - used)
    assert extras == [], (
        f"yocto-debian.toml [image] entries no reference image's layer image installs: {extras}"
    )
    installed = set(packages.PACKAGES)
    derived = set(ic.debian_packages("qemux86-64"))
    assert installed - derived == set(), f"reference image installs more: {installed - derived}"
    assert derived - installed == set(), f"reference image lacks: {derived - installed}"
    arm64 = set(packages.for_machine("qemuarm64"))
    assert arm64 - installed == {"libubootenv-tool", "libubootenv0.1", "linux-image-arm64"}
    assert installed - arm64 == {"linux-image-amd64"}


def test_test_tools_are_used_by_the_boot_tests_only() -> None:
    """Each test tool is outside the image, still run by its test, and added by
    kas/dev.yml, so the boot tests run against a Yocto image built with it."""
    dev = yaml.safe_load((lf.REPO / "kas/dev.yml").read_text())
    extra = " ".join(dev["local_conf_header"].values())
    added = re.findall(r'CORE_IMAGE_EXTRA_INSTALL:append = "([^"]*)"', extra)
    assert added, "kas/dev.yml adds no CORE_IMAGE_EXTRA_INSTALL"
    for package, entry in ic.debian_table()["test-tools"].items():
        assert package in " ".join(added).split(), f"kas/dev.yml does not install {package}"
        assert package not in ic.closure("qemux86-64"), f"{package} is in the image itself"
        text = (lf.REPO / str(entry["tests"])).read_text()
        for command in entry["commands"]:  # type: ignore[attr-defined]
            assert command in text, f"{package}: {entry['tests']} no longer runs {command!r}"


@pytest.mark.parametrize("machine", MACHINES)
def test_every_installed_file_is_shipped(machine: str) -> None:
    """do_package_qa's installed-vs-shipped, and every file in a package the image installs."""
    problems = []
    packages = ic.closure(machine).packages
    for recipe in lf.recipe_files():
        if recipe.suffix not in (".bb", ".bbappend") or recipe == ic.IMAGE_RECIPE:
            continue
        result = ic.packaging(recipe, machine)
        problems += [f"{result.recipe}: installed, not shipped: {p}" for p in result.unshipped]
        problems += [
            f"{result.recipe}: {path} is shipped in {package}, which the image does not install"
            for path, package in result.shipped.items()
            if package not in packages
        ]
    assert problems == []


@pytest.mark.parametrize("machine", MACHINES)
def test_device_code_programs_are_in_the_image(machine: str) -> None:
    uses = list(ic.device_program_uses(machine))
    programs = {u.program for u in uses}
    # the check sees the programs it must (so a parser regression cannot pass silently)
    assert {"/usr/sbin/nft", "systemctl", "twelvefactor-bootenv", "head"} & programs
    assert "/usr/bin/twelvefactor-agent" in programs
    problems = [p for use in uses for p in ic.check_use(use, machine)]
    assert problems == []


@pytest.mark.parametrize("machine", MACHINES)
def test_device_python_imports_are_in_the_rdepends_closure(machine: str) -> None:
    problems = []
    for package, path in ic.device_python_files(machine):
        have = ic.package_closure(package, machine)
        rel = path.relative_to(lf.REPO)
        for module in sorted(ic.imports(path)):
            top = module.split(".")[0]
            if top in THIRD_PARTY:
                if THIRD_PARTY[top] not in have:
                    problems.append(f"{rel}: {module} needs {THIRD_PARTY[top]}")
                continue
            needs = ic.python_needs(module)
            if not needs:
                problems.append(f"{rel}: {module} is neither a standard module nor known")
            for need in sorted(needs - have):
                problems.append(
                    f"{rel}: import {module} needs {need}, not in RDEPENDS of {package}"
                )
    assert problems == []


@pytest.mark.parametrize("machine", MACHINES)
def test_kernel_has_what_the_firewall_and_tunnel_need(machine: str) -> None:
    fragment = ic.kernel_fragment()
    packages = ic.closure(machine).packages
    needs = ic.kernel_needs()
    assert {"NF_TABLES", "NF_CONNTRACK", "NFT_CT", "WIREGUARD"} <= set(needs)
    problems = []
    for option, why in sorted(needs.items()):
        value = fragment.get(option)
        module = ic.kernel_module_package(option)
        if value == "y":
            continue
        if value == "m" and module and module in packages:
            continue
        problems.append(
            f"CONFIG_{option} ({why}) is {value or 'not set'} in twelvefactor.cfg"
            + (f" and the image does not install {module}" if value == "m" else "")
        )
    assert problems == []


def test_python_import_check_knows_the_manifest() -> None:
    # what a wrong table would get wrong first
    assert ic.python_package_of("shlex") == "python3-shell"
    assert ic.python_package_of("json.decoder") == "python3-json"
    assert ic.python_package_of("collections.abc") == "python3-core"
    assert ic.python_package_of("errno") == "python3-core"  # built into the interpreter
    assert ic.python_package_of("paho.mqtt") is None


def test_shell_parser_finds_commands() -> None:
    script = (
        "set -eu\n"
        "job=$(head -c 64 \"$f\" | tr -cd 'a-z0-9-')\n"
        'for w in $(cat /proc/cmdline); do\n    case "$w" in\n'
        "        a=*) x=${w#a=} ;;\n        B) echo b ;;\n    esac\ndone\n"
        '[ -n "$x" ] && exec systemctl reboot\n'
    )
    uses = {(u.program, u.options) for u in ic.shell_commands(script, "t")}
    assert uses == {
        ("set", ("e", "u")),
        ("head", ("c",)),
        ("tr", ("c", "d")),
        ("cat", ()),
        ("echo", ()),
        ("[", ("n",)),
        ("systemctl", ()),
    }
    problems = ic.check_use(ic.Use("head", ("c",), "t"), "qemux86-64")
    assert problems and "FEATURE_FANCY_HEAD" in problems[0]
