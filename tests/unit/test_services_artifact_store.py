"""The management service's artifact store refuses what no device would install."""

from __future__ import annotations

from pathlib import Path

import pytest
from twelvefactor_services.artifact.swu import newc_archive
from twelvefactor_services.management.artifacts import ArtifactError, ArtifactStore


def swu(path: Path, board_block: str, version: str = "2.0") -> Path:
    desc = f'software = {{ version = "{version}"; {board_block} }};'
    path.write_bytes(newc_archive([("sw-description", desc.encode()), ("rootfs.zst", b"x" * 100)]))
    return path


def test_an_artifact_for_no_hardware_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    empty = swu(tmp_path / "a.swu", "qemux86-64 = { hardware-compatibility: [ ]; };")
    with pytest.raises(ArtifactError, match="names no hardware revision, so every device refuses"):
        store.add(empty)
    bad_re = swu(tmp_path / "b.swu", 'qemux86-64 = { hardware-compatibility: [ "#RE:1.[" ]; };')
    with pytest.raises(ArtifactError, match=r"hardware pattern '#RE:1\.\[' is not a valid regex"):
        store.add(bad_re)
    good = swu(tmp_path / "c.swu", 'qemux86-64 = { hardware-compatibility: [ "1.0" ]; };')
    assert store.add(good).hardware == {"qemux86-64": ["1.0"]}
    assert [a.version for a in store.list()] == ["2.0"]
