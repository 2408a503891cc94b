"""Pure-Python reference of the compiled core (``fastmta._core``).

This module is the specification: ``_core.pyx`` must export the same names with the same
results, and the tests run both on the same cases.

Reply parser
------------
``ReplyParser`` is incremental and sans-IO: ``feed(data)`` takes any bytes-like chunk and
returns the list of replies completed by it.  The protocol layer announces what it sent
with ``expect(command)``; each completed reply is tagged with the oldest announced
command (FIFO, so pipelined commands pair up in order).  A reply that arrives with
nothing announced gets ``command=None`` (e.g. an unsolicited 421).

Limits: a line may hold at most ``max_line`` bytes (default 8 KiB, well beyond RFC
5321's 512) and a reply at most ``max_reply`` bytes over all its lines; past either cap,
or on a malformed line (non-digit code, code changing inside a reply, missing
separator), ``feed`` raises ``RemoteProtocolError`` and the parser stays broken.
"""

from __future__ import annotations

from collections import deque

from .errors import RemoteProtocolError

__all__ = ["Reply", "ReplyParser", "parse_reply", "DEFAULT_MAX_LINE", "DEFAULT_MAX_REPLY"]

DEFAULT_MAX_LINE = 8192
DEFAULT_MAX_REPLY = 65536


class Reply:
    """One complete SMTP reply.

    ``code``: the 3-digit reply code.  ``enhanced``: the RFC 3463 status code ("5.1.1")
    from the first line that has one, or None.  ``lines``: the text of each line with the
    code, separator and enhanced code stripped.  ``raw``: the reply as received, lines
    joined by CRLF, without the final CRLF.  ``command``: what it answers.
    """

    __slots__ = ("code", "enhanced", "lines", "raw", "command")

    def __init__(self, code, enhanced, lines, raw, command=None):
        self.code = code
        self.enhanced = enhanced
        self.lines = tuple(lines)
        self.raw = raw
        self.command = command

    @property
    def text(self) -> str:
        """The lines' text joined by single spaces (enhanced codes stripped)."""
        return " ".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_command(self, command):
        return Reply(self.code, self.enhanced, self.lines, self.raw, command)

    def __eq__(self, other):
        if not isinstance(other, Reply):
            return NotImplemented
        return (
            self.code == other.code
            and self.enhanced == other.enhanced
            and self.lines == other.lines
            and self.raw == other.raw
            and self.command == other.command
        )

    def __hash__(self):
        return hash((self.code, self.enhanced, self.lines, self.raw, self.command))

    def __repr__(self):
        return (
            f"Reply(code={self.code!r}, enhanced={self.enhanced!r}, "
            f"lines={self.lines!r}, command={self.command!r})"
        )


def _split_enhanced(text: str, klass: int):
    """Return (enhanced, rest) when ``text`` starts with an RFC 3463 code, else (None, text).

    Form: class "." subject(1-3 digits) "." detail(1-3 digits), followed by a space or
    the end of the line.  The class must be 2, 4 or 5; servers that send a class not
    matching the reply code (e.g. "550 4.7.1") are kept as sent.
    """
    n = len(text)
    if n < 5 or text[0] not in "245" or text[1] != ".":
        return None, text
    i = 2
    start = i
    while i < n and text[i].isdigit() and i - start < 3:
        i += 1
    if i == start or i >= n or text[i] != ".":
        return None, text
    i += 1
    start = i
    while i < n and text[i].isdigit() and i - start < 3:
        i += 1
    if i == start:
        return None, text
    if i < n and text[i] != " ":
        return None, text
    code = text[:i]
    rest = text[i + 1 :] if i < n else ""
    return code, rest


def _decode(line: bytes) -> str:
    return line.decode("utf-8", "replace")


class ReplyParser:
    """Incremental SMTP reply parser (see module docstring)."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, max_reply: int = DEFAULT_MAX_REPLY):
        self.max_line = max_line
        self.max_reply = max_reply
        self._buf = bytearray()
        self._lines: list[bytes] = []
        self._texts: list[str] = []
        self._code = -1
        self._enhanced = None
        self._reply_size = 0
        self._expected: deque = deque()
        self._error: RemoteProtocolError | None = None

    def expect(self, command) -> None:
        """Announce that ``command`` was sent; the next unclaimed reply answers it."""
        self._expected.append(command)

    @property
    def pending_commands(self) -> int:
        """How many announced commands still wait for their reply."""
        return len(self._expected)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete reply."""
        return len(self._buf) + self._reply_size

    def _fail(self, msg: str):
        self._error = RemoteProtocolError(msg)
        raise self._error

    def feed(self, data) -> list:
        """Add received bytes; return the replies they complete (possibly none)."""
        if self._error is not None:
            raise self._error
        out = []
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n:
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if n - pos > self.max_line:
                    self._fail(f"reply line longer than {self.max_line} bytes")
                break
            end = eol
            if end > pos and buf[end - 1] == 13:
                end -= 1
            if end - pos > self.max_line:
                self._fail(f"reply line longer than {self.max_line} bytes")
            reply = self._line(bytes(buf[pos:end]))
            pos = eol + 1
            if reply is not None:
                out.append(reply)
        del buf[:pos]
        return out

    def _line(self, line: bytes):
        n = len(line)
        if n < 3 or not (48 <= line[0] <= 57 and 48 <= line[1] <= 57 and 48 <= line[2] <= 57):
            self._fail(f"malformed reply line: {line[:40]!r}")
        if line[0] < 50 or line[0] > 53:
            self._fail(f"reply code out of range: {line[:3]!r}")
        code = (line[0] - 48) * 100 + (line[1] - 48) * 10 + (line[2] - 48)
        if n == 3:
            last = True
            text = ""
        else:
            sep = line[3]
            if sep == 32:
                last = True
            elif sep == 45:
                last = False
            else:
                self._fail(f"malformed reply line: {line[:40]!r}")
            text = _decode(line[4:])
        if self._code == -1:
            self._code = code
        elif code != self._code:
            self._fail(f"reply code changed inside a reply: {self._code} then {code}")
        self._reply_size += n + 2
        if self._reply_size > self.max_reply:
            self._fail(f"reply longer than {self.max_reply} bytes")
        enh, rest = _split_enhanced(text, code // 100)
        if enh is not None:
            if self._enhanced is None:
                self._enhanced = enh
            text = rest
        self._lines.append(line)
        self._texts.append(text)
        if not last:
            return None
        raw = "\r\n".join(_decode(x) for x in self._lines)
        command = self._expected.popleft() if self._expected else None
        reply = Reply(code, self._enhanced, self._texts, raw, command)
        self._lines = []
        self._texts = []
        self._code = -1
        self._enhanced = None
        self._reply_size = 0
        return reply


def parse_reply(data, command=None) -> Reply:
    """Parse exactly one complete reply (a convenience for tests and the CLI).

    A missing final line ending is tolerated.  Raises ``RemoteProtocolError`` when the
    input is not exactly one reply.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    data = bytes(data)
    if not data.endswith(b"\n"):
        data += b"\r\n"
    p = ReplyParser()
    p.expect(command)
    replies = p.feed(data)
    if len(replies) != 1 or p.buffered:
        raise RemoteProtocolError(f"expected exactly one reply, got {len(replies)}")
    return replies[0]
