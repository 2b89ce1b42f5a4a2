"""DER for enrolment: the certificate request, the private key file, reading a certificate.

Only what enrolment needs, encoded and parsed by hand (the device has no
``cryptography``): a PKCS#10 request (RFC 2986) with subject CN = device id
and an ECDSA P-256 key signed with SHA-256; the key as PKCS#8 PEM (what
``cryptography`` and OpenSSL write and Python's ``ssl`` loads); and from a
certificate its subject's common name and its public key, to check that the
certificate sent back is for this device's own key.
"""

from __future__ import annotations

import base64
import binascii
import re

from twelvefactor_agent.enrol import ec

_OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_OID_P256 = "1.2.840.10045.3.1.7"
_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_OID_COMMON_NAME = "2.5.4.3"

_SEQUENCE, _SET, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID, _UTF8 = (
    0x30,
    0x31,
    0x02,
    0x03,
    0x04,
    0x06,
    0x0C,
)
_PRINTABLE = 0x13


class DerError(ValueError):
    """Bytes that are not the structure expected; the message says which part."""


# -- encoding --------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(_SEQUENCE, b"".join(parts))


def _int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    while len(raw) > 1 and raw[0] == 0 and raw[1] < 0x80:
        raw = raw[1:]
    return _tlv(_INTEGER, raw)


def _oid(dotted: str) -> bytes:
    nums = [int(x) for x in dotted.split(".")]
    out = bytearray([40 * nums[0] + nums[1]])
    for num in nums[2:]:
        chunk = [num & 0x7F]
        num >>= 7
        while num:
            chunk.append(0x80 | (num & 0x7F))
            num >>= 7
        out += bytes(reversed(chunk))
    return _tlv(_OID, bytes(out))


def _point(public: ec.Point) -> bytes:
    return b"\x04" + public[0].to_bytes(32, "big") + public[1].to_bytes(32, "big")


def public_key_info(public: ec.Point) -> bytes:
    """SubjectPublicKeyInfo of a P-256 key (DER)."""
    algorithm = _seq(_oid(_OID_EC_PUBLIC_KEY), _oid(_OID_P256))
    return _seq(algorithm, _tlv(_BIT_STRING, b"\x00" + _point(public)))


def certificate_request(private: int, common_name: str) -> bytes:
    """A PKCS#10 request (DER), subject CN = ``common_name``, signed by ``private``."""
    name = _seq(_tlv(_SET, _seq(_oid(_OID_COMMON_NAME), _tlv(_UTF8, common_name.encode()))))
    info = _seq(_int(0), name, public_key_info(ec.public_key(private)), b"\xa0\x00")
    r, s = ec.sign(private, info)
    signature = _seq(_int(r), _int(s))
    return _seq(info, _seq(_oid(_OID_ECDSA_SHA256)), _tlv(_BIT_STRING, b"\x00" + signature))


def private_key_pkcs8(private: int) -> bytes:
    """The key as PKCS#8 (DER): ECPrivateKey (RFC 5915) with its public key."""
    inner = _seq(
        _int(1),
        _tlv(_OCTET_STRING, private.to_bytes(32, "big")),
        _tlv(0xA1, _tlv(_BIT_STRING, b"\x00" + _point(ec.public_key(private)))),
    )
    algorithm = _seq(_oid(_OID_EC_PUBLIC_KEY), _oid(_OID_P256))
    return _seq(_int(0), algorithm, _tlv(_OCTET_STRING, inner))


def pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def unpem(label: str, text: str) -> bytes:
    """The DER of the one ``label`` block in ``text``."""
    found = re.findall(
        rf"-----BEGIN {label}-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END {label}-----", text
    )
    if len(found) != 1:
        raise DerError(f"expected one PEM block {label!r}, found {len(found)}")
    try:
        return base64.b64decode("".join(found[0].split()), validate=True)
    except (ValueError, binascii.Error):
        raise DerError(f"the PEM block {label!r} is not base64") from None


# -- parsing ---------------------------------------------------------------------------


def _read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, position after) of the element at ``pos``."""
    if pos + 2 > len(data):
        raise DerError("truncated element")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise DerError("element runs past its container")
    return tag, data[pos : pos + length], pos + length


def _children(content: bytes) -> list[tuple[int, bytes, bytes]]:
    """(tag, content, whole encoding) of each element in ``content``."""
    out = []
    pos = 0
    while pos < len(content):
        tag, inner, end = _read(content, pos)
        out.append((tag, inner, content[pos:end]))
        pos = end
    return out


def _oid_text(content: bytes) -> str:
    if not content:
        raise DerError("empty object identifier")
    nums = [content[0] // 40, content[0] % 40] if content[0] < 80 else [2, content[0] - 80]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            nums.append(value)
            value = 0
    return ".".join(map(str, nums))


def _common_name(name: bytes) -> str:
    found = []
    for tag, rdn, _ in _children(name):
        if tag != _SET:
            raise DerError("a name's part is not a SET")
        for _, attribute, _ in _children(rdn):
            parts = _children(attribute)
            if (
                len(parts) == 2
                and parts[0][0] == _OID
                and _oid_text(parts[0][1]) == _OID_COMMON_NAME
                and parts[1][0] in (_UTF8, _PRINTABLE)
            ):
                found.append(parts[1][1].decode("utf-8", "strict"))
    if len(found) != 1:
        raise DerError(f"expected one common name, found {len(found)}")
    return found[0]


def certificate_subject_and_key(cert: bytes) -> tuple[str, bytes]:
    """A certificate's subject common name and its SubjectPublicKeyInfo (DER)."""
    try:
        tag, body, end = _read(cert)
        if tag != _SEQUENCE or end != len(cert):
            raise DerError("not one SEQUENCE")
        parts = _children(body)
        if len(parts) != 3 or parts[0][0] != _SEQUENCE:
            raise DerError("not a certificate (tbs, algorithm, signature)")
        tbs = _children(parts[0][1])
        if tbs and tbs[0][0] == 0xA0:  # explicit version
            tbs = tbs[1:]
        # serial, signature algorithm, issuer, validity, subject, subject public key info
        if len(tbs) < 6 or tbs[4][0] != _SEQUENCE or tbs[5][0] != _SEQUENCE:
            raise DerError("the certificate lacks a subject or a public key")
        return _common_name(tbs[4][1]), tbs[5][2]
    except UnicodeDecodeError:
        raise DerError("the common name is not UTF-8") from None


def private_key_from_pkcs8(der: bytes) -> int:
    """The scalar of a P-256 PKCS#8 key (what ``private_key_pkcs8`` writes)."""
    tag, body, _ = _read(der)
    parts = _children(body) if tag == _SEQUENCE else []
    if len(parts) < 3 or parts[2][0] != _OCTET_STRING:
        raise DerError("not a PKCS#8 private key")
    algorithm = [_oid_text(c) for t, c, _ in _children(parts[1][1]) if t == _OID]
    if algorithm != [_OID_EC_PUBLIC_KEY, _OID_P256]:
        raise DerError(f"not a P-256 key: {algorithm}")
    tag, inner, _ = _read(parts[2][1])
    fields = _children(inner) if tag == _SEQUENCE else []
    if len(fields) < 2 or fields[1][0] != _OCTET_STRING or len(fields[1][1]) != 32:
        raise DerError("not an EC private key")
    value = int.from_bytes(fields[1][1], "big")
    if not 0 < value < ec.N:
        raise DerError("the private scalar is out of range")
    return value
