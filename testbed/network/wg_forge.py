"""A WireGuard handshake initiation built by hand, with any TAI64N time stamp.

What a device whose clock is years ahead sends: the Noise IKpsk2 first
message of the WireGuard paper (section 5.4.2) from the device's own static
key, so the hub accepts it and remembers its time stamp. wireguard-go takes
its time stamps from Go's clock, which libfaketime cannot move, hence this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
TAI64_BASE = 0x400000000000000A  # TAI64 label of 1970-01-01 00:00:10 TAI (wireguard-go's base)
INITIATION, RESPONSE = 1, 2


def _hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = _hmac(key, data)
    t1 = _hmac(t0, b"\x01")
    return t1, _hmac(t0, t1 + b"\x02")


def _aead(key: bytes, plain: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\0" * 12, plain, ad)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def tai64n(unix_seconds: float) -> bytes:
    return struct.pack(">QI", TAI64_BASE + int(unix_seconds), 0)


def initiation(
    private_key_b64: str, peer_public_b64: str, *, when: float | None = None
) -> tuple[int, bytes]:
    """(sender index, the 148-byte message) from our static key to the peer's."""
    s_priv = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64))
    s_pub = _raw(s_priv.public_key())
    r_pub_raw = base64.b64decode(peer_public_b64)
    r_pub = X25519PublicKey.from_public_bytes(r_pub_raw)
    c = _hash(CONSTRUCTION)
    h = _hash(_hash(c, IDENTIFIER), r_pub_raw)
    e_priv = X25519PrivateKey.generate()
    e_pub = _raw(e_priv.public_key())
    c = _hmac(_hmac(c, e_pub), b"\x01")  # KDF1
    h = _hash(h, e_pub)
    c, k = _kdf2(c, e_priv.exchange(r_pub))
    static = _aead(k, s_pub, h)
    h = _hash(h, static)
    c, k = _kdf2(c, s_priv.exchange(r_pub))
    stamp = _aead(k, tai64n(time.time() if when is None else when), h)
    sender = int.from_bytes(os.urandom(4), "little")
    body = struct.pack("<B3xI", INITIATION, sender) + e_pub + static + stamp
    mac1 = hashlib.blake2s(body, key=_hash(LABEL_MAC1, r_pub_raw), digest_size=16).digest()
    return sender, body + mac1 + b"\0" * 16


def answers(message: bytes, sender: int) -> bool:
    """Is `message` a handshake response to our initiation `sender`?"""
    return (
        len(message) == 92
        and message[0] == RESPONSE
        and struct.unpack_from("<I", message, 8)[0] == sender
    )
