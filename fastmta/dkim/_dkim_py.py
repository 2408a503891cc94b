"""Pure-Python reference of the DKIM canonicalisation core (``fastmta.dkim._dkim``).

This module is the specification: ``_dkim.pyx`` exports the same names with the same
results, and the tests run both on the same inputs.

Line endings: a message is signed as it will be transmitted, with CRLF line endings.  A
bare LF counts as CRLF (the transport normalises it), so ``a\\nb`` and ``a\\r\\nb`` give
the same canonical form.  A body that does not end with a line break is canonicalised
as if it did (SMTP's DATA always ends the content with CRLF before the dot).  A bare CR
is kept as an ordinary character, as dkimpy does.

Functions
---------
``parse_headers(message) -> (fields, body_offset)``: ``fields`` is a list of
``(lowercase_name, raw_field)`` where ``raw_field`` is the whole header field (name,
colon, value, continuation lines) with CRLF line endings, ending with CRLF;
``body_offset`` is where the body starts in ``message`` (``len(message)`` when there is
no blank line).  Raises ``ValueError`` for a line that is neither a header field nor a
continuation.

``relaxed_header(raw_field) -> bytes``: RFC 6376 section 3.4.2 for one field.

``signed_headers(fields, names, relaxed) -> (hnames, data)``: the header fields a
signature covers.  ``names`` is a sequence of ``(lowercase_name, oversign)``; for each
name every occurrence is taken from the bottom up (as verifiers select them), and
``oversign`` adds the name once more to ``hnames`` with nothing hashed.  ``data`` is
the concatenation of the selected fields, relaxed-canonicalised when ``relaxed``.

``body_relaxed(body, start=0) -> bytes`` / ``body_simple(body, start=0) -> bytes``: RFC
6376 sections 3.4.4 / 3.4.3 canonical bodies of ``body[start:]``.
"""

from __future__ import annotations

import re

__all__ = [
    "parse_headers",
    "relaxed_header",
    "signed_headers",
    "body_relaxed",
    "body_simple",
    "IMPL",
]

IMPL = "pure"

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_WSP_RUN = re.compile(rb"[ \t]+")
# WSP runs that are not already a single space: a tab anywhere, or 2+ characters.
_WSP_NOT_SINGLE = re.compile(rb"(?:\t|  )[ \t]*| \t[ \t]*")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _crlf(data: bytes) -> bytes:
    """Turn every bare LF into CRLF (cheap check first: most input is already CRLF)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


def parse_headers(message: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """Split the header section into fields; return them and the body offset."""
    n = len(message)
    # Locate the blank line that ends the header section.
    if message.startswith(b"\r\n"):
        return [], 2
    if message.startswith(b"\n"):
        return [], 1
    end_crlf = message.find(b"\n\r\n")
    end_lf = message.find(b"\n\n", 0, n if end_crlf < 0 else end_crlf + 1)
    if end_crlf < 0 and end_lf < 0:
        block, body_offset = message, n
    elif end_lf < 0 or (0 <= end_crlf < end_lf):
        block, body_offset = message[: end_crlf + 1], end_crlf + 3
    else:
        block, body_offset = message[: end_lf + 1], end_lf + 2
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    fields: list[tuple[bytes, bytes]] = []
    name = b""
    parts: list[bytes] = []
    for lineno, line in enumerate(lines, 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:  # a lone CR at the very end of a message without a body
            break
        if line[:1] in (b" ", b"\t"):
            if not parts:
                raise ValueError("the message starts with a continuation line")
            parts.append(line)
            continue
        m = _FIELD_NAME.match(line)
        if m is None:
            raise ValueError(
                f"header line {lineno} is not a header field (no 'name:'): {line[:40]!r}"
            )
        if parts:
            fields.append((name, b"\r\n".join(parts) + b"\r\n"))
        name = m.group(0)[:-1].rstrip(b" \t").lower()
        parts = [line]
    if parts:
        fields.append((name, b"\r\n".join(parts) + b"\r\n"))
    return fields, body_offset


def relaxed_header(raw_field: bytes) -> bytes:
    """Relaxed canonical form of one header field (RFC 6376 section 3.4.2)."""
    name, _, value = raw_field.partition(b":")
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    value = _WSP_RUN.sub(b" ", value).strip(b" \t")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def signed_headers(
    fields: list[tuple[bytes, bytes]], names, relaxed: bool
) -> tuple[list[bytes], bytes]:
    """Select and canonicalise the fields of ``h=`` (see the module docstring)."""
    positions: dict[bytes, list[int]] = {}
    for i, (name, _raw) in enumerate(fields):
        positions.setdefault(name, []).append(i)
    hnames: list[bytes] = []
    parts: list[bytes] = []
    for lname, over in names:
        for i in reversed(positions.get(lname, ())):
            hnames.append(lname)
            raw = fields[i][1]
            parts.append(relaxed_header(raw) if relaxed else raw)
        if over:
            hnames.append(lname)
    return hnames, b"".join(parts)


def _strip_trailing_lines(body: bytes) -> bytes:
    """Drop empty lines at the end; make a non-empty body end with CRLF."""
    end = len(body)
    while end >= 2 and body[end - 2 : end] == b"\r\n":
        end -= 2
    if end == 0:
        return b""
    if end == len(body):
        return body + b"\r\n"
    return body[: end + 2]


def body_simple(body: bytes, start: int = 0) -> bytes:
    """Simple canonical body of ``body[start:]`` (RFC 6376 section 3.4.3): an empty
    body is one CRLF."""
    if start:
        body = body[start:]
    out = _strip_trailing_lines(_crlf(body))
    return out or b"\r\n"


def body_relaxed(body: bytes, start: int = 0) -> bytes:
    """Relaxed canonical body of ``body[start:]`` (RFC 6376 section 3.4.4): an empty
    body stays empty."""
    if start:
        body = body[start:]
    body = _crlf(body)
    if b"\t" in body or b"  " in body:
        body = _WSP_NOT_SINGLE.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        # Last line without a line break: it ends with CRLF when transmitted.
        body = body[:-1]
    return _strip_trailing_lines(body)
