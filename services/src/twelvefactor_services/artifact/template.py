"""sw-description for an artifact: the layer's one template, rendered as meta-swupdate does.

meta-swupdate's class makes sw-description from the twelvefactor-update
recipe's template by two substitutions: every `@@VAR@@` by the variable's
value, then `$swupdate_get_sha256(NAME)` by the sha256 of the file NAME.
`render` does exactly these, so for one board and one revision the text is
the recipe's, byte for byte. Three things a recipe build does not ask for are
made from the same template rather than from a second one:

- more revisions of a board: the revisions joined by `", "` into
  `@@TWELVEFACTOR_HW_REVISION@@` (which the template quotes inside a list),
  the text a recipe would make from `TWELVEFACTOR_HW_REVISION = '1.0", "1.1'`;
- more boards: the board's block (`software.@@MACHINE@@`) rendered once per
  board and the blocks put side by side (SWUpdate takes the block named by
  the first word of /etc/hwrevision);
- an uncompressed image: the entries' `compressed` settings removed.

Every result is read back with the management service's parser and must say
what was asked (version, hardware, the one image, its digest and
compression); a template that cannot is refused with the reason. Nothing
here reads a file except `layer_template`/`default_template`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from twelvefactor_agent.protocol.names import VERSION_RE

from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.swu import (
    FILE_SECTIONS,
    SwuError,
    SwuInfo,
    parse_description,
    settings,
)

LAYER = "meta-twelvefactor"
TEMPLATE_NAME = "sw-description"
# the variables the templates name (twelvefactor-update.inc and the two recipes set them)
VERSION_VAR = "TWELVEFACTOR_UPDATE_VERSION"
MACHINE_VAR = "MACHINE"
REVISION_VAR = "TWELVEFACTOR_HW_REVISION"
IMAGE_VAR = "TWELVEFACTOR_ROOTFS_IMAGE"
# the delta template's (twelvefactor-update-delta_1.0.bb): the zchunk header in the
# .swu, the .zck on the artifact server (named by its digest) and the server's URL
DELTA_TEMPLATE_NAME = "sw-description-delta"
ZCKHEADER_VAR = "TWELVEFACTOR_ROOTFS_ZCKHEADER"
ZCK_VAR = "TWELVEFACTOR_ROOTFS_ZCK"
URL_VAR = "TWELVEFACTOR_ARTIFACT_URL"
# the layer's class (twelvefactor_delta.bbclass): a deployed file's digest, and the size
# of the file system a zchunk header indexes (the delta handler's `source-size`)
DEPLOY_SHA256 = "twelvefactor_deploy_sha256"
ZCK_SIZE = "twelvefactor_zck_size"
URL_RE = re.compile(r"https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
IMAGE_BASENAME = "twelvefactor-image"  # the recipe's IMAGE_DEPENDS
COMPRESSIONS = ("zstd", "none")

# A board is a libconfig setting name (sw-description's software.<board>) and the
# first word of /etc/hwrevision; a revision its second word. Neither may need
# quoting in libconfig, so a value can never change the document's structure.
BOARD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
# settings SWUpdate reads inside `software`: a board of that name would be taken for one
RESERVED = frozenset(
    {
        "version",
        "description",
        "hardware-compatibility",
        "images",
        "files",
        "scripts",
        "bootenv",
        "uboot",
        "partitions",
        "stable",
        "embedded-script",
        "reboot",
        "bootloader_transaction_marker",
        "bootloader_state_marker",
    }
)


@dataclass(frozen=True)
class Hardware:
    """A board and the revisions of it an artifact installs on (checked when made)."""

    board: str
    revisions: tuple[str, ...]

    def __post_init__(self) -> None:
        if not BOARD_RE.fullmatch(self.board):
            raise ArtifactToolError(
                f"board {self.board!r} is not a letter followed by letters, digits, '-' or '_'"
                " (at most 64), as the first word of /etc/hwrevision"
            )
        if self.board in RESERVED:
            raise ArtifactToolError(
                f"board {self.board!r} is a setting SWUpdate reads in sw-description"
            )
        if not self.revisions:
            raise ArtifactToolError(f"board {self.board!r} has no revision")
        for rev in self.revisions:
            if not REVISION_RE.fullmatch(rev):
                raise ArtifactToolError(
                    f"revision {rev!r} of {self.board} is not letters, digits, '.', '_', '+',"
                    " '~' or '-' (at most 64, starting with a letter or digit), as the second"
                    " word of /etc/hwrevision"
                )
        if len(set(self.revisions)) != len(self.revisions):
            raise ArtifactToolError(f"board {self.board!r} has a revision twice")


def check_version(version: str) -> str:
    """`version`, or the reason every agent would refuse a job for it."""
    if not VERSION_RE.fullmatch(version):
        raise ArtifactToolError(
            f"version {version!r} is not numbers separated by dots (1 to 6 of them, each"
            " up to nine digits, e.g. 1.2.3), which is all a device accepts"
        )
    return version


def parse_hardware(spec: str) -> Hardware:
    """`BOARD=REV[,REV...]`, e.g. `qemux86-64=1.0` or `raspberrypi4-64=1.0,1.1`."""
    board, sep, revs = spec.partition("=")
    if not sep:
        raise ArtifactToolError(f"hardware {spec!r} is not BOARD=REV[,REV...]")
    try:
        return Hardware(board.strip(), tuple(r.strip() for r in revs.split(",")))
    except ArtifactToolError as exc:
        raise ArtifactToolError(f"hardware {spec!r}: {exc}") from None


def check_hardware(hardware: Sequence[Hardware]) -> None:
    if not hardware:
        raise ArtifactToolError("no hardware: give at least one BOARD=REV[,REV...]")
    boards = [hw.board for hw in hardware]
    for board in boards:
        if boards.count(board) > 1:
            raise ArtifactToolError(
                f"board {board!r} is given twice: put its revisions in one BOARD=REV,REV"
            )


def image_name(board: str, compress: str) -> str:
    """The rootfs file's name in the .swu, as the twelvefactor-update recipe names it
    (`twelvefactor-image${IMAGE_MACHINE_SUFFIX}.rootfs.ext4.zst`)."""
    suffix = ".zst" if compress == "zstd" else ""
    return f"{IMAGE_BASENAME}-{board}.rootfs.ext4{suffix}"


def find_checkout(*starts: Path) -> Path | None:
    """The first of `starts` or their parents that holds the layer."""
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / LAYER / "conf" / "layer.conf").is_file():
                return folder
    return None


def delta_image_names(board: str) -> tuple[str, str]:
    """The .zck and its header's names, as meta-swupdate's zchunk image types name them."""
    zck = f"{IMAGE_BASENAME}-{board}.rootfs.ext4.zck"
    return zck, f"{zck}.zckheader"


def check_url(url: str) -> str:
    """The artifact server's base URL as a device reaches it (https://HOST[:PORT])."""
    url = url.rstrip("/")
    if not URL_RE.fullmatch(url):
        raise ArtifactToolError(
            f"artifact URL {url!r} is not https://HOST[:PORT] (the management service's"
            " artifact server inside the tunnel, as devices reach it)"
        )
    return url


def layer_template(top: Path, name: str = TEMPLATE_NAME) -> Path:
    """The one sw-description template called `name` in the checkout `top`'s layer."""
    found = sorted(p for p in (top / LAYER).rglob(name) if p.is_file())
    if len(found) != 1:
        raise ArtifactToolError(
            f"expected one {name} template in {top / LAYER}, found "
            f"{[str(p) for p in found] or 'none'}"
        )
    return found[0]


def default_template(name: str = TEMPLATE_NAME) -> Path:
    """The layer's template, from the checkout this tool runs from or the current one."""
    top = find_checkout(Path(__file__).resolve().parent, Path.cwd().resolve())
    if top is None:
        raise ArtifactToolError(
            f"no sw-description template: neither this tool ({Path(__file__).parent}) nor the"
            f" current directory is inside a twelvefactor checkout (a folder with {LAYER}/);"
            f" give --template PATH ({LAYER}/recipes-support/twelvefactor-update/files/"
            f"{TEMPLATE_NAME} in a checkout)"
        )
    return layer_template(top, name)


def render(
    text: str,
    values: dict[str, str],
    digests: dict[str, str],
    calls: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """meta-swupdate's two substitutions: `@@VAR@@` from `values`, then
    `$swupdate_get_sha256(NAME)` from `digests` (file name -> sha256); and the
    layer's functions (`$twelvefactor_deploy_sha256(NAME)`, a file left in the
    deploy folder, `$twelvefactor_zck_size(NAME)`) from `calls` (function ->
    argument -> value)."""

    def value(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise ArtifactToolError(f"sw-description: no value for @@{m.group(1)}@@")
        return values[m.group(1)]

    text = re.sub(r"@@([A-Z0-9_]+)@@", value, text)

    def call(m: re.Match[str]) -> str:
        function, name = m.group(1), m.group(2).strip()
        answers = digests if function == "swupdate_get_sha256" else (calls or {}).get(function, {})
        if name not in answers:
            raise ArtifactToolError(f"sw-description: ${function}({name}) names no file")
        return answers[name]

    functions = "|".join(("swupdate_get_sha256", DEPLOY_SHA256, ZCK_SIZE))
    return re.sub(rf"\$({functions})\(([^)]+)\)", call, text)


def description(
    template: str,
    *,
    version: str,
    hardware: Sequence[Hardware],
    image: str,
    sha256: str,
    compress: str,
) -> str:
    """The sw-description of an artifact holding one image `image` (digest `sha256`)."""
    check_version(version)
    check_hardware(hardware)
    if compress not in COMPRESSIONS:
        raise ArtifactToolError(f"compression {compress!r} is not one of {COMPRESSIONS}")
    try:
        text = _for_boards(template, hardware, version, {IMAGE_VAR: image}, {image: sha256})
        if compress == "none":
            text = _without_compression(text)
        _check(
            text, version=version, hardware=hardware, image=image, sha256=sha256, compress=compress
        )
    except SwuError as exc:
        raise ArtifactToolError(f"the sw-description template does not render: {exc}") from None
    return text


def delta_description(
    template: str,
    *,
    version: str,
    hardware: Sequence[Hardware],
    header: str,
    header_sha256: str,
    zck: str,
    zck_sha256: str,
    url: str,
    size: int,
) -> str:
    """The sw-description of a delta artifact: `header` (the zchunk header of the
    root file system, digest `header_sha256`, indexing `size` bytes) in the .swu,
    the chunks fetched from `url`/artifacts/`zck_sha256`.zck."""
    check_version(version)
    check_hardware(hardware)
    url = check_url(url)
    values = {ZCKHEADER_VAR: header, ZCK_VAR: zck, URL_VAR: url}
    try:
        text = _for_boards(
            template,
            hardware,
            version,
            values,
            {header: header_sha256},
            {DEPLOY_SHA256: {zck: zck_sha256}, ZCK_SIZE: {header: str(size)}},
        )
        info = parse_description(text)
    except SwuError as exc:
        raise ArtifactToolError(f"the delta template does not render: {exc}") from None
    _check_release(info, version=version, hardware=hardware)
    want = f"{url}/artifacts/{zck_sha256}.zck"
    if not info.files:
        raise ArtifactToolError(
            f'the delta template names no image (filename = "@@{ZCKHEADER_VAR}@@")'
        )
    for f in info.files:
        if (f.filename, f.sha256, f.type, f.url) != (header, header_sha256, "delta", want):
            raise ArtifactToolError(
                f"the delta template's entry for {f.filename!r} is not a delta image of"
                f' "@@{ZCKHEADER_VAR}@@" with its sha256 and url = "@@{URL_VAR}@@/artifacts/'
                f'${DEPLOY_SHA256}(@@{ZCK_VAR}@@).zck" (type {f.type!r}, url {f.url!r})'
            )
        if f.source_size not in (None, str(size)):
            raise ArtifactToolError(
                f"the delta template's entry for {f.filename!r} has source-size"
                f' {f.source_size!r}, not "${ZCK_SIZE}(@@{ZCKHEADER_VAR}@@)" ({size})'
            )
    return text


def _for_boards(
    template: str,
    hardware: Sequence[Hardware],
    version: str,
    values: dict[str, str],
    digests: dict[str, str],
    calls: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """`template` rendered for each board (its revisions, `values`) and the boards' blocks
    put side by side."""
    texts = [
        render(
            template,
            {
                VERSION_VAR: version,
                MACHINE_VAR: hw.board,
                REVISION_VAR: '", "'.join(hw.revisions),
                **values,
            },
            digests,
            calls,
        )
        for hw in hardware
    ]
    return _side_by_side(texts, [hw.board for hw in hardware])


def _side_by_side(texts: list[str], boards: list[str]) -> str:
    """The first text with its board block followed by the other texts' blocks."""
    if len(texts) == 1:
        return texts[0]
    blocks: list[str] = []
    first_start = first_end = 0
    for n, (text, board) in enumerate(zip(texts, boards, strict=True)):
        found = [s for s in settings(text) if s.path == ("software",) and s.name == board]
        if len(found) != 1:
            raise ArtifactToolError(
                f"the template has no software.@@{MACHINE_VAR}@@ block, so its"
                " sw-description is for one board only: give one --hardware"
            )
        if n == 0:
            first_start, first_end = found[0].start, found[0].end
        blocks.append(text[found[0].start : found[0].end])
    first = texts[0]
    indent = first[first.rfind("\n", 0, first_start) + 1 : first_start]
    if indent.strip():
        indent = ""
    return first[:first_start] + f"\n\n{indent}".join(blocks) + first[first_end:]


def _without_compression(text: str) -> str:
    """`text` without the `compressed` settings of its file entries (and their lines,
    where nothing else is on them)."""
    spans = [
        (s.start, s.end)
        for s in settings(text)
        if s.name == "compressed" and len(s.path) >= 2 and s.path[-2] in FILE_SECTIONS
    ]
    for start, end in reversed(spans):
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        if not text[line_start:start].strip() and not text[end:line_end].strip():
            start, end = line_start, min(line_end + 1, len(text))
        text = text[:start] + text[end:]
    return text


def _check_release(info: SwuInfo, *, version: str, hardware: Sequence[Hardware]) -> None:
    """Refuse a rendered sw-description whose version or hardware is not what was asked."""
    if info.version != version:
        raise ArtifactToolError(
            f"the template's software.version renders to {info.version!r}, not {version!r}:"
            f' it must be "@@{VERSION_VAR}@@"'
        )
    wanted = {hw.board: hw.revisions for hw in hardware}
    if info.hardware != wanted:
        raise ArtifactToolError(
            f"the template's hardware-compatibility renders to {info.hardware}, not {wanted}:"
            f' it must be [ "@@{REVISION_VAR}@@" ] in the software.@@{MACHINE_VAR}@@ block'
        )


def _check(
    text: str,
    *,
    version: str,
    hardware: Sequence[Hardware],
    image: str,
    sha256: str,
    compress: str,
) -> None:
    """Refuse a rendered sw-description that does not say what was asked."""
    info = parse_description(text)
    _check_release(info, version=version, hardware=hardware)
    if not info.files:
        raise ArtifactToolError(
            f'the template names no image (filename = "@@{IMAGE_VAR}@@" in an images entry)'
        )
    want = "zstd" if compress == "zstd" else None
    for f in info.files:
        if f.filename != image:
            raise ArtifactToolError(
                f"the template names the file {f.filename!r}; this tool packs one image,"
                f' filename = "@@{IMAGE_VAR}@@"'
            )
        if f.sha256 != sha256:
            raise ArtifactToolError(
                f"the template's entry for {image} has no sha256 = \"$swupdate_get_sha256"
                f'(@@{IMAGE_VAR}@@)"; SWUpdate refuses a signed image without its digest'
            )
        if f.compressed != want:
            said = f"compressed = {f.compressed!r}" if f.compressed else "no compressed setting"
            raise ArtifactToolError(
                f"the template's entry for {image} has {said}; --compress {compress}"
                + (' needs compressed = "zstd"' if want else " removes it")
            )
