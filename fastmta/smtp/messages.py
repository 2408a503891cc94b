"""The values and events the sans-IO SMTP client speaks (``fastmta.smtp.protocol``).

Pure data, no I/O: the connection ``State``, what EHLO advertised (``Capabilities``,
``parse_ehlo``), the envelope and its argument checks (``Envelope``, ``check_address``),
message-body framing for DATA and BDAT (``prepare_body``, ``normalize_body``), the
result of one transaction (``TransactionResult``) and the events ``ClientProtocol``
returns (``Greeting``, ``Hello``, ``StartTls``, ``TransactionDone``, ``ResetDone``,
``QuitDone``, ``ServiceClosing``, ``ConnectionFailed``; frozen-shape slotted records,
as in h11's ``_events.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import msgspec

from fastmta.classify.outcome import Classification, classify_reply
from fastmta.core import Reply, prepare_body
from fastmta.errors import LocalProtocolError

__all__ = [
    "State",
    "Capabilities",
    "Envelope",
    "TransactionResult",
    "Event",
    "Greeting",
    "Hello",
    "StartTls",
    "TransactionDone",
    "ResetDone",
    "QuitDone",
    "ServiceClosing",
    "ConnectionFailed",
    "parse_ehlo",
    "prepare_body",
    "normalize_body",
    "check_address",
]


class State(IntEnum):
    GREETING = 0
    GREETED = 1
    EHLO = 2
    HELO = 3
    READY = 4
    STARTTLS = 5
    TLS = 6
    TXN = 7
    RSET = 8
    QUIT = 9
    CLOSED = 10
    BROKEN = 11
    AUTH = 12  # an AUTH exchange is under way (RFC 4954)


# ---------------------------------------------------------------------------- values


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What the server's EHLO reply advertised (all False/None after HELO)."""

    esmtp: bool = False
    pipelining: bool = False
    size: int | None = None  # None: not advertised; 0: advertised without a limit
    eightbitmime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    chunking: bool = False
    enhancedstatuscodes: bool = False
    extensions: dict[str, str] = msgspec.field(default_factory=dict)


def parse_ehlo(reply: Reply) -> Capabilities:
    """Capabilities from a 250 EHLO reply (first line is the greeting, not an extension)."""
    ext: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, param = line.strip().partition(" ")
        if keyword:
            ext[keyword.upper()] = param.strip()
    size: int | None = None
    if "SIZE" in ext:
        try:
            size = int(ext["SIZE"] or 0)
        except ValueError:
            size = 0
    return Capabilities(
        esmtp=True,
        pipelining="PIPELINING" in ext,
        size=size,
        eightbitmime="8BITMIME" in ext,
        smtputf8="SMTPUTF8" in ext,
        starttls="STARTTLS" in ext,
        chunking="CHUNKING" in ext,
        enhancedstatuscodes="ENHANCEDSTATUSCODES" in ext,
        extensions=ext,
    )


_FORBIDDEN = frozenset(range(0x20)) | {0x7F}


def check_address(addr: str, what: str = "address") -> str:
    """Refuse CR, LF, NUL (and any other ASCII control) in an envelope argument."""
    if not isinstance(addr, str):
        raise LocalProtocolError(f"{what} must be a str, not {type(addr).__name__}")
    if len(addr) > 986:  # "RCPT TO:<" + addr + ">\r\n" must fit a 1000-octet line
        raise LocalProtocolError(f"{what} is longer than 986 characters")
    if not addr.isprintable() or "<" in addr or ">" in addr:
        for ch in addr:
            if ord(ch) in _FORBIDDEN:
                raise LocalProtocolError(f"{what} {addr!r} contains a control character")
        if "<" in addr or ">" in addr:
            raise LocalProtocolError(f"{what} {addr!r} contains '<' or '>'")
    return addr


class Envelope(msgspec.Struct, frozen=True):
    """One SMTP transaction: sender, recipients, and the message (identical for all)."""

    mail_from: str
    rcpts: list[str]
    body: bytes
    smtputf8: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.body, bytes):
            raise LocalProtocolError(f"message body must be bytes, not {type(self.body).__name__}")
        if isinstance(self.rcpts, str):
            raise LocalProtocolError("rcpts must be a list of addresses, not a str")
        check_address(self.mail_from, "sender")
        if not self.rcpts:
            raise LocalProtocolError("an envelope needs at least one recipient")
        for r in self.rcpts:
            check_address(r, "recipient")
            if not r:
                raise LocalProtocolError("empty recipient address")


# prepare_body (DATA framing: CRLF, dot-stuffing, terminator) is in the compiled core
# (``fastmta.core``; the pure twin is the specification): it is one copy per message.


def normalize_body(body: bytes) -> bytes:
    """CRLF-normalise a message for BDAT (no dot-stuffing, no terminator)."""
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        if crlf or b"\r" in body:
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        body = body.replace(b"\n", b"\r\n")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


class TransactionResult:
    """Result of one transaction: every reply, per-recipient outcomes with classification.

    ``mail_reply``: reply to MAIL.  ``rcpt_replies``: one per recipient, in order.
    ``data_reply``: the reply that decided the accepted recipients: the reply after the
    dot, or the refusal of DATA; None when DATA was never sent.  ``accepted``: recipients
    whose message was taken (2xx after the dot).  ``outcomes``: (recipient, final reply,
    Classification) for every recipient.  ``unknown_fate``: the connection died after the
    whole body was sent but before the reply to the dot (the message may have been
    delivered).  ``local``: the outcome was decided locally (no server reply).
    """

    __slots__ = (
        "envelope",
        "mail_reply",
        "rcpt_replies",
        "data_cmd_reply",
        "data_reply",
        "unknown_fate",
        "local_reply",
        "local_cls",
        "_outcomes",
    )

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.mail_reply: Reply | None = None
        self.rcpt_replies: list[Reply | None] = [None] * len(envelope.rcpts)
        self.data_cmd_reply: Reply | None = None  # reply to the DATA command itself
        self.data_reply: Reply | None = None
        self.unknown_fate = False
        self.local_reply: Reply | None = None  # synthetic reply (no server answer)
        self.local_cls: Classification | None = None
        self._outcomes: list | None = None

    @property
    def accepted(self) -> list[str]:
        d = self.data_reply
        if d is None or d.code >= 300 or d.command != "dot":
            return []
        return [r for r, rep in zip(self.envelope.rcpts, self.rcpt_replies, strict=True)
                if rep is not None and rep.code < 300]

    @property
    def ok(self) -> bool:
        """True when the message was accepted for at least one recipient."""
        d = self.data_reply
        return d is not None and d.command == "dot" and d.code < 300

    @property
    def outcomes(self) -> list[tuple[str, Reply, Classification]]:
        if self._outcomes is None:
            self._outcomes = self._compute_outcomes()
        return self._outcomes

    def _final_reply(self, i: int) -> Reply:
        m = self.mail_reply
        if m is None or m.code >= 300:
            return m  # type: ignore[return-value]
        r = self.rcpt_replies[i]
        if r is None or r.code >= 300:
            return r  # type: ignore[return-value]
        return self.data_reply  # type: ignore[return-value]

    def _compute_outcomes(self) -> list:
        out = []
        cache: dict[int, Classification] = {}
        for i, rcpt in enumerate(self.envelope.rcpts):
            reply = self._final_reply(i)
            key = id(reply)
            cls = cache.get(key)
            if cls is None:
                lr = self.local_reply
                if lr is not None and self.local_cls is not None and reply.raw == lr.raw:
                    cls = self.local_cls
                else:
                    cls = classify_reply(reply)
                cache[key] = cls
            out.append((rcpt, reply, cls))
        return out

    def __repr__(self) -> str:
        return (
            f"TransactionResult(rcpts={self.envelope.rcpts!r}, mail={_code(self.mail_reply)}, "
            f"rcpt={[_code(r) for r in self.rcpt_replies]}, data={_code(self.data_reply)}, "
            f"unknown_fate={self.unknown_fate})"
        )


def _code(r: Reply | None):
    return None if r is None else r.code


# ---------------------------------------------------------------------------- events


class Event:
    """Base class of protocol events."""

    __slots__ = ()


@dataclass(slots=True, eq=False)
class Greeting(Event):
    reply: Reply

    @property
    def ok(self) -> bool:
        return self.reply.code == 220


@dataclass(slots=True, eq=False)
class Hello(Event):
    """EHLO (or HELO after an EHLO refusal) answered."""

    reply: Reply
    capabilities: Capabilities

    @property
    def ok(self) -> bool:
        return self.reply.code == 250


@dataclass(slots=True, eq=False)
class AuthReply(Event):
    """A reply in an AUTH exchange: 334 (send the next response), 235 (done), or a failure."""

    reply: Reply

    @property
    def ok(self) -> bool:
        return self.reply.code == 235


@dataclass(slots=True, eq=False)
class StartTls(Event):
    reply: Reply

    @property
    def ok(self) -> bool:
        return self.reply.code == 220


@dataclass(slots=True, eq=False)
class TransactionDone(Event):
    result: TransactionResult


@dataclass(slots=True, eq=False)
class ResetDone(Event):
    """An explicit ``rset()`` or ``noop()`` was answered."""

    reply: Reply


@dataclass(slots=True, eq=False)
class QuitDone(Event):
    reply: Reply


@dataclass(slots=True, eq=False)
class ServiceClosing(Event):
    """The server sent 421 (or any reply nobody asked for): the connection is over."""

    reply: Reply


@dataclass(slots=True, eq=False)
class ConnectionFailed(Event):
    """Connection lost, timed out, or the peer sent garbage (kind as in outcome.LOCAL_KINDS)."""

    kind: str
    reply: Reply
    classification: Classification
    detail: str = ""
