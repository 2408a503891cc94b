"""Bounded MIME access for inbound reports (pure: Python's ``email`` package only).

``load(raw, limits)`` parses at most ``window_bytes`` of the message (a bounce's useful
part is at the top; a 50 MB message is cut, not read whole), walks at most
``max_parts`` parts down to ``max_depth`` levels and stops at a deadline.  Every text
is decoded with a fallback charset: unknown charsets, bad transfer encodings and
binary garbage become replacement characters, never an exception.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import Message
from typing import NamedTuple

from fastmta.feedback import feedparse

_WS = re.compile(r"[ \t]+")
_SURROGATE = re.compile("[\udc80-\udcff]")


class Limits(NamedTuple):
    window_bytes: int = 2 * 1024 * 1024  # parsed; the rest is ignored
    max_parts: int = 200
    max_depth: int = 8
    max_text: int = 512 * 1024  # decoded characters kept per part
    time_s: float = 2.0


class Part(NamedTuple):
    ctype: str  # lower-case content type
    depth: int
    text: str  # decoded payload ('' for multiparts)
    msg: Message
    in_returned: bool  # inside a message/rfc822 or rfc822-headers part (the original)


class Walk(NamedTuple):
    root: Message
    parts: list[Part]
    truncated: bool  # input was larger than the window
    cut: str  # why the walk stopped early ('' = complete)


def header(msg: Message, name: str) -> str:
    """One header as text (folded lines joined, encoded words decoded; never raises)."""
    low = name.lower()
    try:
        for k, v in msg._headers:  # the raw value (compat32 keeps 8-bit bytes escaped)
            if k.lower() == low:
                return decode_header_value(v)
    except Exception:
        return ""
    return ""


def decode_header_value(v: object) -> str:
    try:
        s = str(v)
        if _SURROGATE.search(s):  # raw 8-bit bytes in a header
            b = s.encode("utf-8", "surrogateescape")
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                s = b.decode("latin-1")
        if "=?" in s:
            s = str(email.header.make_header(email.header.decode_header(s)))
    except Exception:
        s = str(v) if isinstance(v, str) else ""
    return _WS.sub(" ", s.replace("\r", " ").replace("\n", " ")).strip()


def _charset(part: Message) -> str:
    try:
        cs = part.get_content_charset() or "utf-8"
        "".encode(cs)
        return cs
    except (LookupError, Exception):
        return "utf-8"


def part_text(part: Message, limit: int) -> str:
    """Decoded text of a non-multipart part (transfer encoding and charset undone)."""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        p = part.get_payload()
        if isinstance(p, str):
            return p[:limit]
        if isinstance(p, list):  # message/* parsed as a sub-message
            return "\n".join(m.as_string()[:limit] if isinstance(m, Message) else ""
                             for m in p[:2])[:limit]
        return ""
    cs = _charset(part)
    try:
        text = data[: limit * 4].decode(cs, "replace")
    except Exception:
        text = data[: limit * 4].decode("utf-8", "replace")
    if "iso-2022" in cs and "\x1b" in text:
        text = text.replace("\x1b", "")
    return text[:limit]


_FIELD_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status",
                          "message/feedback-report"})


def field_text(msg: Message, limit: int) -> str:
    """A delivery-status / feedback-report body as text: blocks of ``Name: value``
    lines separated by blank lines (the parser reads each block as a header set)."""
    payload = msg.get_payload()
    if isinstance(payload, str):
        text = part_text(msg, limit)
        return text.replace("\r\n", "\n")
    blocks = []
    for sub in payload if isinstance(payload, list) else []:
        if not isinstance(sub, Message):
            continue
        lines = [f"{k}: {decode_header_value(v)}" for k, v in sub.items()]
        body = sub.get_payload()
        if isinstance(body, str) and body.strip():
            lines.append(body.strip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)[:limit]


DEFAULT_LIMITS = Limits()
_BOUNDARY_LINE = re.compile(rb"^--([^\s]{6,200}?)(?:--)?\r?$", re.M)
_MIME_PREAMBLE = re.compile(rb"^\s*this is a (?:mime-encapsulated|multi-part) message", re.I)
_CT_HEADER = re.compile(rb"^Content-Type:[^\n]*(?:\n[ \t][^\n]*)*\n", re.I | re.M)


def _message(data: bytes) -> Message:
    try:
        return feedparse.message_from_bytes(data)  # the same tree, faster
    except Exception:  # Unsupported, or anything unforeseen: the standard parser decides
        pass
    try:
        return email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:  # the parser is lenient; keep a last resort
        return email.message_from_string(data.decode("latin-1", "replace"))


def _resplit(data: bytes) -> bytes | None:
    """A multipart whose boundary parameter does not match its body (broken or
    anonymised mail, or a MIME body under a missing Content-Type): re-split it on the
    most frequent ``--token`` line that is followed by part headers, or None."""
    sep = data.find(b"\n\n")
    if sep < 0:
        return None
    head, body = data[: sep + 1], data[sep + 1:]
    counts: dict[bytes, int] = {}
    for m in _BOUNDARY_LINE.finditer(body[:1_000_000]):
        nxt = body[m.end():m.end() + 200].lstrip(b"\r\n")
        if nxt[:8].lower() == b"content-":  # Content-Type, -Description, -Transfer-Encoding
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    if not counts:
        return None
    token = max(counts, key=lambda k: counts[k])
    m = _CT_HEADER.search(head)
    old = m.group(0) if m else b""
    kind = b"report" if b"multipart/report" in old.lower() else b"mixed"
    rtype = re.search(rb"report-type=\"?([\w-]+)", old, re.I)
    params = b"; report-type=" + rtype.group(1) if rtype else b""
    new = b"Content-Type: multipart/" + kind + params + b'; boundary="' + token + b'"\n'
    head = head.replace(old, new, 1) if old else head + new
    return head + body


def load(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Walk:
    """Parse and walk ``raw`` within ``limits``."""
    truncated = len(raw) > limits.window_bytes
    data = raw[: limits.window_bytes] if truncated else raw
    deadline = time.monotonic() + limits.time_s
    root = _message(data)
    if not isinstance(root.get_payload(), list) and (
            root.get_content_maintype() == "multipart"
            or _MIME_PREAMBLE.search(data[data.find(b"\n\n"):][:300])):
        fixed = _resplit(data)
        if fixed is not None:
            root = _message(fixed)
    parts: list[Part] = []
    cut = ""
    stack: list[tuple[Message, int, bool]] = [(root, 0, False)]
    while stack:
        if len(parts) >= limits.max_parts:
            cut = "too many MIME parts"
            break
        if time.monotonic() > deadline:
            cut = "time bound reached"
            break
        msg, depth, returned = stack.pop()
        try:
            ctype = msg.get_content_type().lower()
        except Exception:
            ctype = "text/plain"
        payload = msg.get_payload()
        if ctype in _FIELD_PARTS:
            parts.append(Part(ctype, depth, field_text(msg, limits.max_text), msg, returned))
            continue
        if isinstance(payload, list):
            parts.append(Part(ctype, depth, "", msg, returned))
            if depth >= limits.max_depth:
                cut = "MIME nesting too deep"
                continue
            inner = returned or ctype in ("message/rfc822", "message/global")
            for sub in reversed(payload):
                if isinstance(sub, Message):
                    stack.append((sub, depth + 1, inner))
            continue
        text = part_text(msg, limits.max_text)
        if ctype.startswith("multipart/"):  # no boundary line at all (not even resplit):
            ctype = "text/plain"  # read its body as text, as the standard parser keeps it
        is_returned = returned or ctype in ("message/rfc822", "text/rfc822-headers",
                                            "message/rfc822-headers", "message/global",
                                            "message/global-headers")
        parts.append(Part(ctype, depth, text, msg, is_returned))
    return Walk(root, parts, truncated, cut)
