"""DKIM private keys: the error family, reading a key file safely and parsing the key
(RSA 1024-4096 bits, Ed25519) into a ``cryptography`` key object."""

from __future__ import annotations

import base64
import os
import stat

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fastmta.errors import ConfigError, FastMTAError

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

RSA_MIN_BITS = 1024
RSA_MAX_BITS = 4096
MAX_KEY_FILE_BYTES = 64 * 1024


class DkimError(FastMTAError):
    """DKIM signing failed; the message says why."""


class DkimKeyError(DkimError, ConfigError):
    """A private key (or key file) is unusable.  Never carries key material."""


class DkimMessageError(DkimError):
    """The message cannot be signed (malformed header section, no From field)."""


# ---------------------------------------------------------------------------
# Keys


def read_key_file(path: str | os.PathLike, *, allow_insecure: bool = False) -> bytes:
    """Read a private key file after checking it is private.

    Refuses (``DkimKeyError``) a file that is not a regular file, is readable or
    writable by other users, or writable by its group, unless ``allow_insecure``.
    The checks run on the opened file (``fstat``), so a swapped path cannot slip by.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DkimKeyError(f"cannot open DKIM key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DkimKeyError(f"DKIM key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        loose = mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP)
        if loose and not allow_insecure:
            who = []
            if mode & stat.S_IROTH:
                who.append("readable by other users")
            if mode & stat.S_IWOTH:
                who.append("writable by other users")
            if mode & stat.S_IWGRP:
                who.append("writable by its group")
            raise DkimKeyError(
                f"DKIM key file {path} is {' and '.join(who)} (mode {mode:04o}); "
                f"run 'chmod 600 {path}' or set [dkim] allow_insecure_key_permissions = true"
            )
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise DkimKeyError(
                f"DKIM key file {path} is {st.st_size} bytes: too large for a private key"
            )
        chunks = []
        while True:
            chunk = os.read(fd, MAX_KEY_FILE_BYTES + 1)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise DkimKeyError(f"cannot read DKIM key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def load_private_key(data: bytes | str, algorithm: str = "rsa-sha256", *, source: str = "key"):
    """Parse a private key for ``algorithm``; return the ``cryptography`` key object.

    Accepts PEM (PKCS#1 ``RSA PRIVATE KEY`` or PKCS#8 ``PRIVATE KEY``), DER, and for
    Ed25519 also dkimpy's format (the base64 32-byte seed).  Errors name ``source``
    and the problem, never the key bytes.
    """
    if algorithm not in ALGORITHMS:
        raise DkimKeyError(f"unknown DKIM algorithm {algorithm!r} (use one of {ALGORITHMS})")
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    stripped = data.strip()
    if not stripped:
        raise DkimKeyError(f"{source}: the private key is empty")
    key = None
    try:
        if stripped.startswith(b"-----BEGIN"):
            if b"PUBLIC KEY-----" in stripped.split(b"\n", 1)[0]:
                raise DkimKeyError(f"{source}: this is a public key, not a private key")
            key = serialization.load_pem_private_key(stripped, password=None)
        elif algorithm == "ed25519-sha256" and len(stripped) < 64:
            seed = base64.b64decode(stripped, validate=True)
            if len(seed) != 32:
                raise ValueError("not a 32-byte Ed25519 seed")
            key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except DkimKeyError:
        raise
    except TypeError:
        raise DkimKeyError(
            f"{source}: the private key is encrypted (passphrase-protected); "
            "store it unencrypted with mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm, base64.binascii.Error):
        raise DkimKeyError(
            f"{source}: not a valid private key (expected PEM, DER"
            + (" or a base64 Ed25519 seed" if algorithm == "ed25519-sha256" else "")
            + ")"
        ) from None
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(
                f"{source}: algorithm rsa-sha256 needs an RSA key, got {_key_kind(key)}"
            )
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise DkimKeyError(
                f"{source}: RSA key of {key.key_size} bits; DKIM needs "
                f"{RSA_MIN_BITS}-{RSA_MAX_BITS} bits (RFC 8301)"
            )
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(
            f"{source}: algorithm ed25519-sha256 needs an Ed25519 key, got {_key_kind(key)}"
        )
    return key


def _key_kind(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA-{key.key_size} key"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    return f"a {type(key).__name__.lstrip('_')}"

