"""Helpers for the DKIM tests: session keys, dkimpy as the verifier, tag parsing.

Verification never touches DNS: ``verify`` hands dkimpy a ``dnsfunc`` that answers
the selector's TXT record from the signer's own public key.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

import dkim as dkimpy
from fastmta import dkim


def rsa_pem(bits: int) -> bytes:
    key = rsa.generate_private_key(65537, bits)
    return key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )


class Keys:
    """Lazily generated test keys, one per kind, for the whole session."""

    def __init__(self):
        self._cache: dict[str, bytes] = {}

    def rsa(self, bits: int = 2048) -> bytes:
        name = f"rsa{bits}"
        if name not in self._cache:
            self._cache[name] = rsa_pem(bits)
        return self._cache[name]

    def ed25519_key(self) -> ed25519.Ed25519PrivateKey:
        if "ed" not in self._cache:
            k = ed25519.Ed25519PrivateKey.generate()
            self._cache["ed"] = k.private_bytes(
                ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption()
            )
        return ed25519.Ed25519PrivateKey.from_private_bytes(self._cache["ed"])

    def ed25519(self) -> bytes:
        return self.ed25519_key().private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
        )

    def ed25519_seed_b64(self) -> bytes:
        """dkimpy's private key format for Ed25519."""
        raw = self.ed25519_key().private_bytes(
            ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption()
        )
        return base64.b64encode(raw)

    def pem(self, algorithm: str, bits: int = 2048) -> bytes:
        return self.rsa(bits) if algorithm == "rsa-sha256" else self.ed25519()


KEYS = Keys()


def dnsfunc_for(*signers: dkim.Signer):
    """A dkimpy dnsfunc serving the public keys of ``signers`` (no DNS involved)."""
    records = {f"{s.dns_name}.".encode(): s.dns_record().encode() for s in signers}

    def dnsfunc(name, timeout=5):
        return records.get(name)

    return dnsfunc


def verify(message: bytes, *signers: dkim.Signer, idx: int = 0) -> bool:
    """dkimpy's verdict on signature number ``idx`` (0 = topmost) of ``message``."""
    d = dkimpy.DKIM(message, minkey=1024)
    try:
        return bool(d.verify(idx=idx, dnsfunc=dnsfunc_for(*signers)))
    except dkimpy.ValidationError:  # e.g. "body hash mismatch": a failed verification
        return False
    except dkimpy.DKIMException as exc:  # malformed signature: say why
        raise AssertionError(f"dkimpy rejected the signature: {exc}") from exc


def tags(header: bytes) -> dict[bytes, bytes]:
    """The tag=value pairs of a DKIM-Signature header field (whitespace removed)."""
    value = header.split(b":", 1)[1]
    out = {}
    for part in value.split(b";"):
        if part.strip():
            k, _, v = part.partition(b"=")
            out[k.strip()] = b"".join(v.split())
    return out
