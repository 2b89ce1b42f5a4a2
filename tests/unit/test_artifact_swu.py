"""twelvefactor-artifact (services/.../artifact/): build, inspect and verify a .swu.

Built from a small real ext4 (mkfs.ext4 -d) and checked with the tools a
device or an attacker would use: GNU cpio to list and unpack (it checks the
"crc" checksums), `openssl cms -verify` against the certificate, zstd, and
libconf for the sw-description syntax. SWUpdate on this machine checks the
archive when scripts/setup installs it (test_swupdate_or_openssl_accepts_it);
the image's own SWUpdate does in tests/boot/test_artifact_swupdate.py.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import libconf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import require_tool
from twelvefactor_services.artifact import ArtifactToolError, cli
from twelvefactor_services.artifact import inspect as inspecting
from twelvefactor_services.artifact import template as swtemplate
from twelvefactor_services.artifact.build import Built, build_swu
from twelvefactor_services.artifact.cms import Signer
from twelvefactor_services.artifact.swu import (
    DESCRIPTION,
    SIGNATURE,
    parse_description,
    write_archive,
)
from twelvefactor_services.artifact.template import Hardware, parse_hardware
from twelvefactor_services.artifact.verify import verify

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "meta-twelvefactor"
TEMPLATE = LAYER / "recipes-support/twelvefactor-update/files/sw-description"
DEV = Signer(
    LAYER / "files/dev-signing/twelvefactor-dev-update.key",
    LAYER / "files/dev-signing/twelvefactor-dev-update.crt",
)
QEMU = [Hardware("qemux86-64", ("1.0",))]
IMAGE = "twelvefactor-image-qemux86-64.rootfs.ext4.zst"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 MiB ext4 with a few files (mkfs.ext4 -d, as the reference image is made)."""
    for name in ("openssl", "zstd", "cpio"):
        require_tool(name)
    folder = tmp_path_factory.mktemp("rootfs")
    tree = folder / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hwrevision").write_text("qemux86-64 1.0\n")
    (tree / "etc/os-release").write_text("ID=twelvefactor\nVERSION_ID=1.2.3\n")
    fs = folder / "rootfs.ext4"
    subprocess.run(
        [require_tool("mkfs.ext4"), "-q", "-d", tree, "-L", "rootfs-a", fs, "4M"], check=True
    )
    return fs


@pytest.fixture(scope="module")
def built(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("built") / "update.swu"
    return build_swu(rootfs, out, version="1.2.3", hardware=QEMU, signer=DEV)


def _unpack(swu: Path, dest: Path) -> list[str]:
    """Members in archive order, unpacked by GNU cpio, which must find no checksum error."""
    dest.mkdir()
    with swu.open("rb") as f:
        done = subprocess.run(["cpio", "-i", "--quiet"], stdin=f, cwd=dest, capture_output=True)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()
    with swu.open("rb") as f:
        listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=f, capture_output=True)
    return listing.stdout.decode().split()


def _cms_verify(folder: Path, cert: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            folder / SIGNATURE,
            "-content",
            folder / DESCRIPTION,
            "-binary",
            "-CAfile",
            cert,
            "-out",
            "/dev/null",
        ],
        capture_output=True,
    )


def _recipe_rendering(version: str, machine: str, revision: str, image: str, digest: str) -> str:
    """The sw-description meta-swupdate's swupdate-common.bbclass makes from the template
    (line by line: every @@VAR@@, then one $func(arg) per line), as tests/layer does."""
    values = {
        "TWELVEFACTOR_UPDATE_VERSION": version,
        "MACHINE": machine,
        "TWELVEFACTOR_HW_REVISION": revision,
        "TWELVEFACTOR_ROOTFS_IMAGE": image,
    }
    lines = []
    for line in TEMPLATE.read_text().splitlines(keepends=True):
        while m := re.match(r"^(.*)@@(\w+)@@(.*)$", line, re.S):
            line = m.group(1) + values[m.group(2)] + m.group(3)
        m = re.match(r"^(.+)\$(\w+)\((.+)\)(.+)$", line, re.S)
        if m:
            assert (m.group(2), m.group(3)) == ("swupdate_get_sha256", image)
            line = m.group(1) + digest + m.group(4)
        lines.append(line)
    return "".join(lines)


def _key_and_cert(
    folder: Path,
    name: str,
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    ca: bool = False,
) -> tuple[Path, Path]:
    """A P-256 key and its certificate (self-signed, or issued by `issuer`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    sign_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(sign_key, hashes.SHA256())
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _repack(folder: Path, names: list[str], out: Path) -> Path:
    with out.open("wb") as f:
        write_archive(f, [(n, folder / n) for n in names])
    return out


# --- build ---------------------------------------------------------------


def test_members_in_order_and_the_image_decompresses_to_the_rootfs(
    built: Built, rootfs: Path, tmp_path: Path
) -> None:
    assert built.path.read_bytes()[:6] == b"070702"  # cpio -H crc
    members = _unpack(built.path, tmp_path / "x")
    assert members == [DESCRIPTION, SIGNATURE, IMAGE]
    packed = tmp_path / "x" / IMAGE
    assert hashlib.sha256(packed.read_bytes()).hexdigest() == built.sha256
    out = tmp_path / "rootfs.ext4"
    subprocess.run(["zstd", "-d", "-q", packed, "-o", out], check=True)
    assert out.read_bytes() == rootfs.read_bytes()


def test_sw_description_is_the_one_the_recipe_makes(built: Built, tmp_path: Path) -> None:
    _unpack(built.path, tmp_path / "x")
    text = (tmp_path / "x" / DESCRIPTION).read_text()
    assert text == built.description
    assert text == _recipe_rendering("1.2.3", "qemux86-64", "1.0", IMAGE, built.sha256)


def test_openssl_cms_verify_accepts_the_signature(built: Built, tmp_path: Path) -> None:
    _unpack(built.path, tmp_path / "x")
    done = _cms_verify(tmp_path / "x", DEV.cert)
    assert done.returncode == 0, done.stderr.decode()


def _setup_packages() -> list[str]:
    text = (ROOT / "scripts/setup").read_text()
    body = text.split("packages=(", 1)[1].split(")", 1)[0]
    return body.split()


def test_swupdate_or_openssl_accepts_it(built: Built, tmp_path: Path) -> None:
    """SWUpdate's own reader checks the archive when scripts/setup installs it; it
    does not today (the image's SWUpdate checks the tool's artifacts in the boot
    tier), so openssl and cpio, the checks SWUpdate makes, stand for it here."""
    if "swupdate" in _setup_packages():
        swupdate = require_tool("swupdate")
        done = subprocess.run(
            [swupdate, "-c", "-i", built.path, "-k", DEV.cert, "-e", "stable,copy2"],
            capture_output=True,
        )
        assert done.returncode == 0, (done.stdout + done.stderr).decode()[-2000:]
    _unpack(built.path, tmp_path / "x")
    done = _cms_verify(tmp_path / "x", DEV.cert)
    assert done.returncode == 0, done.stderr.decode()


def test_several_boards_and_revisions(rootfs: Path, tmp_path: Path) -> None:
    hardware = [parse_hardware("qemux86-64=1.0,1.1"), parse_hardware("qemuarm64=2.0")]
    built = build_swu(rootfs, tmp_path / "u.swu", version="2.0", hardware=hardware, signer=DEV)
    doc = libconf.loads(built.description)["software"]  # a real libconfig parser
    assert doc["qemux86-64"]["hardware-compatibility"] == ["1.0", "1.1"]
    assert doc["qemuarm64"]["hardware-compatibility"] == ["2.0"]
    for board in ("qemux86-64", "qemuarm64"):
        for copy, part in (("copy1", "rootfs-a"), ("copy2", "rootfs-b")):
            (image,) = doc[board]["stable"][copy]["images"]
            assert image["filename"] == IMAGE  # one file, named after the first board
            assert image["sha256"] == built.sha256
            assert image["device"] == f"/dev/disk/by-partlabel/{part}"
    info = parse_description(built.description)
    assert info.hardware == {"qemux86-64": ("1.0", "1.1"), "qemuarm64": ("2.0",)}
    assert verify(built.path, DEV.cert) == []


def test_uncompressed(rootfs: Path, tmp_path: Path) -> None:
    built = build_swu(
        rootfs, tmp_path / "u.swu", version="1.0", hardware=QEMU, signer=DEV, compress="none"
    )
    assert built.image == "twelvefactor-image-qemux86-64.rootfs.ext4"
    assert "compressed" not in built.description
    assert "installed-directly = true;" in built.description  # only that line went
    members = _unpack(built.path, tmp_path / "x")
    assert members == [DESCRIPTION, SIGNATURE, built.image]
    assert (tmp_path / "x" / built.image).read_bytes() == rootfs.read_bytes()
    assert inspecting.as_json(inspecting.inspect(built.path))["compression"] == "none"
    assert verify(built.path, DEV.cert) == []


def test_an_already_compressed_image_is_packed_as_it_is(
    built: Built, rootfs: Path, tmp_path: Path
) -> None:
    zst = tmp_path / "rootfs.ext4.zst"
    subprocess.run(["zstd", "-q", "-3", "--check", rootfs, "-o", zst], check=True)
    again = build_swu(zst, tmp_path / "u.swu", version="1.2.3", hardware=QEMU, signer=DEV)
    assert again.sha256 == hashlib.sha256(zst.read_bytes()).hexdigest()
    with pytest.raises(ArtifactToolError, match="zstd-compressed and --compress none"):
        build_swu(zst, tmp_path / "n.swu", version="1", hardware=QEMU, signer=DEV, compress="none")


def test_a_disk_image_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "twelvefactor-image-qemux86-64.rootfs.wic"
    disk.write_bytes(b"\0" * 512 + b"EFI PART" + b"\0" * 4096)
    with pytest.raises(ArtifactToolError, match=r"neither an ext4 .* not a disk image \(\.wic\)"):
        build_swu(disk, tmp_path / "u.swu", version="1.0", hardware=QEMU, signer=DEV)
    assert not (tmp_path / "u.swu").exists()


@pytest.mark.parametrize(
    "version", ["1.2.3-rc1", "v1.2", "1..2", "", "1.2.3.4.5.6.7", "1234567890"]
)
def test_a_version_the_agent_refuses(rootfs: Path, tmp_path: Path, version: str) -> None:
    with pytest.raises(ArtifactToolError, match="not numbers separated by dots"):
        build_swu(rootfs, tmp_path / "u.swu", version=version, hardware=QEMU, signer=DEV)
    assert not (tmp_path / "u.swu").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("qemux86-64", "is not BOARD=REV"),
        ("qemux86-64=", "revision '' "),
        ("qemux86-64=1.0,", "revision '' "),
        ("=1.0", "board '' "),
        ("8board=1.0", "board '8board' is not a letter"),
        ('q"x=1.0', "is not a letter followed"),
        ('qemux86-64=1"0', "revision '1\"0'"),
        ("qemux86-64=1.0 1.1", "revision '1.0 1.1'"),
        ("images=1.0", "a setting SWUpdate reads"),
        ("qemux86-64=1.0,1.0", "a revision twice"),
    ],
)
def test_a_bad_hardware_spec(spec: str, message: str) -> None:
    with pytest.raises(ArtifactToolError, match=re.escape(message)):
        parse_hardware(spec)


def test_a_board_given_twice(rootfs: Path, tmp_path: Path) -> None:
    hardware = [parse_hardware("qemux86-64=1.0"), parse_hardware("qemux86-64=1.1")]
    with pytest.raises(ArtifactToolError, match="given twice: put its revisions in one"):
        build_swu(rootfs, tmp_path / "u.swu", version="1.0", hardware=hardware, signer=DEV)


def test_a_template_for_one_board_refuses_two(rootfs: Path, tmp_path: Path) -> None:
    flat = tmp_path / "sw-description"
    flat.write_text(
        'software = { version = "@@TWELVEFACTOR_UPDATE_VERSION@@";\n'
        '  hardware-compatibility: [ "@@TWELVEFACTOR_HW_REVISION@@" ];\n'
        '  images: ( { filename = "@@TWELVEFACTOR_ROOTFS_IMAGE@@"; compressed = "zstd";\n'
        '    sha256 = "$swupdate_get_sha256(@@TWELVEFACTOR_ROOTFS_IMAGE@@)"; } ); };\n'
    )
    two = [parse_hardware("a=1"), parse_hardware("b=1")]
    with pytest.raises(ArtifactToolError, match="for one board only"):
        build_swu(rootfs, tmp_path / "u.swu", version="1", hardware=two, signer=DEV, template=flat)
    with pytest.raises(ArtifactToolError, match=r"renders to \{'': \('1',\)\}"):
        build_swu(
            rootfs, tmp_path / "u.swu", version="1", hardware=two[:1], signer=DEV, template=flat
        )


def test_a_template_without_a_digest_is_refused(rootfs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "sw-description"
    bad.write_text(TEMPLATE.read_text().replace("$swupdate_get_sha256", "$other_function"))
    with pytest.raises(ArtifactToolError, match="has no sha256"):
        build_swu(rootfs, tmp_path / "u.swu", version="1", hardware=QEMU, signer=DEV, template=bad)


def test_no_template_found_says_so(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(swtemplate, "__file__", str(tmp_path / "site-packages/template.py"))
    with pytest.raises(ArtifactToolError, match=r"no sw-description template: .* give --template"):
        build_swu(rootfs, tmp_path / "u.swu", version="1", hardware=QEMU, signer=DEV)
    # inside a checkout (the current directory), its layer's template is found
    monkeypatch.chdir(ROOT / "docs")
    assert swtemplate.default_template() == TEMPLATE


def test_a_certificate_swupdate_would_refuse_stops_the_build(rootfs: Path, tmp_path: Path) -> None:
    """A TLS server certificate may not sign S/MIME, SWUpdate's default purpose."""
    key, cert = _key_and_cert(tmp_path, "server", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(ArtifactToolError, match=r"does not verify against .* as SWUpdate checks"):
        build_swu(rootfs, tmp_path / "u.swu", version="1", hardware=QEMU, signer=Signer(key, cert))
    assert not (tmp_path / "u.swu").exists()


def test_a_key_that_is_not_the_certificates(rootfs: Path, tmp_path: Path) -> None:
    key, _ = _key_and_cert(tmp_path, "other")
    with pytest.raises(ArtifactToolError, match="openssl cms -sign"):
        build_swu(
            rootfs, tmp_path / "u.swu", version="1", hardware=QEMU, signer=Signer(key, DEV.cert)
        )


def test_a_signing_certificate_issued_by_a_ca(rootfs: Path, tmp_path: Path) -> None:
    """The build checks the signer's own certificate; devices trust the CA."""
    ca_key, ca_cert = _key_and_cert(tmp_path, "ca", ca=True)
    ca = (
        serialization.load_pem_private_key(ca_key.read_bytes(), None),
        x509.load_pem_x509_certificate(ca_cert.read_bytes()),
    )
    assert isinstance(ca[0], ec.EllipticCurvePrivateKey)
    key, cert = _key_and_cert(
        tmp_path, "signer", eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION], issuer=(ca[0], ca[1])
    )
    built = build_swu(
        rootfs, tmp_path / "u.swu", version="1", hardware=QEMU, signer=Signer(key, cert)
    )
    assert verify(built.path, ca_cert) == []
    _unpack(built.path, tmp_path / "x")
    assert _cms_verify(tmp_path / "x", ca_cert).returncode == 0


# --- inspect -------------------------------------------------------------


def test_inspect(built: Built, tmp_path: Path) -> None:
    found = inspecting.as_json(inspecting.inspect(built.path))
    _unpack(built.path, tmp_path / "x")
    assert found["version"] == "1.2.3"
    assert found["hardware"] == {"qemux86-64": ["1.0"]}
    assert found["signed"] is True
    assert found["compression"] == "zstd"
    assert found["cpio"] == "newc crc"
    assert found["size"] == built.path.stat().st_size
    assert [f["name"] for f in found["files"]] == [DESCRIPTION, SIGNATURE, IMAGE]
    for f in found["files"]:
        data = (tmp_path / "x" / f["name"]).read_bytes()
        assert (f["size"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    image = found["files"][2]
    assert image["role"] == "image"
    assert image["sha256_in_description"] == [built.sha256]
    assert image["compression"] == ["zstd"]
    assert found["missing"] == []


def test_inspect_command(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(built.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.2.3"
    assert cli.main(["inspect", str(built.path)]) == 0
    text = capsys.readouterr().out
    assert "version      1.2.3" in text and "signed       yes" in text
    assert f"sha256 {built.sha256} (as in sw-description)" in text


def test_inspect_of_something_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "x.swu"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    assert cli.main(["inspect", str(other)]) == 1
    assert "not a cpio newc archive" in capsys.readouterr().err


# --- verify --------------------------------------------------------------


def test_verify_a_good_artifact(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(built.path, DEV.cert) == []
    assert cli.main(["verify", str(built.path), "--cert", str(DEV.cert)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_a_tampered_image(built: Built, tmp_path: Path) -> None:
    """The image changed after signing, the archive's checksums made right again:
    only the digest in the signed sw-description catches it."""
    folder = tmp_path / "x"
    _unpack(built.path, folder)
    image = folder / IMAGE
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))
    bad = _repack(folder, [DESCRIPTION, SIGNATURE, IMAGE], tmp_path / "bad.swu")
    problems = verify(bad, DEV.cert)
    assert problems == [
        f"{IMAGE}: sha256 is {hashlib.sha256(data).hexdigest()}, sw-description says {built.sha256}"
    ]


def test_verify_a_flipped_byte(built: Built, tmp_path: Path) -> None:
    """A byte changed in place: the cpio "crc" checksum refuses the archive first."""
    data = bytearray(built.path.read_bytes())
    data[len(data) - 200] ^= 0x01  # inside the image, before the trailer
    bad = tmp_path / "bad.swu"
    bad.write_bytes(bytes(data))
    (problem,) = verify(bad, DEV.cert)
    assert re.fullmatch(
        rf"archive: .*member '{re.escape(IMAGE)}': cpio checksum \w+ in its header, "
        r"its data sums to \w+",
        problem,
    )


def test_verify_a_tampered_description(built: Built, tmp_path: Path) -> None:
    folder = tmp_path / "x"
    _unpack(built.path, folder)
    desc = folder / DESCRIPTION
    desc.write_text(desc.read_text().replace('"1.0"', '"9.9"'))  # another hardware revision
    bad = _repack(folder, [DESCRIPTION, SIGNATURE, IMAGE], tmp_path / "bad.swu")
    (problem,) = verify(bad, DEV.cert)
    assert problem.startswith(f"signature: does not verify against {DEV.cert}: ")
    assert "verification failure" in problem


def test_verify_against_another_certificate(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, other = _key_and_cert(tmp_path, "other", eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    (problem,) = verify(built.path, other)
    assert problem.startswith(f"signature: does not verify against {other}: ")
    assert "certificate verify error (Verify error: self-signed certificate)" in problem
    assert cli.main(["verify", str(built.path), "--cert", str(other)]) == 1
    assert f"{built.path}: signature: does not verify" in capsys.readouterr().err


def test_verify_unsigned(built: Built, tmp_path: Path) -> None:
    folder = tmp_path / "x"
    _unpack(built.path, folder)
    bad = _repack(folder, [DESCRIPTION, IMAGE], tmp_path / "bad.swu")
    assert verify(bad, DEV.cert) == ["signature: unsigned (no sw-description.sig in the archive)"]
    late = _repack(folder, [DESCRIPTION, IMAGE, SIGNATURE], tmp_path / "late.swu")
    assert verify(late, DEV.cert) == [
        "signature: sw-description.sig is member 3; SWUpdate reads it right after sw-description"
    ]


def test_verify_missing_and_extra_files(built: Built, tmp_path: Path) -> None:
    folder = tmp_path / "x"
    _unpack(built.path, folder)
    (folder / "extra.sh").write_text("#!/bin/sh\n")
    bad = _repack(folder, [DESCRIPTION, SIGNATURE, "extra.sh"], tmp_path / "bad.swu")
    assert verify(bad, DEV.cert) == [
        "extra.sh: in the archive but not named by sw-description"
        " (the signature does not cover it)",
        f"{IMAGE}: named by sw-description but not in the archive",
    ]


def test_verify_a_bad_version_even_if_signed(rootfs: Path, tmp_path: Path) -> None:
    """A signed artifact whose version no device accepts (made by hand, not by build)."""
    folder = tmp_path / "x"
    folder.mkdir()
    text = TEMPLATE.read_text()
    digest = hashlib.sha256(rootfs.read_bytes()).hexdigest()
    values = {
        "TWELVEFACTOR_UPDATE_VERSION": "2.0-beta",
        "MACHINE": "qemux86-64",
        "TWELVEFACTOR_HW_REVISION": "1.0",
        "TWELVEFACTOR_ROOTFS_IMAGE": "rootfs.ext4",
    }
    (folder / DESCRIPTION).write_text(swtemplate.render(text, values, {"rootfs.ext4": digest}))
    from twelvefactor_services.artifact.cms import sign

    (folder / SIGNATURE).write_bytes(sign((folder / DESCRIPTION).read_bytes(), DEV))
    (folder / "rootfs.ext4").write_bytes(rootfs.read_bytes())
    bad = _repack(folder, [DESCRIPTION, SIGNATURE, "rootfs.ext4"], tmp_path / "bad.swu")
    assert verify(bad, DEV.cert) == [
        "sw-description: version '2.0-beta' is not numbers separated by dots; every device"
        " refuses it"
    ]


def test_verify_usage_errors(built: Built, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", str(built.path), "--cert", str(tmp_path / "none.crt")])
    assert exc.value.code == 2


# --- the command ---------------------------------------------------------


def test_the_console_script(rootfs: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "twelvefactor-artifact"
    assert script.is_file(), "pip install -e services registers twelvefactor-artifact"
    out = tmp_path / "u.swu"
    argv: list[str | Path] = [
        script,
        "build",
        rootfs,
        "--version",
        "3.1",
        "--hardware",
        "qemux86-64=1.0",
        "--key",
        DEV.key,
        "--cert",
        DEV.cert,
        "-o",
        out,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "version 3.1, hardware qemux86-64 1.0" in done.stderr
    checked = subprocess.run([script, "verify", out, "--cert", DEV.cert], capture_output=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "1.0-rc1", "--hardware", "qemux86-64=1.0"], "not numbers separated"),
        (["--version", "1.0", "--hardware", "qemux86-64"], "is not BOARD=REV"),
        (["--version", "1.0"], "--hardware"),
    ],
)
def test_build_usage_errors(
    rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = ["build", str(rootfs), *args, "--key", str(DEV.key), "--cert", str(DEV.cert)]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "-o", str(tmp_path / "u.swu")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "u.swu")
