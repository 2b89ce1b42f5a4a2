"""Writes the upstream data files in this folder from a git checkout of openembedded-core.

The layer checks (tests/layer/test_image_contents.py) hold device code against
what oe-core's wrynose builds: which python3 package holds each standard
module (python3-manifest.json) and which busybox applets and features are
configured (the busybox recipe's defconfig and the .cfg fragments it applies).
Fetching oe-core is not possible in CI, so the data is extracted once, here,
from the commit kas/base.yml pins, and committed with that commit named in it.
Run it again when kas/base.yml moves oe-core:

    python3 -m refimage.data.extract_upstream /path/to/openembedded-core.git   (from the top)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from refimage.image_contents import parse_kconfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OE_CORE = "https://github.com/openembedded/openembedded-core"
MANIFEST = "meta/recipes-devtools/python/python3/python3-manifest.json"
BUSYBOX = "meta/recipes-core/busybox"

# The .cfg fragments busybox_1.37.0.bb applies for this distribution: glibc,
# systemd as init and device manager (so not init.cfg, mdev.cfg, musl.cfg), in
# the recipe's SRC_URI order (merge_config.sh: a later fragment wins), plus
# sha_accel.cfg on x86-64 only (it switches no applet on or off).
FRAGMENTS = (
    "login-utilities.cfg",
    "mount-via-label.cfg",
    "mkdosfs.cfg",
    "sha1sum.cfg",
    "sha256sum.cfg",
    "getopts.cfg",
    "longopts.cfg",
    "resize.cfg",
    "syslog.cfg",
    "unicode.cfg",
    "rev.cfg",
    "pgrep.cfg",
)
# busybox.inc's features_to_busybox_settings() for DISTRO_FEATURES with ipv4,
# ipv6 and wifi, without nls and selinux (conf/distro/twelvefactor.conf)
DISTRO_SETTINGS = {
    "CONFIG_FEATURE_IPV6": True,
    "CONFIG_LFS": True,
    "CONFIG_FDISK_SUPPORT_LARGE_DISKS": True,
    "CONFIG_LOCALE_SUPPORT": False,
    "CONFIG_FEATURE_IFUPDOWN_IPV4": True,
    "CONFIG_FEATURE_IFUPDOWN_IPV6": True,
    "CONFIG_RFKILL": True,
    "CONFIG_SELINUX": False,
}


def pinned_commit() -> str:
    base = yaml.safe_load((REPO / "kas/base.yml").read_text())
    commit: str = base["repos"]["openembedded-core"]["commit"]
    return commit


def show(git_dir: Path, commit: str, path: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def python_recipe(git_dir: Path, commit: str) -> str:
    names = subprocess.run(
        [
            "git",
            f"--git-dir={git_dir}",
            "ls-tree",
            "--name-only",
            commit,
            "meta/recipes-devtools/python/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = [n for n in names if re.search(r"/python3_[0-9.]+\.bb$", n)]
    if len(found) != 1:
        raise SystemExit(f"expected one python3_<version>.bb, found {found}")
    return found[0]


def module_name(path: str) -> str | None:
    """Dotted module (or package) name of a manifest path below the stdlib folder."""
    prefix = "${libdir}/python${PYTHON_MAJMIN}/"
    if not path.startswith(prefix):
        return None
    rel = path[len(prefix) :].rstrip("/")
    if rel.startswith("lib-dynload/"):
        # C extensions: _json.*.so, math.*.so
        return rel.split("/")[1].split(".")[0].split("*")[0] or None
    if rel.startswith("config") or "*" in rel.split("/")[0]:
        return None
    rel = rel.removesuffix(".py").removesuffix("/__init__")
    if "*" in rel or not rel:
        return None
    return rel.replace("/", ".")


def python_data(git_dir: Path, commit: str) -> dict[str, object]:
    text = "".join(
        line
        for line in show(git_dir, commit, MANIFEST).splitlines(keepends=True)
        if not line.lstrip().startswith("#")
    )
    manifest: dict[str, dict[str, list[str]]] = json.loads(text)
    modules: dict[str, str] = {}
    for package, entry in sorted(manifest.items()):
        for path in entry.get("files", []):
            name = module_name(path)
            if name and name not in modules:
                modules[name] = package
    recipe = python_recipe(git_dir, commit)
    return {
        "source": {
            "repository": OE_CORE,
            "path": MANIFEST,
            "commit": commit,
            "python": recipe.rsplit("_", 1)[1].removesuffix(".bb"),
        },
        "about": (
            "module -> python3 package (without the python3- prefix) and each package's"
            " rdepends, from oe-core's python3-manifest.json; a standard module in no"
            " package's files lands in python3-misc (the python3 recipe's catch-all)"
        ),
        "modules": dict(sorted(modules.items())),
        "rdepends": {p: sorted(e.get("rdepends", [])) for p, e in sorted(manifest.items())},
    }


def _apply(config: dict[str, str], text: str) -> None:
    config.update(parse_kconfig(text))


def busybox_data(git_dir: Path, commit: str) -> dict[str, object]:
    config: dict[str, str] = {}
    _apply(config, show(git_dir, commit, f"{BUSYBOX}/busybox/defconfig"))
    for name, on in DISTRO_SETTINGS.items():
        config[name] = "y" if on else "n"
    for fragment in FRAGMENTS:
        _apply(config, show(git_dir, commit, f"{BUSYBOX}/busybox/{fragment}"))
    recipe = show(git_dir, commit, f"{BUSYBOX}/busybox_1.37.0.bb")
    for fragment in FRAGMENTS:
        if f"file://{fragment}" not in recipe:
            raise SystemExit(f"busybox_1.37.0.bb no longer applies {fragment}")
    enabled = sorted(k.removeprefix("CONFIG_") for k, v in config.items() if v == "y")
    return {
        "source": {
            "repository": OE_CORE,
            "path": f"{BUSYBOX}/busybox/defconfig",
            "fragments": [f"{BUSYBOX}/busybox/{f}" for f in FRAGMENTS],
            "commit": commit,
            "version": "1.37.0",
        },
        "about": (
            "the busybox configuration oe-core builds for a glibc, systemd distribution:"
            " defconfig, then busybox.inc's DISTRO_FEATURES settings, then the .cfg"
            " fragments (merge_config.sh order); only the symbols set to y"
        ),
        "enabled": enabled,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    git_dir = Path(argv[1])
    commit = pinned_commit()
    for name, data in (
        ("python3-manifest.json", python_data(git_dir, commit)),
        ("busybox-config.json", busybox_data(git_dir, commit)),
    ):
        (HERE / name).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
