"""One DKIM signer (``d=``/``s=``): header choice, body hashes reusable across
recipients, the ``DKIM-Signature`` layout and folding, and the message parsing helpers
(:func:`body_of`, :func:`from_domain_of`)."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from fastmta.dkim.canon import body_relaxed as _body_relaxed
from fastmta.dkim.canon import body_simple as _body_simple
from fastmta.dkim.canon import parse_headers as _parse_headers
from fastmta.dkim.canon import relaxed_header as _relaxed_header
from fastmta.dkim.canon import signed_headers as _signed_headers
from fastmta.dkim.keys import ALGORITHMS, DkimError, DkimMessageError, load_private_key

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

_LINE = 78  # folding target (RFC 5322 recommends <= 78 characters per line)
_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*$"
)
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


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
        data = _body_relaxed(body, start)
    else:
        data = _body_simple(body, start)
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
        fields, _ = _parse_headers(template.rstrip(b"\r\n") + b"\r\n\r\n")
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

