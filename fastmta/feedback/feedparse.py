"""A faster twin of ``email.message_from_bytes(data, policy=compat32)``.

The standard ``email.feedparser`` is incremental: a generator per MIME level, one
``readline`` through a deque and a stack of end-of-part predicates per line.  Inbound
mail arrives whole, so this module runs the same algorithm over the list of lines with
an index: the same header rules (``headerRE``, continuation lines, ``From `` lines), the
same ``message/delivery-status`` blocks, the same boundary predicates (any enclosing
boundary ends a part) and the same "the newline before a boundary belongs to the
boundary" trimming, building the same ``email.message.Message`` tree (the defects list
is not kept).  The cases it does not follow line for line raise ``Unsupported`` and the
caller uses the standard parser; ``tests/feedback/test_feedparse.py`` checks that both
give equal trees.  Pure.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from email._policybase import compat32
from email.message import Message

__all__ = ["Unsupported", "message_from_bytes"]

_HEADER = re.compile(r"^(From |[\041-\071\073-\176]*:|[\t ])").match
_NL = re.compile(r"\r\n|\r|\n").match
_NL_EOL = re.compile(r"(\r\n|\r|\n)\Z").search
_NL_BOL = re.compile(r"(\r\n|\r|\n)").match
_source_parse = compat32.header_source_parse


class Unsupported(Exception):
    """The input takes a path of ``email.feedparser`` that this twin does not follow."""


class _Parser:
    __slots__ = ("lines", "pos", "n", "eof", "last", "depth")

    def __init__(self, text: str) -> None:
        self.lines = io.StringIO(text, newline="").readlines()
        self.pos = 0
        self.n = len(self.lines)
        self.eof: list[Callable] = []  # end-of-part predicates (innermost last)
        self.last: Message | None = None
        self.depth = 0

    def _at_eof(self, line: str) -> bool:
        # every predicate (blank line, --boundary) needs a line starting with - or a newline
        if line[:1] in "-\r\n":
            for fn in self.eof:
                if fn(line):
                    return True
        return False

    def readline(self) -> str:
        if self.pos >= self.n:
            return ""
        line = self.lines[self.pos]
        if self.eof and self._at_eof(line):
            return ""
        self.pos += 1
        return line

    def rest(self) -> str:
        """Every line up to the end of the current part, joined."""
        start = self.pos
        lines, n, eof = self.lines, self.n, self.eof
        i = start
        if eof:
            at = self._at_eof
            while i < n and not at(lines[i]):
                i += 1
        else:
            i = n
        self.pos = i
        return "".join(lines[start:i])

    def parse(self, parent: Message | None) -> Message:
        self.depth += 1
        if self.depth > 200:  # the standard parser recurses too: RecursionError there
            raise Unsupported("nesting")
        msg = Message(policy=compat32)
        if parent is not None:
            if parent.get_content_type() == "multipart/digest":
                raise Unsupported("digest")
            parent.attach(msg)
        self.last = msg
        headers = []
        while True:
            line = self.readline()
            if not line:
                break
            if not _HEADER(line):
                if not _NL(line):
                    self.pos -= 1  # part of the body
                break
            headers.append(line)
        self._headers(msg, headers)
        ctype = msg.get_content_type()
        if ctype == "message/delivery-status":
            while True:
                self.eof.append(_NL)
                self.parse(msg)
                self.eof.pop()
                self.readline()
                line = self.readline()
                if line == "":
                    break
                self.pos -= 1
        elif ctype.startswith("message/"):
            self.parse(msg)
        elif ctype.startswith("multipart/"):
            self._multipart(msg)
        else:
            msg.set_payload(self.rest())
        self.depth -= 1
        return msg

    def _multipart(self, msg: Message) -> None:
        boundary = msg.get_boundary()
        if boundary is None:
            msg.set_payload(self.rest())
            return
        sep = re.compile("(?P<sep>" + re.escape("--" + boundary) +
                         r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$").match
        preamble: list[str] = []
        capturing = True
        close_seen = False
        linesep = None
        while True:
            line = self.readline()
            if line == "":
                break
            mo = sep(line)
            if mo:
                if mo.group("end"):
                    close_seen = True
                    linesep = mo.group("linesep")
                    break
                if capturing:
                    if preamble:
                        eol = _NL_EOL(preamble[-1])
                        if eol:
                            preamble[-1] = preamble[-1][: -len(eol.group(0))]
                        msg.preamble = "".join(preamble)
                    capturing = False
                    self.pos -= 1
                    continue
                while True:
                    line = self.readline()
                    if not sep(line):
                        if line:
                            self.pos -= 1
                        break
                self.eof.append(sep)
                self.parse(msg)
                last = self.last
                assert last is not None
                if last.get_content_maintype() == "multipart":
                    epi = last.epilogue
                    if epi == "":
                        last.epilogue = None
                    elif epi is not None:
                        eol = _NL_EOL(epi)
                        if eol:
                            last.epilogue = epi[: -len(eol.group(0))]
                else:
                    payload = last._payload
                    if isinstance(payload, str):
                        eol = _NL_EOL(payload)
                        if eol:
                            last._payload = payload[: -len(eol.group(0))]
                self.eof.pop()
                self.last = msg
            else:
                preamble.append(line)
        if capturing:
            msg.set_payload("".join(preamble))
            self.rest()  # the standard parser reads the rest and keeps none of it
            msg.epilogue = ""
            return
        if not close_seen:
            return
        epilogue = [""] if linesep else []
        tail = self.rest()
        if tail:
            epilogue.append(tail)
        if epilogue:
            bol = _NL_BOL(epilogue[0])
            if bol:
                epilogue[0] = epilogue[0][len(bol.group(0)):]
        msg.epilogue = "".join(epilogue)

    def _headers(self, msg: Message, lines: list[str]) -> None:
        name = ""
        value: list[str] = []
        for lineno, line in enumerate(lines):
            if line[0] in " \t":
                if name:
                    value.append(line)
                continue
            if name:
                msg.set_raw(*_source_parse(value))
                name, value = "", []
            if line.startswith("From "):
                if lineno == 0:
                    eol = _NL_EOL(line)
                    msg.set_unixfrom(line[: -len(eol.group(0))] if eol else line)
                    continue
                if lineno == len(lines) - 1:
                    raise Unsupported("From line at the end of the header")
                continue
            i = line.find(":")
            if i == 0:
                continue
            name = line[:i]
            value = [line]
        if name:
            msg.set_raw(*_source_parse(value))


def message_from_bytes(data: bytes) -> Message:
    """The tree ``email.message_from_bytes(data, policy=compat32)`` builds, faster;
    ``Unsupported`` where this twin does not follow the standard parser."""
    p = _Parser(data.decode("ascii", "surrogateescape"))
    root = p.parse(None)
    return root
