"""What the layer's image holds, derived from its recipes and the upstream data in data/.

The reference image is Debian; the image the layer builds is Yocto: busybox
instead of coreutils, python3 split into packages, only the kernel modules it
installs. A check that passes on the reference image proves nothing about the
Yocto image unless the two are held to one description. This module is that
description, read from the layer itself (the image recipe's IMAGE_INSTALL, the
recipes' RDEPENDS and FILES, the kernel fragment) and from data taken once from
the upstream layers kas/base.yml pins (refimage/data/: *.json, yocto-packages.toml).
The layer tests (tests/layer) check device code against it, and the builder
installs the Debian packages and keeps the kernel modules it names.

Like layer_files.py this is not BitBake: it reads the plain assignments the
layer's recipes use, and fails on what it cannot read.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Literal, NotRequired, TypedDict, cast

from refimage import layer_files as lf

DATA = Path(__file__).resolve().parent / "data"
IMAGE_RECIPE = lf.LAYER / "recipes-core/images/twelvefactor-image.bb"
KERNEL_FRAGMENT = lf.LAYER / "recipes-kernel/linux/files/twelvefactor.cfg"
RULESET = lf.LAYER / "recipes-connectivity/twelvefactor-firewall/files/twelvefactor.nft"
AGENT_SOURCE = lf.REPO / "agent/src/twelvefactor_agent"
AGENT_PYPROJECT = lf.REPO / "agent/pyproject.toml"
MACHINES = tuple(lf.MACHINE_OVERRIDES)

Arch = Literal["x86_64", "aarch64"]
ARCH: dict[str, Arch] = {
    "qemux86-64": "x86_64",
    "qemuarm64": "aarch64",
    "raspberrypi4-64": "aarch64",
}


class ReadError(ValueError):
    """A recipe or device file this module cannot read."""


# -- data ------------------------------------------------------------------------


# The shapes of the files in data/, as their loaders return them (not validated:
# the layer tests read every entry).


class PythonManifest(TypedDict):
    """python3-manifest.json, reduced by data/extract_upstream.py."""

    source: dict[str, str]
    about: str
    modules: dict[str, str]  # module -> python3 package (without "python3-")
    rdepends: dict[str, list[str]]  # package -> packages (without "python3-")


class MachineEntry(TypedDict):
    essential: list[str]


class UpstreamPackage(TypedDict):
    recipe: str
    rdepends: NotRequired[list[str]]
    rrecommends: NotRequired[list[str]]
    rdepends_x86_64: NotRequired[list[str]]
    rdepends_aarch64: NotRequired[list[str]]
    programs: NotRequired[list[str]]


class UpstreamRecipe(TypedDict):
    source: str
    packages_before: list[str]
    systemd_packages: list[str]
    files: dict[str, list[str]]  # package -> FILES additions


class YoctoPackages(TypedDict):
    """yocto-packages.toml."""

    machine: dict[str, MachineEntry]
    package: dict[str, UpstreamPackage]
    recipe: dict[str, UpstreamRecipe]


class DebianEntry(TypedDict):
    debian: list[str]
    why: str
    commands: NotRequired[list[str]]
    tests: NotRequired[str]


@cache
def python_manifest() -> PythonManifest:
    data: PythonManifest = json.loads((DATA / "python3-manifest.json").read_text())
    return data


@cache
def busybox_config() -> frozenset[str]:
    data = json.loads((DATA / "busybox-config.json").read_text())
    return frozenset(data["enabled"])


@cache
def upstream() -> YoctoPackages:
    return cast(YoctoPackages, tomllib.loads((DATA / "yocto-packages.toml").read_text()))


@cache
def debian_table() -> dict[str, dict[str, DebianEntry]]:
    """yocto-debian.toml: section ("image", "test-tools") -> package -> entry."""
    data: dict[str, dict[str, DebianEntry]] = tomllib.loads(
        (DATA / "yocto-debian.toml").read_text()
    )
    return data


# -- recipe variables --------------------------------------------------------------

_ASSIGN = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_-]*)((?::[A-Za-z0-9_${}.-]+)*)\s*"
    r"(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)\s*\"(.*)\"\s*$"
)
_OPERATIONS = {"append", "prepend", "remove"}


def _active(machine: str, pn: str) -> set[str]:
    return {"twelvefactor", "class-target", pn, *lf.MACHINE_OVERRIDES[machine]}


def variable(
    texts: Iterable[str], name: str, machine: str, pn: str, initial: str | None = None
) -> str:
    """BitBake's value of `name` (e.g. "RDEPENDS:${PN}") from the given files in order,
    for one machine: plain assignments, override-conditional ones (the machine's
    overrides and "twelvefactor"), and :append/:prepend/:remove. Not expanded."""
    want = name.replace("${PN}", pn).split(":")
    base: str | None = initial
    weak: str | None = None
    conditional: str | None = None
    appends: list[str] = []
    prepends: list[str] = []
    removes: list[str] = []
    active = _active(machine, pn)
    for text in texts:
        for line in lf._logical_lines(text):
            m = _ASSIGN.match(line.strip())
            if not m:
                continue
            parts = [m.group(1)] + [p for p in m.group(2).split(":") if p]
            parts = [p.replace("${PN}", pn) for p in parts]
            if parts[: len(want)] != want:
                continue
            rest = parts[len(want) :]
            ops = [p for p in rest if p in _OPERATIONS]
            conditions = [p for p in rest if p not in _OPERATIONS]
            if not all(c in active for c in conditions):
                continue
            op, value = m.group(3), m.group(4)
            if ops:
                {"append": appends, "prepend": prepends, "remove": removes}[ops[0]].append(value)
            elif conditions:
                conditional = value
            elif op == "??=":
                weak = value if weak is None else weak
            elif op == "?=":
                base = value if base is None else base
            elif op in ("=", ":="):
                base = value
            elif op in ("+=", "=+"):
                current = base or ""
                base = f"{current} {value}" if op == "+=" else f"{value} {current}"
            else:  # .= and =.
                current = base or ""
                base = current + value if op == ".=" else value + current
    value = conditional if conditional is not None else (base if base is not None else weak)
    value = "".join(prepends) + (value or "") + "".join(appends)
    if removes:
        drop = {w for r in removes for w in r.split()}
        value = " ".join(w for w in value.split() if w not in drop)
    return value


@dataclass(frozen=True)
class Recipe:
    pn: str
    path: Path
    appends: tuple[Path, ...] = ()

    def texts(self) -> list[str]:
        return [self.path.read_text(), *(p.read_text() for p in self.appends)]

    def get(self, name: str, machine: str, initial: str | None = None) -> str:
        values = lf.layer_variables() | {"PN": self.pn, "BPN": self.pn} | lf.PATH_VARS | _MORE_PATHS
        raw = variable(self.texts(), name, machine, self.pn, initial)
        for _ in range(5):
            for var in re.findall(r"\$\{([A-Za-z0-9_-]+)\}", raw):
                if var not in values:
                    inner = variable(self.texts(), var, machine, self.pn)
                    if inner:
                        values[var] = inner
            raw = lf.expand(raw, values)
        return raw

    def compatible(self, machine: str) -> bool:
        host = variable(self.texts(), "COMPATIBLE_HOST", machine, self.pn)
        return not host or re.match(host, f"{ARCH[machine]}-twelvefactor-linux") is not None


_MORE_PATHS = {
    "base_bindir": "/usr/bin",
    "base_sbindir": "/usr/sbin",
    "base_libdir": "/usr/lib",
    "exec_prefix": "/usr",
    "prefix": "/usr",
    "includedir": "/usr/include",
    "docdir": "/usr/share/doc",
    "mandir": "/usr/share/man",
    "infodir": "/usr/share/info",
    "sharedstatedir": "/com",
    "localstatedir": "/var",
    "base_prefix": "",
    "SOLIBS": ".so.*",
    "SOLIBSDEV": ".so",
    "systemd_user_unitdir": "/usr/lib/systemd/user",
}


@cache
def layer_recipes() -> dict[str, Recipe]:
    """PN -> the layer's own recipe (.bb) with none of the upstream ones it appends to."""
    out = {}
    for path in lf.recipe_files():
        if path.suffix == ".bb":
            pn = path.name.split("_")[0].removesuffix(".bb")
            out[pn] = Recipe(pn, path)
    return out


def appends_of(pn: str) -> list[Path]:
    return [
        p
        for p in lf.recipe_files()
        if p.suffix == ".bbappend" and fnmatch.fnmatch(pn, p.name.split("_")[0])
    ]


# -- the image and its package closure ---------------------------------------------


def image_install(machine: str) -> list[str]:
    """IMAGE_INSTALL of twelvefactor-image for `machine`, without CORE_IMAGE_EXTRA_INSTALL
    (local.conf's, empty in a product build)."""
    recipe = Recipe("twelvefactor-image", IMAGE_RECIPE)
    text = variable(recipe.texts(), "IMAGE_INSTALL", machine, recipe.pn)
    text = text.replace("${CORE_IMAGE_EXTRA_INSTALL}", "")
    values = {
        v: variable(recipe.texts(), v, machine, recipe.pn)
        for v in re.findall(r"\$\{([A-Za-z0-9_-]+)\}", text)
    }
    words = lf.expand(text, values).split()
    unresolved = [w for w in words if "$" in w]
    if unresolved:
        raise ReadError(f"{IMAGE_RECIPE.name}: cannot resolve {unresolved}")
    return words


def _rdeps(recipe: Recipe, machine: str) -> list[str]:
    words = []
    for var in ("RDEPENDS:${PN}", "RRECOMMENDS:${PN}"):
        words += recipe.get(var, machine).split()
    return [w for w in words if not w.startswith("(") and not w.endswith(")")]


@dataclass
class Closure:
    """Every package the image installs for one machine, with where each came from."""

    machine: str
    packages: dict[str, str] = field(default_factory=dict)  # package -> what pulled it in
    unknown: dict[str, str] = field(default_factory=dict)

    def __contains__(self, package: str) -> bool:
        return package in self.packages


def dependencies(package: str, machine: str) -> list[str] | None:
    """Run-time dependencies of one package, or None when nothing describes it."""
    recipes = layer_recipes()
    if package in recipes and package != "twelvefactor-image":
        return _rdeps(recipes[package], machine)
    manifest = python_manifest()
    rdepends = manifest["rdepends"]
    if package.startswith("python3-") and package[len("python3-") :] in rdepends:
        return [f"python3-{r}" for r in rdepends[package[len("python3-") :]]]
    if package.startswith("kernel-module-"):
        return []  # kernel-module-split.bbclass: its module dependencies are modules too
    entry = upstream()["package"].get(package)
    if entry is None:
        return None
    arch_key: Literal["rdepends_x86_64", "rdepends_aarch64"] = (
        "rdepends_x86_64" if ARCH[machine] == "x86_64" else "rdepends_aarch64"
    )
    deps = [*entry.get("rdepends", []), *entry.get("rrecommends", []), *entry.get(arch_key, [])]
    if "@machine-essential" in deps:
        deps.remove("@machine-essential")
        deps += upstream()["machine"][machine]["essential"]
    return deps


def closure(machine: str) -> Closure:
    result = Closure(machine)
    todo = [(p, "IMAGE_INSTALL") for p in image_install(machine)]
    while todo:
        package, parent = todo.pop()
        if package in result.packages or package in result.unknown:
            continue
        deps = dependencies(package, machine)
        if deps is None:
            result.unknown[package] = parent
            continue
        result.packages[package] = parent
        todo += [(d, package) for d in deps]
    return result


# -- Debian packages for the reference image ---------------------------------------


def table_entry(package: str, section: str = "image") -> tuple[str, DebianEntry] | None:
    table = debian_table()[section]
    if package in table:
        return package, table[package]
    for key, entry in table.items():
        if "*" in key and fnmatch.fnmatch(package, key):
            return key, entry
    return None


# The Debian architecture of each machine; "@ARCH@" in the table's package names.
DEBIAN_ARCH = {"qemux86-64": "amd64", "qemuarm64": "arm64", "raspberrypi4-64": "arm64"}


def debian_packages(machine: str = "qemux86-64") -> list[str]:
    """The Debian packages the reference image installs: the table's image of the
    closure, then the test tools. Raises ReadError for a package with no entry."""
    arch = DEBIAN_ARCH[machine]
    found = closure(machine)
    if found.unknown:
        raise ReadError(f"packages nothing describes: {found.unknown}")
    out: list[str] = []
    for package in sorted(found.packages):
        found_entry = table_entry(package)
        if found_entry is None:
            raise ReadError(f"{package} has no entry in data/yocto-debian.toml [image]")
        out += found_entry[1]["debian"]
    for entry in debian_table()["test-tools"].values():
        out += entry["debian"]
    return sorted({name.replace("@ARCH@", arch) for name in out})


# -- kernel ---------------------------------------------------------------------------


def parse_kconfig(text: str) -> dict[str, str]:
    """A Kconfig fragment or .config: `CONFIG_X=value` lines, and `# CONFIG_X is
    not set` as "n"; names keep their CONFIG_ prefix. Used for the kernel
    fragment here and for busybox's configuration (data/extract_upstream.py)."""
    config = {}
    for line in text.splitlines():
        on = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line)
        off = re.match(r"^# (CONFIG_[A-Z0-9_]+) is not set$", line)
        if on:
            config[on.group(1)] = on.group(2).strip()
        elif off:
            config[off.group(1)] = "n"
    return config


def kernel_fragment() -> dict[str, str]:
    """The layer's kernel fragment, names without CONFIG_."""
    config = parse_kconfig(KERNEL_FRAGMENT.read_text())
    return {name.removeprefix("CONFIG_"): value for name, value in config.items()}


# Kernel options whose code is a loadable module of its own when =m: option ->
# module name (kernel-module-<name with - for _> is its Yocto package). Options
# not listed are bools (part of another module or of the kernel itself).
KERNEL_MODULES = {
    "WIREGUARD": "wireguard",
    "NF_TABLES": "nf_tables",
    "NF_CONNTRACK": "nf_conntrack",
    "NFT_CT": "nft_ct",
    "NFT_LOG": "nft_log",
    "NFT_LIMIT": "nft_limit",
    "NFT_REJECT": "nft_reject",
    "NFT_REJECT_INET": "nft_reject_inet",
    "NFT_NAT": "nft_nat",
    "NFT_MASQ": "nft_masq",
    "NFT_REDIR": "nft_redir",
    "NFT_FIB_INET": "nft_fib_inet",
    "NFT_QUOTA": "nft_quota",
    "NFT_QUEUE": "nft_queue",
    "NFT_NUMGEN": "nft_numgen",
    "NFT_HASH": "nft_hash",
    "NFT_SOCKET": "nft_socket",
    "NFT_TPROXY": "nft_tproxy",
    "NFT_SYNPROXY": "nft_synproxy",
    "NFT_CONNLIMIT": "nft_connlimit",
    "NFT_OSF": "nft_osf",
    "NFT_XFRM": "nft_xfrm",
    "NFT_TUNNEL": "nft_tunnel",
    "NF_NAT": "nf_nat",
    "NF_FLOW_TABLE": "nf_flow_table",
    "VFAT_FS": "vfat",
    "NLS_CODEPAGE_437": "nls_cp437",
    "NLS_ISO8859_1": "nls_iso8859_1",
}

# nftables keywords that need more than nf_tables' core (which holds payload,
# meta, cmp, lookup, bitwise, immediate, counter, dynset and the set backends
# since Linux 5.x), with the options they need.
NFT_NEEDS = {
    "ct": ("NF_CONNTRACK", "NFT_CT"),
    "notrack": ("NF_CONNTRACK", "NFT_CT"),
    "log": ("NFT_LOG",),
    "limit": ("NFT_LIMIT",),
    "reject": ("NFT_REJECT", "NFT_REJECT_INET"),
    "snat": ("NF_NAT", "NFT_NAT"),
    "dnat": ("NF_NAT", "NFT_NAT"),
    "masquerade": ("NF_NAT", "NFT_MASQ"),
    "redirect": ("NF_NAT", "NFT_REDIR"),
    "fib": ("NFT_FIB_INET",),
    "quota": ("NFT_QUOTA",),
    "queue": ("NFT_QUEUE",),
    "numgen": ("NFT_NUMGEN",),
    "jhash": ("NFT_HASH",),
    "symhash": ("NFT_HASH",),
    "socket": ("NFT_SOCKET",),
    "tproxy": ("NFT_TPROXY",),
    "synproxy": ("NFT_SYNPROXY",),
    "osf": ("NFT_OSF",),
    "ipsec": ("NFT_XFRM",),
    "flowtable": ("NF_FLOW_TABLE",),
    "flow": ("NF_FLOW_TABLE",),
    "tunnel": ("NFT_TUNNEL",),
}
NFT_FAMILY = {
    "inet": ("NF_TABLES_INET",),
    "ip": ("NF_TABLES_IPV4",),
    "ip6": ("NF_TABLES_IPV6",),
}
# Every other word a ruleset may use: statements, expressions and values the
# core handles. A word in neither table fails the check, so a new keyword gets
# its options looked up before it ships.
NFT_CORE_WORDS = frozenset(
    (
        "table",
        "chain",
        "set",
        "map",
        "delete",
        "add",
        "flush",
        "define",
        "type",
        "hook",
        "priority",
        "policy",
        "filter",
        "inet",
        "input",
        "output",
        "forward",
        "prerouting",
        "postrouting",
        "ingress",
        "egress",
        "accept",
        "drop",
        "return",
        "jump",
        "goto",
        "continue",
        "counter",
        "comment",
        "elements",
        "flags",
        "interval",
        "timeout",
        # sets updated from the packet path: nft_dynset and the hash set backend
        # are built into nf_tables itself (net/netfilter/Makefile: nf_tables-objs)
        "dynamic",
        "update",
        "size",
        "ipv4_addr",
        "ipv6_addr",
        "inet_service",
        "ether_addr",
        "ifname",
        "mark",
        "ip",
        "ip6",
        "ipv4",
        "ipv6",
        "udp",
        "tcp",
        "icmp",
        "icmpv6",
        "ether",
        "th",
        "meta",
        "saddr",
        "daddr",
        "sport",
        "dport",
        "protocol",
        "nexthdr",
        "hoplimit",
        "ttl",
        "l4proto",
        "nfproto",
        "iifname",
        "oifname",
        "iif",
        "oif",
        "length",
        "pkttype",
        "state",
        "established",
        "related",
        "invalid",
        "new",
        "untracked",
        "nd-router-advert",
        "nd-router-solicit",
        "nd-neighbor-solicit",
        "nd-neighbor-advert",
        "mld2-listener-report",
        "mld-listener-query",
        "mld-listener-report",
        "mld-listener-done",
        "echo-request",
        "echo-reply",
        "destination-unreachable",
        "packet-too-big",
        "time-exceeded",
        "parameter-problem",
    )
)


def kernel_options_for_ruleset(text: str) -> dict[str, str]:
    """Option -> the nft word that needs it; ReadError on a word nobody listed."""
    needs: dict[str, str] = {"NETFILTER": "table", "NF_TABLES": "table"}
    body = re.sub(r'"[^"]*"', " ", re.sub(r"#.*", "", text))
    for family in re.findall(r"^\s*table\s+(\w+)\s+\w+", body, re.M):
        for option in NFT_FAMILY.get(family, ()):
            needs.setdefault(option, f"table {family}")
        if family not in NFT_FAMILY:
            raise ReadError(f"unknown nftables family {family!r}")
    # names the ruleset gives (tables, chains, sets, maps, defines) are not keywords
    named = set(re.findall(r"\b(?:define|set|map|chain|flowtable)\s+([A-Za-z_][\w-]*)", body))
    named |= set(re.findall(r"\btable\s+\w+\s+([A-Za-z_][\w-]*)", body))
    for word in re.findall(r"(?<![@$\w.:/-])([a-z][a-z0-9_-]*[a-z0-9]|[a-z])(?![\w.:/-])", body):
        if word in named:
            continue
        if word in NFT_NEEDS:
            for option in NFT_NEEDS[word]:
                needs.setdefault(option, word)
        elif word not in NFT_CORE_WORDS:
            raise ReadError(
                f"nftables word {word!r} is in neither NFT_NEEDS nor NFT_CORE_WORDS "
                "(image_contents.py): look up the kernel options it needs"
            )
    return needs


def kernel_needs() -> dict[str, str]:
    """Kernel option -> why the device needs it (the ruleset, the tunnel)."""
    needs = {
        o: f"{RULESET.name}: {w}"
        for o, w in kernel_options_for_ruleset(RULESET.read_text()).items()
    }
    netdev = lf.LAYER / "recipes-connectivity/twelvefactor-netconfig/files"
    for path in netdev.glob("*.netdev*"):
        if re.search(r"^Kind=wireguard", path.read_text(), re.M):
            needs["WIREGUARD"] = f"{path.name}: Kind=wireguard"
    return needs


def kernel_module_package(option: str) -> str | None:
    module = KERNEL_MODULES.get(option)
    return None if module is None else "kernel-module-" + module.replace("_", "-")


# -- programs ----------------------------------------------------------------------

SHELL_BUILTINS = {
    # ash builtins that are always there
    **dict.fromkeys(
        (
            ":",
            ".",
            "break",
            "cd",
            "continue",
            "eval",
            "exec",
            "exit",
            "export",
            "false",
            "read",
            "readonly",
            "return",
            "set",
            "shift",
            "times",
            "trap",
            "true",
            "type",
            "ulimit",
            "umask",
            "unset",
            "wait",
            "local",
            "hash",
            "kill",
            "jobs",
        ),
        None,
    ),
    # optional ones and the busybox option that builds them in
    "echo": "ASH_ECHO",
    "printf": "ASH_PRINTF",
    "test": "ASH_TEST",
    "[": "ASH_TEST",
    "[[": "ASH_BASH_COMPAT",
    "getopts": "ASH_GETOPTS",
    "command": "ASH_CMDCMD",
}
# busybox applets whose config name is not the upper-cased program name
APPLET_OPTION = {"sh": "SH_IS_ASH", "ash": "ASH", "[": "TEST1", "[[": "TEST2"}

# Options of busybox applets the device scripts use -> the busybox option each
# needs (None: always there). An option used that is not listed fails the check:
# look it up in busybox's source for the version of busybox-config.json.
APPLET_OPTIONS: dict[str, dict[str, str | None]] = {
    "head": {"n": None, "c": "FEATURE_FANCY_HEAD", "q": "FEATURE_FANCY_HEAD"},
    "tr": {"c": None, "d": None, "s": None},
    "rm": {"f": None, "r": None},
    "dd": {"if=": None, "of=": None, "bs=": None, "count=": None},
    "mount": {"o": None, "bind": "FEATURE_MOUNT_FLAGS"},
    "mv": {"f": None},
    "chmod": {},
    "cat": {},
    "sync": {},
    "cut": {"c": None, "d": None, "f": None},
    "env": {},
    "sh": {"c": None, "e": None, "u": None},
}

BIN_DIRS = ("/usr/sbin", "/usr/bin")


def _normal(path: str) -> str:
    for old, new in (("/bin/", "/usr/bin/"), ("/sbin/", "/usr/sbin/")):
        if path.startswith(old):
            return new + path[len(old) :]
    return path


@dataclass(frozen=True)
class Use:
    """One program named by device code."""

    program: str  # absolute path or bare name
    options: tuple[str, ...]
    where: str


@dataclass(frozen=True)
class Provider:
    package: str
    path: str


def providers(machine: str) -> dict[str, list[Provider]]:
    """Program path on the device -> the packages of the image that install it."""
    packages = closure(machine).packages
    out: dict[str, list[Provider]] = {}

    def add(package: str, path: str) -> None:
        out.setdefault(_normal(path), []).append(Provider(package, _normal(path)))

    for f in lf.device_files(machine):
        pn = f.recipe.split("_")[0].removesuffix(".bb").removesuffix(".bbappend")
        if f.mode & 0o111 and pn.replace("%", "") in packages:
            add(pn, f.dest)
    if "twelvefactor-agent" in packages:
        meta = tomllib.loads(AGENT_PYPROJECT.read_text())
        for name in meta["project"]["scripts"]:
            add("twelvefactor-agent", f"/usr/bin/{name}")
    if "python3-core" in packages:
        # the interpreter is in python3-core (python3-manifest.json: ${bindir}/python3*)
        add("python3-core", "/usr/bin/python3")
    for name, entry in upstream()["package"].items():
        if name in packages:
            for path in entry.get("programs", []):
                add(name, path)
    return out


def applet_present(name: str) -> bool:
    """The configured busybox has this applet (its option, e.g. CONFIG_HEAD, is y)."""
    option = APPLET_OPTION.get(name, name.upper().replace("-", "_").replace(".", "_"))
    return not option.startswith("FEATURE_") and option in busybox_config()


# Programs device code runs only where a file says the machine needs them:
# device/bootenv.py's U-Boot backend runs fw_printenv/fw_setenv only where
# /etc/fw_env.config is installed (twelvefactor-boot-uboot's machines).
CONDITIONAL_PROGRAMS = {"fw_printenv": "/etc/fw_env.config", "fw_setenv": "/etc/fw_env.config"}


def check_use(use: Use, machine: str) -> list[str]:
    """Problems with one program use on `machine` (empty: fine)."""
    where = f"{use.where}: {use.program}"
    condition = CONDITIONAL_PROGRAMS.get(PurePosixPath(use.program).name)
    if condition and condition not in {f.dest for f in lf.device_files(machine)}:
        return []
    if use.program in SHELL_BUILTINS and not use.program.startswith("/"):
        option = SHELL_BUILTINS[use.program]
        if option and option not in busybox_config():
            return [f"{where}: ash builtin needs CONFIG_{option}, not set in oe-core's busybox"]
        return []
    found = providers(machine)
    if use.program.startswith("/"):
        candidates = found.get(_normal(use.program), [])
    else:
        candidates = [p for d in BIN_DIRS for p in found.get(f"{d}/{use.program}", [])]
    if candidates:
        return []
    applet = PurePosixPath(use.program).name
    in_path = (
        not use.program.startswith("/")
        or str(PurePosixPath(_normal(use.program)).parent) in BIN_DIRS
    )
    if "busybox" not in closure(machine) or not in_path or not applet_present(applet):
        return [
            f"{where}: neither a package of the image on {machine} nor an applet of "
            "oe-core's busybox (data/busybox-config.json) provides it"
        ]
    known = APPLET_OPTIONS.get(applet)
    if known is None:
        if use.options:
            return [
                f"{where}: options {list(use.options)} of busybox's {applet}: add the applet to "
                "APPLET_OPTIONS (image_contents.py) after checking busybox's source"
            ]
        return []
    problems = []
    for option in use.options:
        if option not in known:
            problems.append(
                f"{where}: option {option!r} of busybox's {applet} is not in APPLET_OPTIONS: "
                "check busybox's source"
            )
        elif known[option] and known[option] not in busybox_config():
            problems.append(
                f"{where}: {applet} {option!r} needs CONFIG_{known[option]}, "
                "not set in oe-core's busybox"
            )
    return problems


# -- uses of programs in device code -----------------------------------------------


def _options(args: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--"):
            out.append(arg[2:].split("=")[0])
        elif arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            out += list(arg[1:])
        elif re.match(r"^[a-z]+=", arg):
            out.append(arg.split("=")[0] + "=")
        elif arg in ("bind",):
            out.append(arg)
    return tuple(out)


_SH_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}"}
_SH_ENDS = {"fi", "done", "esac"}
_SEPARATORS = {";", "&", "&&", "|", "||", ";;", "(", ")", "$", "`"}


def shell_commands(text: str, where: str) -> list[Use]:
    """Every command a POSIX shell script runs: the first word of each simple
    command (also inside $(...)), keywords, assignments, case patterns and
    redirections skipped, with the options passed to it."""
    uses: list[Use] = []
    text = text.replace("\\\n", " ")
    functions = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*\(\)", text, re.M))
    case_depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>`")
        lex.whitespace_split = False
        lex.wordchars += "$-./*?=:@%+,[]{}!#~^"
        try:
            tokens = list(lex)
        except ValueError as exc:
            raise ReadError(f"{where}:{number}: {exc}") from exc
        words: list[str] = []
        start = True
        expect_pattern = case_depth > 0
        i = 0
        while i < len(tokens) + 1:
            token = tokens[i] if i < len(tokens) else ";"
            i += 1
            if token.startswith("#") and start:
                break
            if token in _SEPARATORS or token in ("<", ">", ">>", "<<", ">&", "<&"):
                if token in (">", ">>", "<", ">&", "<&"):
                    i += 1  # the redirection's target
                    continue
                if token == ")" and expect_pattern and not words:
                    expect_pattern = False
                    continue
                if words and words[0] not in functions:
                    uses.append(Use(words[0], _options(words[1:]), f"{where}:{number}"))
                words = []
                start = True
                if token == ";;":
                    expect_pattern = True
                continue
            if expect_pattern and start and token == "esac":
                case_depth -= 1
                expect_pattern = case_depth > 0
                continue
            if expect_pattern and start:
                # a case pattern runs up to its ")"
                while i < len(tokens) and tokens[i - 1] != ")":
                    i += 1
                expect_pattern = False
                continue
            if start:
                if token == "case":
                    case_depth += 1
                    while i < len(tokens) and tokens[i] != "in":
                        i += 1
                    i += 1
                    expect_pattern = True
                    continue
                if token == "esac":
                    case_depth -= 1
                    continue
                if token == "for":
                    while i < len(tokens) and tokens[i] not in (";", "do"):
                        if tokens[i] == "(":
                            break
                        i += 1
                    continue
                if token in _SH_KEYWORDS or token in _SH_ENDS:
                    continue
                if token == "exec":
                    continue
                if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):
                    continue
                if token.startswith("$"):
                    raise ReadError(f"{where}:{number}: command from a variable: {token}")
                start = False
            words.append(token)
    return uses


def unit_commands(text: str, where: str) -> list[Use]:
    uses = []
    for number, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"^(Exec[A-Za-z]+)\s*=\s*(.+)$", line.strip())
        if not m:
            continue
        words = shlex.split(m.group(2))
        program = words[0].lstrip("@-:+!|")
        uses.append(Use(program, _options(words[1:]), f"{where}:{number} {m.group(1)}"))
    return uses


_SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}


def _constant(node: ast.expr, names: dict[str, ast.expr]) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in names:
        return _constant(names[node.id], names)
    return None


def python_commands(path: Path, where: str) -> list[Use]:
    """Programs a Python module runs through subprocess: the first element of the
    argument list, resolved through module constants, local assignments and the
    module's own calls of the function (a parameter), and parameter defaults.
    ReadError when it cannot tell: keep the program a literal or a constant."""
    tree = ast.parse(path.read_text())
    module_names: dict[str, ast.expr] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                module_names[target.id] = statement.value
    uses: list[Use] = []

    def first_elements(expr: ast.expr, func: ast.FunctionDef | None, depth: int) -> list[str]:
        if depth > 4:
            raise ReadError(f"{where}: subprocess argument too indirect")
        if isinstance(expr, ast.List | ast.Tuple) and expr.elts:
            head = expr.elts[0]
            if isinstance(head, ast.Starred):
                raise ReadError(f"{where}:{expr.lineno}: starred program")
            return programs_of(head, func, depth)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return first_elements(expr.left, func, depth)
        if isinstance(expr, ast.Name) and func is not None:
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == expr.id for t in node.targets
                ):
                    return first_elements(node.value, func, depth + 1)
            return parameter_values(expr.id, func, depth, list_expected=True)
        raise ReadError(f"{where}:{getattr(expr, 'lineno', '?')}: cannot read the program")

    def programs_of(expr: ast.expr, func: ast.FunctionDef | None, depth: int) -> list[str]:
        value = _constant(expr, module_names)
        if value is not None:
            return value
        if isinstance(expr, ast.Name) and func is not None:
            return parameter_values(expr.id, func, depth, list_expected=False)
        raise ReadError(f"{where}:{getattr(expr, 'lineno', '?')}: cannot read the program")

    def parameter_values(
        name: str, func: ast.FunctionDef, depth: int, *, list_expected: bool
    ) -> list[str]:
        positional = [a.arg for a in func.args.args]
        keyword_only = [a.arg for a in func.args.kwonlyargs]
        if name not in positional + keyword_only:
            raise ReadError(f"{where}: {name} in {func.name} is neither local nor a parameter")
        index = positional.index(name) if name in positional else len(positional) + 1000
        defaults: dict[str, ast.expr] = dict(
            zip(
                positional[len(positional) - len(func.args.defaults) :],
                func.args.defaults,
                strict=True,
            )
        )
        for keyword, default in zip(keyword_only, func.args.kw_defaults, strict=True):
            if default is not None:
                defaults[keyword] = default
        found: list[str] = []
        if name in defaults:
            found += (first_elements if list_expected else programs_of)(
                defaults[name], None, depth + 1
            )
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id != func.name:
                continue
            caller = _enclosing(tree, node)
            arg: ast.expr | None = None
            if index < len(node.args):
                arg = node.args[index]
            for kw in node.keywords:
                if kw.arg == name:
                    arg = kw.value
            if arg is not None:
                found += (first_elements if list_expected else programs_of)(arg, caller, depth + 1)
        if not found:
            raise ReadError(f"{where}: no value found for {name} of {func.name}")
        return found

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if not (
            isinstance(node.func.value, ast.Name)
            and node.func.value.id == "subprocess"
            and node.func.attr in _SUBPROCESS
            and node.args
        ):
            continue
        func = _enclosing(tree, node)
        for program in first_elements(node.args[0], func, 0):
            uses.append(Use(program, (), f"{where}:{node.lineno}"))
    return uses


def _enclosing(tree: ast.Module, target: ast.AST) -> ast.FunctionDef | None:
    best: ast.FunctionDef | None = None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.FunctionDef)
            and any(n is target for n in ast.walk(node))
            and (best is None or node.lineno > best.lineno)
        ):
            best = node
    return best


def shebang(path: Path) -> list[str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    return first[2:].split() if first.startswith("#!") else []


def is_shell(path: Path, dest: str) -> bool:
    words = shebang(path)
    if words:
        return PurePosixPath(words[0]).name in ("sh", "ash") or (
            PurePosixPath(words[0]).name == "env" and words[1:2] == ["sh"]
        )
    # SWUpdate's start script (swupdate.sh) sources these
    return dest.startswith("/usr/lib/swupdate/conf.d/")


def is_python(path: Path) -> bool:
    words = shebang(path)
    return bool(words) and any(PurePosixPath(w).name.startswith("python3") for w in words[:2])


def device_program_uses(machine: str) -> Iterator[Use]:
    """Every program the device code names: unit Exec* lines, shebangs, shell
    scripts, subprocess calls of the layer's Python scripts and the agent."""
    for f in lf.device_files(machine):
        rel = f.source.relative_to(lf.REPO)
        text = f.source.read_text(errors="replace")
        if f.dest.endswith((".service", ".conf")) and "/systemd/" in f.dest:
            yield from unit_commands(text, str(rel))
        if f.mode & 0o111:
            words = shebang(f.source)
            if words:
                yield Use(words[0], (), f"{rel}:1 #!")
                if PurePosixPath(words[0]).name == "env":
                    yield Use(words[1], (), f"{rel}:1 #!")
        if is_shell(f.source, f.dest):
            yield from shell_commands(text, str(rel))
        elif is_python(f.source):
            yield from python_commands(f.source, str(rel))
    # (the agent's unit is a device file of the agent recipe, read above)
    for path in sorted(AGENT_SOURCE.rglob("*.py")):
        yield from python_commands(path, str(path.relative_to(lf.REPO)))


# -- Python imports ----------------------------------------------------------------


def imports(path: Path) -> set[str]:
    """Dotted names a module imports (absolute imports; relative ones are its own package)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def python_package_of(module: str) -> str | None:
    """The wrynose python3 package holding a standard module (dotted), or None
    when it is not a standard module. Submodules imported by `from X import Y`
    that are not modules resolve to X's package."""
    import sys

    modules = python_manifest()["modules"]
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return "python3-" + modules[name]
    top = parts[0]
    if top in sys.builtin_module_names:
        return "python3-core"
    if top in sys.stdlib_module_names:
        return "python3-misc"
    return None


def python_needs(module: str) -> set[str]:
    """Packages an import needs: its own and those of its parent packages."""
    parts = module.split(".")
    needs = set()
    for n in range(1, len(parts) + 1):
        package = python_package_of(".".join(parts[:n]))
        if package:
            needs.add(package)
    return needs


def device_python_files(machine: str) -> list[tuple[str, Path]]:
    """(the package that ships it, file) for every Python file of device code."""
    out = [("twelvefactor-agent", p) for p in sorted(AGENT_SOURCE.rglob("*.py"))]
    for f in lf.device_files(machine):
        if is_python(f.source):
            pn = f.recipe.split("_")[0].removesuffix(".bb")
            out.append((pn, f.source))
    return out


def package_closure(package: str, machine: str) -> set[str]:
    """The run-time closure of one package (itself included)."""
    seen: set[str] = set()
    todo = [package]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        deps = dependencies(p, machine)
        todo += deps or []
    return seen


# -- packaging (FILES) -------------------------------------------------------------

# bitbake.conf's PACKAGES and FILES at the oe-core commit kas/base.yml pins
# (meta/conf/bitbake.conf, lines 334-379 there)
DEFAULT_FILES = {
    "${PN}-src": "",
    "${PN}-dbg": "/usr/lib/debug /usr/lib/debug-static /usr/src/debug",
    "${PN}-staticdev": "${libdir}/*.a ${base_libdir}/*.a ${libdir}/${BPN}/*.a",
    "${PN}-dev": (
        "${includedir} ${base_libdir}/lib*${SOLIBSDEV} ${libdir}/lib*${SOLIBSDEV} "
        "${libdir}/*.la ${libdir}/*.o ${libdir}/pkgconfig ${datadir}/pkgconfig "
        "${datadir}/aclocal ${base_libdir}/*.o ${libdir}/${BPN}/*.la ${base_libdir}/*.la "
        "${libdir}/cmake ${datadir}/cmake"
    ),
    "${PN}-doc": "${docdir} ${mandir} ${infodir} ${datadir}/gtk-doc ${datadir}/gnome/help",
    "${PN}-locale": "${datadir}/locale",
    "${PN}": (
        "${bindir}/* ${sbindir}/* ${libexecdir}/* ${libdir}/lib*${SOLIBS} "
        "${sysconfdir} ${sharedstatedir} ${localstatedir} "
        "${base_bindir}/* ${base_sbindir}/* ${base_libdir}/*${SOLIBS} "
        "${base_prefix}/lib/udev ${prefix}/lib/udev ${base_libdir}/udev ${libdir}/udev "
        "${datadir}/${BPN} ${libdir}/${BPN}/* ${datadir}/pixmaps ${datadir}/applications "
        "${datadir}/idl ${datadir}/omf ${datadir}/sounds ${libdir}/bonobo/servers"
    ),
}
UNIT_DIRS = (
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/etc/systemd/user",
    "/usr/lib/systemd/user",
)


def installed_tree(recipe: Path, machine: str) -> tuple[set[str], set[str]]:
    """(files, directories) one recipe's do_install puts into ${D} (its own lines only)."""
    files = {f.dest for f in lf.device_files(machine) if f.recipe == recipe.name}
    dirs: set[str] = set()
    values = lf.layer_variables() | lf._assignments(recipe.read_text()) | lf.PATH_VARS
    for body in lf._install_bodies(recipe, machine):
        for line in lf._logical_lines(body):
            words = line.split()
            if words[:2] != ["install", "-d"]:
                continue
            for word in words[2:]:
                if word == "-m" or re.fullmatch(r"[0-7]{3,4}", word):
                    continue
                path = lf.expand(word, values)
                if not path.startswith("${D}"):
                    raise ReadError(f"{recipe.name}: install -d outside ${{D}}: {word}")
                dirs.add(path[len("${D}") :].rstrip("/") or "/")
    for path in list(files) + list(dirs):
        parent = PurePosixPath(path).parent
        while str(parent) != "/":
            dirs.add(str(parent))
            parent = parent.parent
    return files, dirs


def _glob(pattern: str, paths: set[str]) -> set[str]:
    regex = re.compile(
        "^"
        + "".join(
            "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
            for c in pattern.rstrip("/")
        )
        + "$"
    )
    return {p for p in paths if regex.match(p)}


@dataclass(frozen=True)
class Packaging:
    recipe: str
    shipped: dict[str, str]  # path -> package
    unshipped: list[str]


def packaging(recipe_path: Path, machine: str) -> Packaging:
    """The FILES split of what one of the layer's recipes (or appends) installs:
    oe.package.populate_packages (each package in PACKAGES order takes what its
    FILES match and is not taken; a directory takes everything below it; the
    parents of what is taken count as shipped), with systemd.bbclass's
    additions to FILES (a SYSTEMD_SERVICE unit, a .service's @.service and the
    .socket its Also= names, a .socket's .service and @.service; nothing for a
    .path or a .timer)."""
    is_append = recipe_path.suffix == ".bbappend"
    pn = recipe_path.name.split("_")[0].removesuffix(".bb")
    files, dirs = installed_tree(recipe_path, machine)
    everything = files | dirs
    if not everything:
        return Packaging(recipe_path.name, {}, [])
    if is_append:
        base = upstream()["recipe"].get(pn)
        if base is None:
            raise ReadError(f"{recipe_path.name}: no [recipe.{pn}] in data/yocto-packages.toml")
        before = list(base["packages_before"])
        upstream_files = base["files"]
        systemd_packages = list(base["systemd_packages"])
        recipe = Recipe(pn, recipe_path)
    else:
        before, upstream_files, systemd_packages = [], {}, [pn]
        recipe = Recipe(pn, recipe_path, tuple(appends_of(pn)))
    order = before + [k.replace("${PN}", pn) for k in DEFAULT_FILES]
    files_of: dict[str, list[str]] = {}
    for package in order:
        default = DEFAULT_FILES.get(package.replace(pn, "${PN}", 1), "")
        default = " ".join([default, *upstream_files.get(package, [])]).strip()
        key = "FILES:" + package.replace(pn, "${PN}", 1)
        value = recipe.get(key, machine, initial=default)
        values = lf.layer_variables() | {"PN": pn, "BPN": pn} | lf.PATH_VARS | _MORE_PATHS
        files_of[package] = lf.expand(value, values).split()
    text = "\n".join(recipe.texts())
    inherits = " ".join(re.findall(r"^inherit\s+(.+)$", text, re.M))
    if "systemd" in inherits.split() or is_append:
        for package in systemd_packages:
            services = recipe.get(f"SYSTEMD_SERVICE:{package.replace(pn, '${PN}', 1)}", machine)
            for service in services.split():
                files_of[package] += _systemd_units(service, everything, recipe_path)
    shipped: dict[str, str] = {}
    seen: set[str] = set()
    for package in order:
        for entry in files_of[package]:
            for match in (
                _glob(entry, everything)
                if "*" in entry or "?" in entry
                else ({entry.rstrip("/")} & everything)
            ):
                taken = {p for p in everything if p == match or p.startswith(match + "/")}
                for path in taken - seen:
                    if path in files:
                        shipped[path] = package
                    seen.add(path)
                    parent = PurePosixPath(path).parent
                    while str(parent) != "/":
                        seen.add(str(parent))
                        parent = parent.parent
    unshipped = sorted(p for p in everything - seen)
    return Packaging(recipe_path.name, shipped, unshipped)


def _systemd_units(service: str, tree: set[str], recipe: Path) -> list[str]:
    found = ""
    base = None
    if "@" in service:
        base = service[: service.index("@") + 1] + service[service.rindex(".") :]
    for d in UNIT_DIRS:
        if f"{d}/{service}" in tree or (base and f"{d}/{base}" in tree):
            found = d
            break
    if not found:
        return []  # units of the recipe this appends to, or BitBake's own error
    out: list[str] = []

    def add(name: str) -> None:
        path = f"{found}/{name}"
        if path in tree and path not in out:
            out.append(path)
            if name.endswith(".service"):
                add(name.replace(".service", "@.service"))
            if name.endswith(".socket"):
                add(name.replace(".socket", ".service"))
                add(name.replace(".socket", "@.service"))

    add(service)
    return out
