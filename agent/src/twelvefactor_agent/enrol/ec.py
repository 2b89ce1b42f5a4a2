"""P-256 ECDSA (keys and signatures) and X25519 (WireGuard keys), standard library only.

The device makes two keys once, when it is enrolled: its TLS key (P-256, the
curve of every certificate here) and its WireGuard key (Curve25519), and
signs one certificate request. The layer's image has neither the
``cryptography`` package nor an ``openssl`` command, so the arithmetic is
here, on Python integers: FIPS 186-4 / SEC 1 for P-256, RFC 6979 for the
signature's nonce (deterministic: a weak random source at first boot cannot
leak the key through the nonce), RFC 7748 for X25519.

Python's integers are not constant-time. That matters where an attacker can
time many operations with one key; here the key is made and used for one
signature at enrolment, then only OpenSSL (the ``ssl`` module) and the
kernel (WireGuard) use the keys. Both are checked against ``cryptography``
in tests/unit/test_agent_enrol.py.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

# P-256 (secp256r1): y^2 = x^3 - 3x + b over GF(p), base point G of prime order N.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)

Point = tuple[int, int]
_Jacobian = tuple[int, int, int]  # (X, Y, Z): x = X/Z^2, y = Y/Z^3; Z = 0 is infinity
_INFINITY: _Jacobian = (1, 1, 0)


class EcError(ValueError):
    """A key or point that is not what it claims to be."""


def on_curve(point: Point) -> bool:
    x, y = point
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x - 3 * x + B)) % P == 0


def _double(p: _Jacobian) -> _Jacobian:
    x, y, z = p
    if z == 0 or y == 0:
        return _INFINITY
    # dbl-2001-b (a = -3)
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) ** 2 - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return x3, y3, z3


def _add(p: _Jacobian, q: _Jacobian) -> _Jacobian:
    x1, y1, z1 = p
    x2, y2, z2 = q
    if z1 == 0:
        return q
    if z2 == 0:
        return p
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    u2 = x2 * z1z1 % P
    s1 = y1 * z2 * z2z2 % P
    s2 = y2 * z1 * z1z1 % P
    if u1 == u2:
        return _double(p) if s1 == s2 else _INFINITY
    h = (u2 - u1) % P
    r = (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    z3 = z1 * z2 * h % P
    return x3, y3, z3


def _affine(p: _Jacobian) -> Point:
    x, y, z = p
    if z == 0:
        raise EcError("the point at infinity has no coordinates")
    zinv = pow(z, -1, P)
    zinv2 = zinv * zinv % P
    return x * zinv2 % P, y * zinv2 * zinv % P


def multiply(k: int, point: Point = G) -> Point:
    """k * point (a Montgomery ladder: the same steps for every bit of k)."""
    if not 0 < k < N:
        raise EcError("scalar out of range")
    r0, r1 = _INFINITY, (point[0], point[1], 1)
    for i in reversed(range(N.bit_length())):
        if (k >> i) & 1:
            r0, r1 = _add(r0, r1), _double(r1)
        else:
            r0, r1 = _double(r0), _add(r0, r1)
    return _affine(r0)


def new_private_key() -> int:
    """A P-256 private scalar from the kernel's random source (getrandom)."""
    return 1 + secrets.randbelow(N - 1)


def public_key(private: int) -> Point:
    return multiply(private)


def _nonce(private: int, digest: bytes) -> int:
    """RFC 6979 section 3.2 with HMAC-SHA-256 (qlen = hlen = 256)."""
    x = private.to_bytes(32, "big")
    h = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = hmac.new(k, v + b"\x00" + x + h, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    k = hmac.new(k, v + b"\x01" + x + h, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    while True:
        v = hmac.new(k, v, hashlib.sha256).digest()
        candidate = int.from_bytes(v, "big")
        if 0 < candidate < N:
            return candidate
        k = hmac.new(k, v + b"\x00", hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()


def sign(private: int, message: bytes) -> tuple[int, int]:
    """ECDSA with SHA-256: (r, s)."""
    digest = hashlib.sha256(message).digest()
    e = int.from_bytes(digest, "big")
    k = _nonce(private, digest)
    while True:
        r = multiply(k)[0] % N
        s = pow(k, -1, N) * (e + r * private) % N
        if r and s:
            return r, s
        k = _nonce(private, hashlib.sha256(digest + k.to_bytes(32, "big")).digest())


def verify(public: Point, message: bytes, signature: tuple[int, int]) -> bool:
    r, s = signature
    if not (0 < r < N and 0 < s < N) or not on_curve(public):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, N)
    u1, u2 = e * w % N, r * w % N
    total = _INFINITY
    for scalar, point in ((u1, G), (u2, public)):
        if scalar:
            m = multiply(scalar, point)
            total = _add(total, (m[0], m[1], 1))
    if total[2] == 0:
        return False
    return _affine(total)[0] % N == r


# -- X25519 (RFC 7748) ----------------------------------------------------------------

_P25519 = 2**255 - 19
_A24 = 121665


def _clamp(scalar: bytes) -> int:
    if len(scalar) != 32:
        raise EcError(f"an X25519 key is 32 bytes, got {len(scalar)}")
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def x25519(scalar: bytes, u: bytes) -> bytes:
    k = _clamp(scalar)
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = x2 + z2, x2 - z2
        aa, bb = a * a % _P25519, b * b % _P25519
        e = aa - bb
        c, d = x3 + z3, x3 - z3
        da, cb = d * a % _P25519, c * b % _P25519
        x3 = (da + cb) ** 2 % _P25519
        z3 = x1 * (da - cb) ** 2 % _P25519
        x2 = aa * bb % _P25519
        z2 = e * (aa + _A24 * e) % _P25519
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P25519 - 2, _P25519) % _P25519).to_bytes(32, "little")


def new_wireguard_key() -> bytes:
    """A WireGuard private key, clamped as `wg genkey` writes it."""
    return _clamp(secrets.token_bytes(32)).to_bytes(32, "little")


def wireguard_public(private: bytes) -> bytes:
    return x25519(private, (9).to_bytes(32, "little"))
