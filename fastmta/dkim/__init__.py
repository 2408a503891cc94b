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
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from fastmta._select import implementations as _implementations
from fastmta._select import select
from fastmta.dkim import _dkim_py
from fastmta.errors import ConfigError, FastMTAError

if TYPE_CHECKING:  # pragma: no cover
    from fastmta.config import DkimConfig

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

# ---------------------------------------------------------------------------
# Implementation choice (compiled or pure), like fastmta.core.
_impl, IMPL, IMPORT_ERROR = select("dkim._dkim", _dkim_py)
_parse_headers = _impl.parse_headers
_relaxed_header = _impl.relaxed_header
_signed_headers = _impl.signed_headers


def implementations() -> dict:
    """Every importable canonicalisation implementation by name (tests, benchmarks)."""
    return _implementations("dkim._dkim", _dkim_py)


# ---------------------------------------------------------------------------
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
CANONICALIZATIONS = ("relaxed", "simple")

#: Signed when present (each occurrence).  From is always signed.
DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Reply-To",
    "Cc",
    "In-Reply-To",
    "References",
    "Feedback-ID",
)

#: Header fields that change or disappear in transit: signing them breaks signatures.
FORBIDDEN_HEADERS = frozenset({"dkim-signature", "return-path", "received", "bcc"})

RSA_MIN_BITS = 1024
RSA_MAX_BITS = 4096
MAX_KEY_FILE_BYTES = 64 * 1024
_LINE = 78  # folding target (RFC 5322 recommends <= 78 characters per line)
_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*$"
)
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


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


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise DkimError(f"invalid domain {domain!r}") from None
    return domain


# ---------------------------------------------------------------------------
# Body hashes


class BodyHash:
    """Body hashes of one message body, reusable across recipients and signers.

    ``get(canon)`` returns the base64 SHA-256 of the body under ``"relaxed"`` or
    ``"simple"`` body canonicalisation, computed once per canonicalisation.
    """

    __slots__ = ("body", "_bh")

    def __init__(self, body: bytes):
        self.body = bytes(body)
        self._bh: dict[str, bytes] = {}

    def get(self, canon: str) -> bytes:
        bh = self._bh.get(canon)
        if bh is None:
            bh = _compute_bh(self.body, canon)
            self._bh[canon] = bh
        return bh

    def matches(self, message: bytes, body_offset: int) -> bool:
        """Is ``message[body_offset:]`` exactly this body (memcmp, no copy)?"""
        return len(message) - body_offset == len(self.body) and message.endswith(self.body)


def _compute_bh(body: bytes, canon: str, start: int = 0) -> bytes:
    if canon == "relaxed":
        data = _impl.body_relaxed(body, start)
    else:
        data = _impl.body_simple(body, start)
    return base64.b64encode(hashlib.sha256(data).digest())


def body_hash(body: bytes) -> BodyHash:
    """Precompute-once body hashes for a body shared by many recipients."""
    return BodyHash(body)


class BodyHashCache:
    """A bounded LRU of :class:`BodyHash` by key (e.g. the delivery id) for a worker.

    ``get(key, body)`` returns the cached entry when it holds exactly ``body``, else a
    new one (replacing it).  At most ``maxsize`` bodies are kept, so a long-running
    worker's memory stays bounded whatever the number of deliveries.
    """

    __slots__ = ("maxsize", "_entries")

    def __init__(self, maxsize: int = 64):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._entries: dict[object, BodyHash] = {}

    def get(self, key: object, body: bytes) -> BodyHash:
        entries = self._entries
        bh = entries.pop(key, None)
        if bh is None or not (bh.body is body or bh.body == body):
            bh = BodyHash(body)
        entries[key] = bh  # most recently used last
        if len(entries) > self.maxsize:
            del entries[next(iter(entries))]
        return bh

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------
# Parsed message (shared by chained signers)


class _Message:
    __slots__ = ("data", "fields", "body_offset", "has_from", "_bh")

    def __init__(self, data: bytes):
        self.data = data
        try:
            self.fields, self.body_offset = _parse_headers(data)
        except ValueError as exc:
            raise DkimMessageError(f"cannot sign: {exc}") from None
        self.has_from = any(name == b"from" for name, _raw in self.fields)
        self._bh: dict[str, bytes] = {}

    def bh(self, canon: str, precomputed: BodyHash | None) -> bytes:
        v = self._bh.get(canon)
        if v is None:
            if precomputed is not None and precomputed.matches(self.data, self.body_offset):
                v = precomputed.get(canon)
            else:
                v = _compute_bh(self.data, canon, self.body_offset)
            self._bh[canon] = v
        return v


def _parse_or_raise(message: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    try:
        return _parse_headers(message)
    except ValueError as exc:
        raise DkimMessageError(f"cannot sign: {exc}") from None


def body_of(message: bytes) -> bytes:
    """The body of ``message`` (after the blank line): what :func:`body_hash` takes."""
    return message[_parse_or_raise(message)[1] :]


def from_domain_of(message: bytes) -> str | None:
    """The domain of the (last) From: address of ``message``, lowercased, or None."""
    return _from_domain(_parse_or_raise(message)[0])


def _from_domain(fields: list[tuple[bytes, bytes]]) -> str | None:
    for name, raw in reversed(fields):
        if name == b"from":
            value = raw.split(b":", 1)[1].decode("utf-8", "replace")
            m = re.search(r"@([^\s<>@;,()\"]+)>?\s*(?:\(.*\))?\s*$", value.replace("\r\n", ""))
            if m is None:
                m = re.search(r"@([^\s<>@;,()\"]+)", value)
            return m.group(1).rstrip(".").lower() if m else None
    return None


# ---------------------------------------------------------------------------
# Signer

_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class Signer:
    """Signs messages for one signing domain (``d=``) and selector (``s=``).

    ``private_key_pem``: the key (PEM/DER bytes or str; Ed25519 also as dkimpy's base64
    seed), parsed once.  ``headers``: header names to sign when present (default
    :data:`DEFAULT_HEADERS`; From is always signed); every occurrence is signed.
    ``oversign_from`` (default True) lists From once more than it occurs, so no From
    can be added without breaking the signature; ``oversign`` does the same for other
    names.  ``canonicalization``: ``"header/body"`` from relaxed|simple.
    ``expiration_s``: add ``x=`` that many seconds after ``t=``.  ``identity``: ``i=``.
    ``clock``: returns the time for ``t=`` (tests inject a fixed one).  ``l=`` is never
    emitted.
    """

    __slots__ = (
        "domain",
        "selector",
        "algorithm",
        "canonicalization",
        "header_names",
        "oversign",
        "expiration_s",
        "identity",
        "clock",
        "_key",
        "_is_rsa",
        "_hrelaxed",
        "_bcanon",
        "_lnames",
        "_prefix",
    )

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key_pem: bytes | str,
        algorithm: str = "rsa-sha256",
        headers: Sequence[str] | None = None,
        canonicalization: str = "relaxed/relaxed",
        oversign_from: bool = True,
        oversign: Iterable[str] = (),
        *,
        identity: str | None = None,
        expiration_s: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        domain = _ascii_domain(domain)
        if not _DOMAIN.fullmatch(domain):
            raise DkimError(f"invalid signing domain {domain!r}")
        if not _SELECTOR.fullmatch(selector):
            raise DkimError(f"invalid selector {selector!r}")
        if algorithm not in ALGORITHMS:
            raise DkimError(f"unknown DKIM algorithm {algorithm!r} (use one of {ALGORITHMS})")
        parts = canonicalization.lower().split("/")
        if len(parts) == 1:
            parts.append("simple")
        if len(parts) != 2 or any(p not in CANONICALIZATIONS for p in parts):
            raise DkimError(
                f"invalid canonicalization {canonicalization!r} "
                "(use relaxed/relaxed, relaxed/simple, simple/relaxed or simple/simple)"
            )
        names = list(DEFAULT_HEADERS if headers is None else headers)
        lnames: list[str] = ["from"]
        for h in names:
            if not isinstance(h, str) or not _HEADER_NAME.fullmatch(h):
                raise DkimError(f"invalid header name {h!r} in the signed header list")
            if h.lower() in FORBIDDEN_HEADERS:
                raise DkimError(f"the {h} header field must not be signed (it changes in transit)")
            if h.lower() not in lnames:
                lnames.append(h.lower())
        over = {o.lower() for o in oversign}
        if oversign_from:
            over.add("from")
        for o in over:
            if not _HEADER_NAME.fullmatch(o) or o in FORBIDDEN_HEADERS:
                raise DkimError(f"invalid header name {o!r} to oversign")
            if o not in lnames:
                lnames.append(o)
        if identity is not None:
            local, at, idom = identity.rpartition("@")
            if not local.isascii() or not all(c.isprintable() and c not in " ;" for c in local):
                raise DkimError(f"identity {identity!r}: invalid local part")
            idom = _ascii_domain(idom)
            if not at or not (idom == domain or idom.endswith("." + domain)):
                raise DkimError(f"identity {identity!r} must be @{domain} or a subdomain of it")
            identity = f"{local}@{idom}"
        if expiration_s is not None and expiration_s <= 0:
            raise DkimError("expiration_s must be positive")

        self.domain = domain
        self.selector = selector
        self.algorithm = algorithm
        self.canonicalization = "/".join(parts)
        self.header_names = tuple(lnames)
        self.oversign = frozenset(over)
        self.expiration_s = expiration_s
        self.identity = identity
        self.clock = clock
        self._key = load_private_key(
            private_key_pem, algorithm, source=f"DKIM key for {selector}._domainkey.{domain}"
        )
        self._is_rsa = algorithm == "rsa-sha256"
        self._hrelaxed = parts[0] == "relaxed"
        self._bcanon = parts[1]
        self._lnames = tuple((n.encode("ascii"), n in over) for n in lnames)
        prefix = [f"v=1; a={algorithm};", f"c={self.canonicalization};", f"d={domain};"]
        prefix.append(f"s={selector};")
        if identity is not None:
            prefix.append(f"i={identity};")
        self._prefix = _fold_prefix([t.encode("ascii") for t in " ".join(prefix).split(" ")])

    # -- public helpers -------------------------------------------------------
    @property
    def key_bits(self) -> int:
        return self._key.key_size if self._is_rsa else 256

    @property
    def dns_name(self) -> str:
        """The TXT record name of the public key: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record value publishing the public key (``v=DKIM1; k=...; p=...``)."""
        pub = self._key.public_key()
        if self._is_rsa:
            der = pub.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"

    def dns_zone_line(self) -> str:
        """The record as a zone-file line: TXT strings are at most 255 bytes each
        (RFC 1035), so an RSA key's record is split into several quoted strings."""
        record = self.dns_record()
        chunks = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
        return f"{self.dns_name}. IN TXT ( {chunks} )"

    def body_hash(self, body: bytes) -> BodyHash:
        """A :class:`BodyHash` for ``body`` with this signer's hash computed now."""
        bh = BodyHash(body)
        bh.get(self._bcanon)
        return bh

    def __repr__(self) -> str:  # never shows key material
        return (
            f"Signer(domain={self.domain!r}, selector={self.selector!r}, "
            f"algorithm={self.algorithm!r}, bits={self.key_bits})"
        )

    # -- signing --------------------------------------------------------------
    def sign(
        self,
        message: bytes,
        *,
        body_hash: BodyHash | None = None,
        timestamp: int | None = None,
    ) -> bytes:
        """Return the ``DKIM-Signature:`` header field (folded, CRLF-terminated).

        ``message``: the whole message (header section, blank line, body) as it will
        be transmitted.  ``body_hash``: from :func:`body_hash` for a body shared by
        many messages.  ``timestamp``: ``t=`` (default: ``clock()``).
        """
        return self._sign(_Message(message), body_hash, timestamp)

    def _sign(self, msg: _Message, precomputed: BodyHash | None, timestamp: int | None) -> bytes:
        if not msg.has_from:
            raise DkimMessageError("cannot sign: the message has no From header field")
        relaxed = self._hrelaxed
        hnames, headers_data = _signed_headers(msg.fields, self._lnames, relaxed)
        bh = msg.bh(self._bcanon, precomputed)
        t = int(self.clock()) if timestamp is None else int(timestamp)
        tags = [b"t=%d;" % t]
        if self.expiration_s is not None:
            tags.append(b"x=%d;" % (t + self.expiration_s))
        header = _fold_template(self._prefix, tags, hnames, bh)
        if relaxed:
            data = headers_data + _relaxed_header(header)[:-2]
        else:
            data = headers_data + header
        if self._is_rsa:
            sig = self._key.sign(data, _PKCS1, _SHA256)
        else:
            sig = self._key.sign(hashlib.sha256(data).digest())
        return header + _fold_b64(base64.b64encode(sig)) + b"\r\n"

    def signature_for_template(self, message: bytes, template: bytes) -> bytes:
        """Sign ``message`` under a given ``DKIM-Signature`` field with an empty ``b=``.

        ``template`` is the whole header field up to and including ``b=`` (as another
        signer laid it out); returns the base64 ``b=`` value.  Used to compare with
        other implementations byte for byte; the tags in ``template`` decide which
        headers are signed and how.
        """
        msg = _Message(message)
        fields, _ = _impl.parse_headers(template.rstrip(b"\r\n") + b"\r\n\r\n")
        raw = fields[0][1]
        value = raw.split(b":", 1)[1].replace(b"\r\n", b"")
        tags = dict(
            (k.strip(), v.strip())
            for k, _, v in (t.partition(b"=") for t in value.split(b";") if t.strip())
        )
        relaxed = tags.get(b"c", b"simple/simple").split(b"/")[0] == b"relaxed"
        lnames = [n.strip().lower() for n in re.split(rb"\s*:\s*", tags[b"h"])]
        # h= lists a name once per instance, bottom-up; instances past the last are
        # empty (oversigning).
        positions: dict[bytes, list[int]] = {}
        for i, (name, _raw) in enumerate(msg.fields):
            positions.setdefault(name, []).append(i)
        signed: list[bytes] = []
        for lname in lnames:
            pos = positions.get(lname)
            if pos:
                raw = msg.fields[pos.pop()][1]
                signed.append(_relaxed_header(raw) if relaxed else raw)
        head = template.rstrip(b"\r\n")
        signed.append(_relaxed_header(head + b"\r\n")[:-2] if relaxed else head)
        data = b"".join(signed)
        if self._is_rsa:
            sig = self._key.sign(data, _PKCS1, _SHA256)
        else:
            sig = self._key.sign(hashlib.sha256(data).digest())
        return base64.b64encode(sig)


def _fold_tokens(lines: list[bytes], line: bytes, tokens: Iterable[bytes]) -> bytes:
    """Append ``tokens`` separated by a space, starting a new line (appended to
    ``lines``) before a token that would pass the line length; return the last line."""
    for tok in tokens:
        if len(line) + 1 + len(tok) > _LINE and line.strip():
            lines.append(line)
            line = b" " + tok
        else:
            line += b" " + tok
    return line


def _fold_prefix(tokens: list[bytes]) -> tuple[tuple[bytes, ...], bytes]:
    """Fold the constant leading tags once per signer: (full lines, open last line)."""
    lines: list[bytes] = []
    line = _fold_tokens(lines, b"DKIM-Signature:", tokens)
    return tuple(lines), line


def _fold_template(
    prefix: tuple[tuple[bytes, ...], bytes], tags: list[bytes], hnames: list[bytes], bh: bytes
) -> bytes:
    """Lay out ``DKIM-Signature: <tags>; h=...; bh=...;`` + CRLF + `` b=`` (folded).

    Folds only where whitespace is allowed (between tags, after ``:`` in ``h=``), and
    always puts ``b=`` on a line of its own, last.
    """
    lines = list(prefix[0])
    line = _fold_tokens(lines, prefix[1], tags)
    h = b"h=" + b":".join(hnames) + b";"
    if len(line) + 1 + len(h) <= _LINE:
        line += b" " + h
    else:
        lines.append(line)
        line = b" h="
        last = len(hnames) - 1
        for i, name in enumerate(hnames):
            piece = name + (b";" if i == last else b":")
            if len(line) + len(piece) > _LINE and line != b" h=":
                lines.append(line)
                line = b" " + piece
            else:
                line += piece
    line = _fold_tokens(lines, line, (b"bh=" + bh + b";",))
    lines.append(line)
    lines.append(b" b=")
    return b"\r\n".join(lines)


def _fold_b64(sig: bytes) -> bytes:
    """Fold the base64 ``b=`` value: the first chunk continues the `` b=`` line."""
    first = _LINE - 3
    out = [sig[:first]]
    for i in range(first, len(sig), _LINE - 1):
        out.append(b"\r\n " + sig[i : i + _LINE - 1])
    return b"".join(out)


# ---------------------------------------------------------------------------
# Signer sets (from configuration)


class SignerSet:
    """The signers of a configuration, by From domain.

    ``signers_for(from_domain)``: exact domain first; otherwise the closest parent
    domain whose keys have ``subdomains = true``.  All keys of the chosen domain sign
    (e.g. RSA and Ed25519), in configuration order.
    """

    def __init__(self, entries: Iterable[tuple[Signer, bool]] = ()):
        self._by_domain: dict[str, list[Signer]] = {}
        self._subdomains: dict[str, list[Signer]] = {}
        self._keys: dict[tuple[str, str], Signer] = {}
        for signer, subdomains in entries:
            self.add(signer, subdomains=subdomains)

    def add(self, signer: Signer, *, subdomains: bool = False) -> None:
        key = (signer.domain, signer.selector)
        if key in self._keys:
            raise DkimError(f"two keys for selector {signer.selector} of {signer.domain}")
        self._keys[key] = signer
        self._by_domain.setdefault(signer.domain, []).append(signer)
        if subdomains:
            self._subdomains.setdefault(signer.domain, []).append(signer)

    @classmethod
    def from_config(cls, cfg: DkimConfig, base_dir: str | os.PathLike | None = None) -> SignerSet:
        """Load every key of a ``[dkim]`` section (keys read and parsed once).

        A relative ``key_file`` is taken relative to ``base_dir`` (the directory of
        the configuration file) when given, else to the working directory.
        """
        out = cls()
        if not cfg.enabled:
            return out
        for entry in cfg.keys:
            path = entry.key_file
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            pem = read_key_file(path, allow_insecure=cfg.allow_insecure_key_permissions)
            base = entry.headers if entry.headers is not None else cfg.headers or DEFAULT_HEADERS
            headers = [*base, *cfg.extra_headers]
            try:
                signer = Signer(
                    entry.domain,
                    entry.selector,
                    pem,
                    algorithm=entry.algorithm,
                    headers=headers,
                    canonicalization=entry.canonicalization or cfg.canonicalization,
                    oversign_from=cfg.oversign_from,
                    oversign=cfg.oversign_headers,
                    identity=entry.identity,
                    expiration_s=cfg.expiration_s or None,
                )
            except DkimKeyError as exc:
                raise DkimKeyError(f"{path}: {exc}") from None
            except DkimError as exc:
                raise ConfigError(f"[dkim] key {entry.selector}/{entry.domain}: {exc}") from None
            out.add(signer, subdomains=entry.subdomains)
        return out

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Signer]:
        """Every signer, in configuration order."""
        return iter(self._keys.values())

    def get(self, domain: str, selector: str) -> Signer | None:
        """The signer cached for (domain, selector)."""
        return self._keys.get((_ascii_domain(domain), selector))

    def signers_for(self, from_domain: str) -> tuple[Signer, ...]:
        """The signers to use for mail from ``from_domain`` (empty: no key)."""
        d = _ascii_domain(from_domain)
        exact = self._by_domain.get(d)
        if exact:
            return tuple(exact)
        while "." in d:
            d = d.split(".", 1)[1]
            sub = self._subdomains.get(d)
            if sub:
                return tuple(sub)
        return ()

    def has_key_for(self, domain: str) -> bool:
        """Would mail from ``domain`` be signed?  (Delivery analysis warns if not.)"""
        return bool(self.signers_for(domain))

    def missing_key_warning(self, from_domain: str) -> str | None:
        """The delivery analysis' warning for a From domain without a key (else None)."""
        if self.has_key_for(from_domain):
            return None
        return (
            f"no DKIM key for the From domain {from_domain}: messages will be sent "
            "unsigned and fail DMARC at receivers that enforce it; add a [[dkim.keys]] "
            "entry for it (or for a parent domain with subdomains = true)"
        )

    def sign_message(
        self,
        message: bytes,
        from_domain: str | None = None,
        *,
        body_hash: BodyHash | None = None,
        timestamp: int | None = None,
    ) -> bytes:
        """The ``DKIM-Signature`` fields to prepend (b"" when no key applies).

        ``from_domain`` defaults to the domain of the message's From address.  The
        message is parsed once for all signers of the domain.
        """
        msg = None
        if from_domain is None:
            msg = _Message(message)  # parsed once for the From domain and the signers
            from_domain = _from_domain(msg.fields)
            if from_domain is None:
                raise DkimMessageError("cannot sign: no From address in the message")
        signers = self.signers_for(from_domain)
        if not signers:
            return b""
        if msg is None:
            msg = _Message(message)
        return b"".join(s._sign(msg, body_hash, timestamp) for s in signers)


#: Alias: the configured keys, as the engine sees them.
KeyStore = SignerSet


def key_check(cfg: DkimConfig):
    """``has_key_for(domain)`` of the configured keys, for the delivery analysis (which
    warns when the From domain has no key).  Loading the keys here also reports a bad
    or unsafe key file before anything is sent."""
    return SignerSet.from_config(cfg).has_key_for
