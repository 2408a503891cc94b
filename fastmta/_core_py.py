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

Bounce classifier
-----------------
``classify(reply, command=None)`` qualifies a reply (a ``Reply`` or any text that
contains one, leniently: a leading or embedded reply code, an RFC 3463 code anywhere
such as "#5.1.1") with the first matching rule of the compiled rule set (see
``fastmta.classify.rules`` for the rule language and the normalization of the text).  The
reference below tests every rule in order; the compiled core gets the same answer from
a single automaton pass plus the few candidate rules it triggers.
"""

from __future__ import annotations

from collections import deque

from fastmta._core_records import rcpt_batch, rcpt_claim, rcpt_sent
from fastmta._core_rows import csv_rows
from fastmta.classify import rules as _rules
from fastmta.errors import RemoteProtocolError

__all__ = [
    "Reply",
    "ReplyParser",
    "parse_reply",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_REPLY",
    "Classification",
    "Classifier",
    "classify",
    "load_rules",
    "default_classifier",
    "extract_codes",
    "prepare_body",
    "rcpt_sent",
    "rcpt_claim",
    "rcpt_batch",
    "csv_rows",
]

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

    def __reduce__(self):
        return (Reply, (self.code, self.enhanced, self.lines, self.raw, self.command))

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
    while i < n and "0" <= text[i] <= "9" and i - start < 3:
        i += 1
    if i == start or i >= n or text[i] != ".":
        return None, text
    i += 1
    start = i
    while i < n and "0" <= text[i] <= "9" and i - start < 3:
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
        if max_line < 1 or max_reply < 1:
            raise ValueError("max_line and max_reply must be positive")
        self.max_line = max_line
        self.max_reply = max_reply
        self._buf = bytearray()
        self._lines: list[bytes] = []
        self._texts: list[str] = []
        self._code = -1
        self._enhanced = None
        self._reply_size = 0
        self._expected: deque = deque()
        self._error: str | None = None

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
        self._error = msg
        raise RemoteProtocolError(msg)

    def feed(self, data) -> list:
        """Add received bytes; return the replies they complete (possibly none).

        On a protocol error, raises ``RemoteProtocolError`` whose ``replies`` attribute
        holds the replies completed by this chunk before the bad line (so that nothing
        the server already answered is lost); every later call raises again.
        """
        if self._error is not None:
            exc = RemoteProtocolError(self._error)
            exc.replies = []
            raise exc
        out = []
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    # One byte more than max_line may be the CR of a CRLF still coming.
                    if n - pos > self.max_line + 1:
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
        except RemoteProtocolError as exc:
            del buf[:]
            exc.replies = out
            raise
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


# ---------------------------------------------------------------------------------------
# Bounce classifier
# ---------------------------------------------------------------------------------------


class Classification:
    """The verdict on one reply (ARCHITECTURE.md section 4).

    ``code`` (0 when the text carries no reply code), ``enhanced`` ("5.1.1" or None),
    ``bounce_class`` (Momentum/SparkPost class, 0 = not a bounce), ``type``
    (hard/soft/ignored/none), ``reason`` (campaign failure reason), ``throttle``,
    ``action`` (deliver_ok/retry/bounce/suspend_site/reduce_rate/defer_recipient),
    ``rule`` (the name of the rule that decided), ``throttle_scope`` (none/recipient/
    sender) and ``effect`` (none/session_cap/too_many_recipients/connection_limit: what
    the reply says about the transaction or the connections).
    """

    __slots__ = ("code", "enhanced", "bounce_class", "type", "reason", "throttle", "action",
                 "rule", "throttle_scope", "effect")

    def __init__(self, code, enhanced, bounce_class, type, reason, throttle, action, rule,
                 throttle_scope="none", effect="none"):
        self.throttle_scope = throttle_scope
        self.effect = effect
        self.code = code
        self.enhanced = enhanced
        self.bounce_class = bounce_class
        self.type = type
        self.reason = reason
        self.throttle = throttle
        self.action = action
        self.rule = rule

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "enhanced": self.enhanced,
            "bounce_class": self.bounce_class,
            "type": self.type,
            "reason": self.reason,
            "throttle": self.throttle,
            "action": self.action,
            "rule": self.rule,
            "throttle_scope": self.throttle_scope,
            "effect": self.effect,
        }

    def _key(self):
        return (
            self.code,
            self.enhanced,
            self.bounce_class,
            self.type,
            self.reason,
            self.throttle,
            self.action,
            self.rule,
            self.throttle_scope,
            self.effect,
        )

    def __eq__(self, other):
        if not hasattr(other, "to_dict") or not hasattr(other, "bounce_class"):
            return NotImplemented
        return self._key() == tuple(other.to_dict().values())

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        return (Classification, self._key())

    def __repr__(self):
        return (
            f"Classification(code={self.code!r}, enhanced={self.enhanced!r}, "
            f"bounce_class={self.bounce_class!r}, type={self.type!r}, reason={self.reason!r}, "
            f"throttle={self.throttle!r}, action={self.action!r}, rule={self.rule!r}, "
            f"throttle_scope={self.throttle_scope!r}, effect={self.effect!r})"
        )


_WS = " \t\n\r\x0b\x0c"
_CODE_PREV = _WS + "(\"'<[;,:="
_CODE_NEXT = _WS + "-:,;)'\">]"


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def _isalnum(c: str) -> bool:
    return "0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z"


def _scan_code(s: str, j: int, failures_only: bool):
    n = len(s)
    while j + 3 <= n:
        c = s[j]
        if (
            (c == "4" or c == "5" or (c == "2" and not failures_only))
            and _isdigit(s[j + 1])
            and _isdigit(s[j + 2])
            and s[j - 1] in _CODE_PREV
            and (j + 3 == n or s[j + 3] in _CODE_NEXT)
        ):
            return int(s[j : j + 3]), j + 3
        j += 1
    return 0, -1


def _find_code(s: str):
    """The reply code of free text.

    A leading code (after whitespace) wins, unless it is 2xx/3xx and a failure code
    (4xx/5xx) follows later (a transcript: greeting, then the refusal).  Otherwise the
    first 2xx/4xx/5xx token bounded by a space or punctuation (not a dot: no IP parts).
    Returns (code or 0, index just after it or -1).
    """
    n = len(s)
    i = 0
    while i < n and s[i] in _WS:
        i += 1
    if (
        i + 3 <= n
        and "2" <= s[i] <= "5"
        and _isdigit(s[i + 1])
        and _isdigit(s[i + 2])
        and (i + 3 == n or (not _isdigit(s[i + 3]) and s[i + 3] != "."))
    ):
        code = int(s[i : i + 3])
        if code < 400:
            later = _scan_code(s, i + 3, True)
            if later[0]:
                return later
        return code, i + 3
    return _scan_code(s, i + 1, False)


_ENH_GAP = " -'\":#("


def _find_enhanced(s: str, after: int = -1):
    """The RFC 3463 code of free text as (class, subject, detail), or None.

    The one right after the reply code (``after``: index after the code; at most two
    separator characters between) is preferred, else the first one anywhere.
    """
    n = len(s)
    if after >= 0:
        j = after
        while j < n and j - after < 2 and s[j] in _ENH_GAP:
            j += 1
        e = _enh_at(s, j)
        if e is not None:
            return e
    j = 0
    while j + 5 <= n:
        e = _enh_at(s, j)
        if e is not None:
            return e
        j += 1
    return None


def _enh_at(s: str, j: int):
    """The enhanced code starting exactly at ``j`` (bounded on both sides), or None."""
    n = len(s)
    if j + 5 <= n:
        c = s[j]
        if (c == "2" or c == "4" or c == "5") and s[j + 1] == "." and (
            j == 0 or not (_isalnum(s[j - 1]) or s[j - 1] == ".")
        ):
            k = j + 2
            a = k
            while k < n and _isdigit(s[k]) and k - a < 3:
                k += 1
            if k > a and k < n and s[k] == ".":
                subj = int(s[a:k])
                k += 1
                b = k
                while k < n and _isdigit(s[k]) and k - b < 3:
                    k += 1
                if k > b and (
                    k == n
                    or not (
                        _isalnum(s[k]) or (s[k] == "." and k + 1 < n and _isdigit(s[k + 1]))
                    )
                ):
                    return (ord(c) - 48, subj, int(s[b:k]))
    return None


def _enh_tuple(enhanced: str):
    a, b, c = enhanced.split(".")
    return (int(a), int(b), int(c))


def extract_codes(text: str):
    """(reply code or 0, enhanced code string or None) found leniently in ``text``."""
    code, end = _find_code(text)
    e = _find_enhanced(text, end)
    return code, (None if e is None else f"{e[0]}.{e[1]}.{e[2]}")


_normalize = _rules.normalize  # folded text, whitespace collapsed, a space at both ends


class Classifier:
    """A compiled rule set and the matcher over it.  ``classify`` uses a default one.

    One instance is meant for one thread (the compiled one keeps its scan state in the
    instance); the engine uses one per worker process.
    """

    def __init__(self, rules: _rules.CompiledRules | None = None):
        if rules is None:
            rules = _rules.compile_rules(_rules.default_rule_files())
        self.rules = rules
        self._patterns = list(rules.patterns)
        self._rules = list(rules.rules)

    @property
    def sources(self) -> list:
        return list(self.rules.sources)

    def classify(self, reply, command=None) -> Classification:
        """Classify ``reply`` (``Reply``, str or bytes) answered to ``command``."""
        if isinstance(reply, str):
            text = reply
        elif isinstance(reply, (bytes, bytearray, memoryview)):
            text = bytes(reply).decode("utf-8", "replace")
        else:
            text = None
        if text is not None:
            code, end = _find_code(text)
            enh = _find_enhanced(text, end)
            enhanced = None if enh is None else f"{enh[0]}.{enh[1]}.{enh[2]}"
        else:
            # A Reply (of either implementation): trust its parsed code and enhanced code.
            try:
                code = reply.code
                enhanced = reply.enhanced
                # Match on the lines' text (codes and continuation prefixes stripped), so
                # that a phrase wrapped over two lines still matches.
                text = " ".join(reply.lines)
                if command is None:
                    command = reply.command
            except AttributeError:
                raise TypeError(
                    f"classify() needs a Reply, str or bytes, not {type(reply).__name__}"
                ) from None
            enh = None if enhanced is None else _enh_tuple(enhanced)
        if command is None:
            phase = _rules.PHASE_NONE
        else:
            if not isinstance(command, str):
                raise TypeError("command must be a str or None")
            phase = _rules.PHASE_BIT.get(command) or _rules.PHASE_BIT.get(
                command.lower(), _rules.PHASE_OTHER
            )
        if code:
            cm = code
        elif enh is not None:
            cm = _rules.PSEUDO_BASE + enh[0]
        else:
            cm = _rules.CODE_NONE
        norm = _normalize(text)
        found = {i for i, p in enumerate(self._patterns) if p in norm}
        lowered = None
        for r in self._rules:
            if r.cmd_mask and not (r.cmd_mask & phase):
                continue
            if r.code_bits and not (r.code_bits >> cm) & 1:
                continue
            if r.enh and not any(_enh_match(p, enh) for p in r.enh):
                continue
            if r.any_ids and not any(i in found for i in r.any_ids):
                continue
            if r.all_ids and not all(i in found for i in r.all_ids):
                continue
            if r.not_ids and any(i in found for i in r.not_ids):
                continue
            if r.regex is not None:
                if lowered is None:
                    lowered = text.lower()
                if r.regex.search(lowered) is None:
                    continue
            return Classification(
                code, enhanced, r.bounce_class, r.type, r.reason, r.throttle, r.action, r.name,
                r.throttle_scope, r.effect,
            )
        return Classification(code, enhanced, 1, "soft", "not_defined", False, "retry", "default")


def _enh_match(p, enh) -> bool:
    if p[0] == 0:
        return enh is None
    if enh is None:
        return False
    return (
        (p[0] == -1 or p[0] == enh[0])
        and (p[1] == -1 or p[1] == enh[1])
        and (p[2] == -1 or p[2] == enh[2])
    )


_default: Classifier | None = None


def default_classifier() -> Classifier:
    """The process-wide classifier (packaged rules + ``FASTMTA_BOUNCE_RULES``), built once."""
    global _default
    if _default is None:
        _default = Classifier()
    return _default


def load_rules(rule_files=None, *, packaged: bool = True) -> Classifier:
    """Rebuild the default classifier from operator rule files (they take precedence).

    ``rule_files``: a path or a list of paths; None or "" = ``FASTMTA_BOUNCE_RULES`` (the
    ``[classify] rules_file`` config key, when set, is passed here and wins).  Raises
    ``ConfigError`` for a missing or invalid file, leaving the previous rules in place.
    """
    global _default
    if not rule_files:
        files = _rules.default_rule_files()
    elif isinstance(rule_files, str):
        files = [rule_files]
    else:
        files = list(rule_files)
    _default = Classifier(_rules.compile_rules(files, packaged=packaged))
    return _default


def classify(reply, command=None) -> Classification:
    """Classify one reply with the default rules (see ``Classifier.classify``)."""
    c = _default
    if c is None:
        c = default_classifier()
    return c.classify(reply, command)


def prepare_body(body: bytes) -> bytes:
    """CRLF-normalise, dot-stuff and terminate a message for DATA (RFC 5321 4.5.2).

    Bare CR and bare LF become CRLF (no smuggling: RFC 5321 2.3.8), a line starting with
    "." gets another, a final CRLF is added when missing, then ".\r\n"."""
    body = bytes(body)
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        if crlf or b"\r" in body:
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        body = body.replace(b"\n", b"\r\n")
    if body.startswith(b"."):
        body = b"." + body
    if b"\n." in body:
        body = body.replace(b"\n.", b"\n..")
    if body and not body.endswith(b"\r\n"):
        return body + b"\r\n.\r\n"
    return body + b".\r\n"
