"""DKIM signing (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463).

Keys are parsed once into OpenSSL key objects (the ``cryptography`` package) and kept
by the :class:`Signer`; canonicalisation runs in the compiled ``fastmta.dkim._dkim`` module
when it is built (its pure twin ``fastmta.dkim._dkim_py`` otherwise, or with
``FASTMTA_NO_EXTENSIONS=1``).

Usage::

    signer = Signer("example.com", "s2024", pem_bytes)            # rsa-sha256
    ed = Signer("example.com", "ed2024", ed_pem, algorithm="ed25519-sha256")
    headers = signer.sign(message) + ed.sign(message)              # prepend both
    wire = headers + message

For many recipients of one body: ``bh = body_hash(body)`` once, then
``signer.sign(message, body_hash=bh)`` per recipient (the body is compared, not
re-canonicalised; a different body is hashed afresh, never signed wrongly).

From configuration: ``SignerSet.from_config(cfg.dkim)`` loads every key file (with
permission checks) and offers ``signers_for(domain)``, ``has_key_for(domain)`` and
``sign_message(message, from_domain)``.

The pieces: ``keys`` (errors, key files, key parsing), ``signer`` (one :class:`Signer`,
body hashes, folding), ``signers`` (:class:`SignerSet` from configuration, ``key_check``)
and ``canon`` (compiled or pure canonicalisation: ``IMPL``, ``implementations()``).
"""

from __future__ import annotations

from fastmta.dkim.canon import IMPL
from fastmta.dkim.keys import (
    ALGORITHMS,
    DkimError,
    DkimKeyError,
    DkimMessageError,
    load_private_key,
    read_key_file,
)
from fastmta.dkim.signer import (
    DEFAULT_HEADERS,
    BodyHash,
    BodyHashCache,
    Signer,
    body_hash,
    body_of,
    from_domain_of,
)
from fastmta.dkim.signers import KeyStore, SignerSet

__all__ = [
    "ALGORITHMS",
    "DEFAULT_HEADERS",
    "IMPL",
    "BodyHash",
    "BodyHashCache",
    "DkimError",
    "DkimKeyError",
    "DkimMessageError",
    "KeyStore",
    "Signer",
    "SignerSet",
    "body_hash",
    "body_of",
    "from_domain_of",
    "load_private_key",
    "read_key_file",
]
