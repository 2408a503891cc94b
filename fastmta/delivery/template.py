"""Message templates: an RFC 5322 file whose headers and body use ``{{field}}``.

Rendering is header-safe by construction: a value placed in a header can never add a
header or a line.  Values holding CR, LF or another control character are refused
(``HeaderInjectionError``); non-ASCII header text becomes RFC 2047 encoded-words (display
names and unstructured text; UTF-8 addresses stay raw and need SMTPUTF8).  The body is
UTF-8: bare CR/LF in values become CRLF; a quoted-printable body gets QP-encoded values;
a value holding a multipart boundary line is refused.  Date and Message-ID are added when
the template lacks them; MIME headers are added for a non-ASCII body without them.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import os
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from fastmta.delivery.addresses import has_control
from fastmta.errors import FastMTAError

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*\}\}")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")
ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to",
     "resent-cc", "resent-sender", "disposition-notification-to", "return-receipt-to"}
)
_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|<[^>]*>|[^\s"<]+|\s+|.', re.S)
_EW_MAX_BYTES = 45  # 60 base64 chars: an encoded-word stays within 75 characters


_uid = [0, "", 0]  # pid, random process prefix, counter


def unique_id() -> str:
    """A Message-ID left part unique across processes and restarts: 64 random bits drawn
    once per process (again after a fork) + a counter; a uuid4 per message cost an
    os.urandom system call each (2.6% of a worker's samples on the campaign profile)."""
    u = _uid
    pid = os.getpid()
    if u[0] != pid:
        u[0], u[1], u[2] = pid, uuid.uuid4().hex[:16], 0
    u[2] += 1
    return f"{u[1]}.{u[2]:x}"


class TemplateError(FastMTAError):
    """The message file is not a usable RFC 5322 template."""


class HeaderInjectionError(FastMTAError):
    """A personalisation value would add a header, a line or a MIME part."""

    def __init__(self, field: str, where: str) -> None:
        super().__init__(f"field {field!r} holds a line break or control character "
                         f"and is used in {where}: refused")
        self.field = field
        self.where = where


def _split_parts(text: str) -> list[str]:
    """Literal/field alternation: even indexes literal text, odd indexes field names."""
    return PLACEHOLDER_RE.split(text)


def _chunks_utf8(text: str, limit: int) -> list[bytes]:
    out: list[bytes] = []
    cur = bytearray()
    for ch in text:
        b = ch.encode()
        if len(cur) + len(b) > limit and cur:
            out.append(bytes(cur))
            cur = bytearray()
        cur += b
    if cur:
        out.append(bytes(cur))
    return out


def encoded_words(text: str) -> str:
    """RFC 2047 B-encoded words for ``text``, folded with CRLF SP between words."""
    words = ["=?UTF-8?B?" + base64.b64encode(c).decode() + "?=" for c in _chunks_utf8(text, _EW_MAX_BYTES)]
    return "\r\n ".join(words)


def _unquote(qs: str) -> str:
    return re.sub(r"\\(.)", r"\1", qs[1:-1])


def encode_header_value(value: str, *, address: bool = False) -> tuple[str, bool]:
    """Encode non-ASCII parts of a header value.  Returns ``(value, needs_smtputf8)``.

    In address headers, ``<addr>`` and bare ``local@domain`` tokens are kept as they are
    (a UTF-8 address needs SMTPUTF8); quoted display names are unquoted and encoded."""
    if value.isascii():
        return value, False
    out: list[str] = []
    run: list[str] = []  # words (and the spaces between them) to encode together
    ws = ""
    utf8 = False

    def flush() -> None:
        if run:
            out.append(encoded_words("".join(run)))
            run.clear()

    for tok in _TOKEN_RE.findall(value):
        if tok.isspace():
            ws += tok
            continue
        plain = tok.isascii()
        if plain or (address and (tok.startswith("<") or "@" in tok)):
            # kept as is: ASCII, or a non-ASCII address (SMTPUTF8, never encoded-words)
            if not plain:
                utf8 = True
            if run:
                flush()
                out.append(ws or " ")
            else:
                out.append(ws)
            out.append(tok)
            ws = ""
            continue
        word = _unquote(tok) if tok.startswith('"') and tok.endswith('"') and len(tok) > 1 else tok
        if run:
            run.append(ws)
        else:
            out.append(ws)
        run.append(word)
        ws = ""
    flush()
    out.append(ws)
    return "".join(out), utf8


def _fold_ascii(name: str, value: str) -> str:
    """Fold an over-long ASCII header line at spaces (RFC 5322 limit 998)."""
    line = f"{name}: {value}"
    if len(line) <= 998:
        return line
    out, cur = [], ""
    for word in re.split(r"(?<=\S)(?= )", line):
        if len(cur) + len(word) > 78 and cur:
            out.append(cur)
            cur = word
        else:
            cur += word
    out.append(cur)
    return "\r\n".join(out)


class Template:
    """A parsed message template.  ``render(fields)`` gives the message bytes."""

    def __init__(self, raw: bytes) -> None:
        self.size = len(raw)
        text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        head, sep, body = text.partition(b"\n\n")
        if not sep:
            head, body = text.rstrip(b"\n"), b""
        try:
            head_s = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateError(f"message headers are not UTF-8: {exc}") from exc
        self.headers: list[tuple[str, str]] = []
        for line in head_s.split("\n"):
            if line[:1] in (" ", "\t") and self.headers:
                n, v = self.headers[-1]
                self.headers[-1] = (n, v + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            if not colon or not _HEADER_NAME_RE.fullmatch(name):
                raise TemplateError(
                    f"message file must start with RFC 5322 headers; bad header line {line[:60]!r}"
                )
            self.headers.append((name, value.strip()))
        if not self.headers:
            raise TemplateError("message file has no headers")
        self.body = body.decode("utf-8", "surrogateescape")
        self._names = {n.lower() for n, _ in self.headers}
        if "from" not in self._names:
            raise TemplateError("message has no From header (RFC 5322 requires one)")
        self._hparts = [(n, _split_parts(v), n.lower() in ADDRESS_HEADERS) for n, v in self.headers]
        # literal body text is stored with CRLF line ends once; values are normalised
        # when they hold a line break
        crlf = self.body.replace("\n", "\r\n")
        self._bparts = _split_parts(crlf)
        self._body_ascii = all(p.isascii() for p in self._bparts[0::2])
        self._has_date = self.has_header("date")
        self._has_mid = self.has_header("message-id")
        self._date_cache: tuple[int, str] = (-1, "")
        self.header_fields = {p for _, parts, _ in self._hparts for p in parts[1::2]}
        self.body_fields = set(self._bparts[1::2])
        self.fields = sorted((self.header_fields | self.body_fields) - {"email"})
        self.cte = self.header("content-transfer-encoding").lower()
        ctype = self.header("content-type")
        m = re.search(r'boundary="?([^";]+)"?', ctype, re.I)
        self.boundary = m.group(1) if m else ""
        self.smtputf8 = False
        for n, v in self.headers:
            if n.lower() in ADDRESS_HEADERS and not v.isascii():
                self.smtputf8 = self.smtputf8 or encode_header_value(
                    PLACEHOLDER_RE.sub("x", v), address=True)[1]
        _, self.from_address = email.utils.parseaddr(self.header("from"))
        self.from_domain = self.from_address.rpartition("@")[2].lower() if "@" in self.from_address else ""

    def header(self, name: str) -> str:
        low = name.lower()
        for n, v in self.headers:
            if n.lower() == low:
                return v
        return ""

    def has_header(self, name: str) -> bool:
        return name.lower() in self._names

    def check_fields(self, fields: Mapping[str, str]) -> str | None:
        """Name of a header-used field whose value would inject lines, or None."""
        for name in self.header_fields:
            v = fields.get(name)
            if v and has_control(v):
                return name
        if self.boundary:
            marker = "--" + self.boundary
            for name in self.body_fields:
                v = fields.get(name)
                if v and marker in v:
                    return name
        return None

    def render(
        self,
        fields: Mapping[str, str],
        *,
        message_id: str | None = None,
        date_s: float | None = None,
        extra_headers: list[str] | None = None,
    ) -> bytes:
        """The message for one recipient (``fields`` includes ``email``), CRLF lines."""
        out: list[str] = []
        if not self._has_date:
            sec = int(date_s if date_s else time.time())
            if self._date_cache[0] != sec:  # one formatting per second, not per message
                dt = datetime.fromtimestamp(sec, UTC)
                self._date_cache = (sec, "Date: " + email.utils.format_datetime(dt))
            out.append(self._date_cache[1])
        if not self._has_mid:
            mid = message_id or f"<{unique_id()}@{self.from_domain or 'fastmta.invalid'}>"
            out.append("Message-ID: " + mid)
        if extra_headers:  # complete header lines (List-Unsubscribe of fastmta.feedback)
            out.extend(extra_headers)
        for name, parts, is_addr in self._hparts:
            if len(parts) == 1:
                value = parts[0]
            else:
                buf = []
                for i, p in enumerate(parts):
                    if i % 2:
                        v = fields.get(p, "")
                        if has_control(v):
                            raise HeaderInjectionError(p, f"header {name}")
                        buf.append(v)
                    else:
                        buf.append(p)
                value = "".join(buf)
            if value.isascii():
                out.append(_fold_ascii(name, value))
            else:
                enc, _ = encode_header_value(value, address=is_addr)
                out.append(f"{name}: {enc}")
        body, body_ascii = self._render_body(fields)
        if not body_ascii:
            if not self.has_header("content-type"):
                out.append("MIME-Version: 1.0")
                out.append("Content-Type: text/plain; charset=utf-8")
            if not self.cte:
                out.append("Content-Transfer-Encoding: 8bit")
        head = "\r\n".join(out) + "\r\n\r\n"
        return head.encode() + body.encode("utf-8", "surrogateescape")

    def _render_body(self, fields: Mapping[str, str]) -> tuple[str, bool]:
        parts = self._bparts
        ascii_ = self._body_ascii
        if len(parts) == 1:
            body = parts[0]
        else:
            buf = []
            qp = self.cte == "quoted-printable"
            marker = "--" + self.boundary if self.boundary else None
            for i, p in enumerate(parts):
                if i % 2:
                    v = fields.get(p, "")
                    if marker and marker in v:
                        raise HeaderInjectionError(p, "the body (a MIME boundary)")
                    if qp:
                        v = binascii.b2a_qp(v.encode(), istext=True).decode()
                    if "\r" in v or "\n" in v:
                        v = v.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
                    if ascii_ and not v.isascii():
                        ascii_ = False
                    buf.append(v)
                else:
                    buf.append(p)
            body = "".join(buf)
        if body and not body.endswith("\r\n"):
            body += "\r\n"
        return body, ascii_


def render(template: Template | bytes, fields: Mapping[str, str], **kw: object) -> bytes:
    """Render ``template`` for one recipient (see ``Template.render``)."""
    t = template if isinstance(template, Template) else Template(template)
    return t.render(fields, **kw)  # type: ignore[arg-type]
