"""The artifact tool's delta sw-description: the layer's template rendered with the
header's digest, the chunks' URL and the size of the file system the header
indexes (`source-size`), and templates that would mislead every device refused."""

from __future__ import annotations

import libconf
import pytest
from twelvefactor_services.artifact import ArtifactToolError
from twelvefactor_services.artifact.template import (
    DELTA_TEMPLATE_NAME,
    default_template,
    delta_description,
    parse_hardware,
)

pytestmark = pytest.mark.unit

HARDWARE = [parse_hardware("qemux86-64=1.0,1.1"), parse_hardware("raspberrypi4-64=2.0")]
URL = "https://10.99.0.1:8443"
ARGS = {
    "version": "2.1",
    "hardware": HARDWARE,
    "header": "rootfs.ext4.zck.zckheader",
    "header_sha256": "a" * 64,
    "zck": "rootfs.ext4.zck",
    "zck_sha256": "b" * 64,
    "url": URL,
    "size": 318767104,
}


def _template() -> str:
    return default_template(DELTA_TEMPLATE_NAME).read_text()


def test_the_layers_template_names_the_chunks_and_the_file_systems_size() -> None:
    software = libconf.loads(delta_description(_template(), **ARGS))["software"]  # type: ignore[arg-type]
    assert software["version"] == "2.1"
    for board in ("qemux86-64", "raspberrypi4-64"):
        for copy in ("copy1", "copy2"):
            (image,) = software[board]["stable"][copy]["images"]
            assert image["filename"] == ARGS["header"]
            assert image["sha256"] == ARGS["header_sha256"]
            props = image["properties"]
            assert props["url"] == f"{URL}/artifacts/{'b' * 64}.zck"
            assert props["source-size"] == "318767104"


def test_a_template_without_source_size_indexes_the_whole_slot_and_is_kept() -> None:
    lines = [line for line in _template().splitlines() if "source-size" not in line]
    text = delta_description("\n".join(lines), **ARGS)  # type: ignore[arg-type]
    assert "source-size" not in text and f"{'b' * 64}.zck" in text


def test_a_template_with_its_own_source_size_is_refused() -> None:
    text = _template().replace("$twelvefactor_zck_size(@@TWELVEFACTOR_ROOTFS_ZCKHEADER@@)", "4096")
    with pytest.raises(ArtifactToolError, match=r"source-size '4096', not .*318767104"):
        delta_description(text, **ARGS)  # type: ignore[arg-type]


def test_a_template_calling_an_unknown_file_is_refused() -> None:
    text = _template().replace(
        "twelvefactor_zck_size(@@TWELVEFACTOR_ROOTFS_ZCKHEADER@@)",
        "twelvefactor_zck_size(other.zckheader)",
    )
    with pytest.raises(
        ArtifactToolError, match=r"twelvefactor_zck_size\(other.zckheader\) names no file"
    ):
        delta_description(text, **ARGS)  # type: ignore[arg-type]
