# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled core: SMTP reply parser and bounce classifier (typed port of ``_core_py``).

Same names, same results as the pure-Python reference ``fastmta._core_py`` (the
specification; see its docstring).  What differs is how:

- ``ReplyParser.feed`` reads the bytes through the buffer protocol and frames lines with
  ``memchr``; a partial line and the lines of the current reply live in C buffers, and
  Python objects (the line texts, ``raw``, ``Reply``) are created only when a reply is
  complete.
- ``Classifier`` copies the compiled rule tables (``fastmta.classify.rules``) into C arrays.
  One pass over the reply's characters (read in place from the str, no encoding and no
  lower-casing copy) extracts the reply code and the enhanced code, and drives an
  Aho-Corasick DFA over character classes that finds every rule pattern; the patterns
  found switch on their candidate rules in a bit set, and the candidates are checked in
  rule order (command mask, code bit set, enhanced patterns, pattern sets).  Only rules
  with a ``regex`` touch the Python regex engine, and only when everything else holds.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcpy, memset

from collections import deque

from fastmta.classify import rules as _rules
from fastmta.errors import RemoteProtocolError

cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    uint32_t PyUnicode_READ(int kind, void* data, Py_ssize_t index) nogil
    object PyUnicode_FromFormat(const char* fmt, ...)

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
]

DEFAULT_MAX_LINE = 8192
DEFAULT_MAX_REPLY = 65536

cdef object _deque = deque
cdef object _RemoteProtocolError = RemoteProtocolError


# ---------------------------------------------------------------------------------------
# Reply
# ---------------------------------------------------------------------------------------

@cython.final
@cython.freelist(64)
cdef class Reply:
    """One complete SMTP reply (see ``fastmta._core_py.Reply``)."""

    cdef readonly int code
    cdef readonly object enhanced
    cdef readonly tuple lines
    cdef readonly object raw
    cdef readonly object command

    def __init__(self, code, enhanced, lines, raw, command=None):
        self.code = code
        self.enhanced = enhanced
        self.lines = tuple(lines)
        self.raw = raw
        self.command = command

    @property
    def text(self):
        """The lines' text joined by single spaces (enhanced codes stripped)."""
        return " ".join(self.lines)

    @property
    def is_positive(self):
        return 200 <= self.code < 400

    @property
    def is_transient(self):
        return 400 <= self.code < 500

    @property
    def is_permanent(self):
        return self.code >= 500

    def with_command(self, command):
        return _make_reply(self.code, self.enhanced, self.lines, self.raw, command)

    def __eq__(self, other):
        if not isinstance(other, Reply):
            return NotImplemented
        cdef Reply o = <Reply>other
        return (
            self.code == o.code
            and self.enhanced == o.enhanced
            and self.lines == o.lines
            and self.raw == o.raw
            and self.command == o.command
        )

    def __ne__(self, other):
        r = self.__eq__(other)
        if r is NotImplemented:
            return r
        return not r

    def __hash__(self):
        return hash((self.code, self.enhanced, self.lines, self.raw, self.command))

    def __reduce__(self):
        return (Reply, (self.code, self.enhanced, self.lines, self.raw, self.command))

    def __repr__(self):
        return (
            f"Reply(code={self.code!r}, enhanced={self.enhanced!r}, "
            f"lines={self.lines!r}, command={self.command!r})"
        )


cdef inline Reply _make_reply(int code, object enhanced, tuple lines, object raw, object command):
    cdef Reply r = Reply.__new__(Reply)
    r.code = code
    r.enhanced = enhanced
    r.lines = lines
    r.raw = raw
    r.command = command
    return r


# ---------------------------------------------------------------------------------------
# ReplyParser
# ---------------------------------------------------------------------------------------

cdef inline bint _isdig(unsigned char c) nogil:
    return 48 <= c <= 57


cdef inline object _decode(const unsigned char* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<const char*>p, n, "replace")


@cython.final
cdef class ReplyParser:
    """Incremental SMTP reply parser (see ``fastmta._core_py.ReplyParser``)."""

    cdef readonly Py_ssize_t max_line
    cdef readonly Py_ssize_t max_reply
    cdef unsigned char* lbuf          # the partial line carried between feeds
    cdef Py_ssize_t llen, lcap
    cdef unsigned char* rbuf          # lines of the current reply, joined by CRLF
    cdef Py_ssize_t rlen, rcap
    cdef Py_ssize_t* ltext            # per line: offset of its text in rbuf
    cdef Py_ssize_t* lend             # per line: end offset in rbuf
    cdef Py_ssize_t nlines, ncap
    cdef int code
    cdef Py_ssize_t enh_s, enh_e      # enhanced code of the reply in rbuf (enh_s < 0: none)
    cdef Py_ssize_t reply_size
    cdef object _expected
    cdef object _error

    def __cinit__(self):
        self.lbuf = NULL
        self.rbuf = NULL
        self.ltext = NULL
        self.lend = NULL

    def __init__(self, max_line=DEFAULT_MAX_LINE, max_reply=DEFAULT_MAX_REPLY):
        if max_line < 1 or max_reply < 1:
            raise ValueError("max_line and max_reply must be positive")
        self.max_line = max_line
        self.max_reply = max_reply
        self.llen = self.lcap = 0
        self.rlen = self.rcap = 0
        self.nlines = self.ncap = 0
        self.code = -1
        self.enh_s = -1
        self.enh_e = -1
        self.reply_size = 0
        self._expected = _deque()
        self._error = None

    def __dealloc__(self):
        free(self.lbuf)
        free(self.rbuf)
        free(self.ltext)
        free(self.lend)

    def expect(self, command):
        """Announce that ``command`` was sent; the next unclaimed reply answers it."""
        self._expected.append(command)

    @property
    def pending_commands(self):
        """How many announced commands still wait for their reply."""
        return len(self._expected)

    @property
    def buffered(self):
        """Bytes received but not yet part of a complete reply."""
        return self.llen + self.reply_size

    cdef int _fail(self, str msg) except -1:
        self._error = msg
        raise _RemoteProtocolError(msg)

    cdef int _reserve(self, unsigned char** buf, Py_ssize_t* cap, Py_ssize_t need) except -1:
        cdef Py_ssize_t ncap
        cdef unsigned char* nb
        if need <= cap[0]:
            return 0
        ncap = cap[0] * 2 if cap[0] else 256
        while ncap < need:
            ncap *= 2
        nb = <unsigned char*>realloc(buf[0], ncap)
        if nb == NULL:
            raise MemoryError()
        buf[0] = nb
        cap[0] = ncap
        return 0

    cdef int _reserve_lines(self) except -1:
        cdef Py_ssize_t ncap
        cdef Py_ssize_t* a
        cdef Py_ssize_t* b
        if self.nlines < self.ncap:
            return 0
        ncap = self.ncap * 2 if self.ncap else 8
        a = <Py_ssize_t*>realloc(self.ltext, ncap * sizeof(Py_ssize_t))
        if a == NULL:
            raise MemoryError()
        self.ltext = a
        b = <Py_ssize_t*>realloc(self.lend, ncap * sizeof(Py_ssize_t))
        if b == NULL:
            raise MemoryError()
        self.lend = b
        self.ncap = ncap
        return 0

    def feed(self, data):
        """Add received bytes; return the replies they complete (possibly none).

        On a protocol error, raises ``RemoteProtocolError`` whose ``replies`` attribute
        holds the replies completed by this chunk before the bad line.
        """
        cdef Py_buffer view
        cdef const unsigned char* p
        cdef const unsigned char* q
        cdef Py_ssize_t n, pos, eol, end, total
        cdef unsigned char last
        cdef list out = []
        if self._error is not None:
            exc = _RemoteProtocolError(self._error)
            exc.replies = []
            raise exc
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const unsigned char*>view.buf
            n = view.len
            pos = 0
            while pos < n:
                q = <const unsigned char*>memchr(p + pos, 10, n - pos)
                if q == NULL:
                    # One byte more than max_line may be the CR of a CRLF still coming.
                    if self.llen + (n - pos) > self.max_line + 1:
                        self._fail(f"reply line longer than {self.max_line} bytes")
                    self._reserve(&self.lbuf, &self.lcap, self.llen + (n - pos))
                    memcpy(self.lbuf + self.llen, p + pos, n - pos)
                    self.llen += n - pos
                    break
                eol = q - p
                if self.llen > 0:
                    total = self.llen + (eol - pos)
                    last = p[eol - 1] if eol > pos else self.lbuf[self.llen - 1]
                    end = total - 1 if last == 13 else total
                    if end > self.max_line:
                        self._fail(f"reply line longer than {self.max_line} bytes")
                    self._reserve(&self.lbuf, &self.lcap, total)
                    memcpy(self.lbuf + self.llen, p + pos, eol - pos)
                    self.llen = 0
                    self._line(self.lbuf, end, out)
                else:
                    end = eol
                    if end > pos and p[end - 1] == 13:
                        end -= 1
                    if end - pos > self.max_line:
                        self._fail(f"reply line longer than {self.max_line} bytes")
                    self._line(p + pos, end - pos, out)
                pos = eol + 1
        except RemoteProtocolError as exc:
            self.llen = 0
            exc.replies = out
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef int _line(self, const unsigned char* line, Py_ssize_t n, list out) except -1:
        cdef int code
        cdef bint last = False
        cdef Py_ssize_t t0, i, start, base, es, ee
        if n < 3 or not (_isdig(line[0]) and _isdig(line[1]) and _isdig(line[2])):
            self._fail(f"malformed reply line: {PyBytes_FromStringAndSize(<const char*>line, min(n, 40))!r}")
        if line[0] < 50 or line[0] > 53:
            self._fail(f"reply code out of range: {PyBytes_FromStringAndSize(<const char*>line, 3)!r}")
        code = (line[0] - 48) * 100 + (line[1] - 48) * 10 + (line[2] - 48)
        if n == 3:
            last = True
        else:
            if line[3] == 32:
                last = True
            elif line[3] == 45:
                last = False
            else:
                self._fail(f"malformed reply line: {PyBytes_FromStringAndSize(<const char*>line, min(n, 40))!r}")
        if self.code == -1:
            self.code = code
        elif code != self.code:
            self._fail(f"reply code changed inside a reply: {self.code} then {code}")
        self.reply_size += n + 2
        if self.reply_size > self.max_reply:
            self._fail(f"reply longer than {self.max_reply} bytes")
        # Enhanced code at the start of the text: class "." 1-3 digits "." 1-3 digits,
        # then a space or the end of the line.
        t0 = 4 if n > 3 else 3
        es = -1
        ee = -1
        if n - t0 >= 5 and (line[t0] == 50 or line[t0] == 52 or line[t0] == 53) and line[t0 + 1] == 46:
            i = t0 + 2
            start = i
            while i < n and _isdig(line[i]) and i - start < 3:
                i += 1
            if i > start and i < n and line[i] == 46:
                i += 1
                start = i
                while i < n and _isdig(line[i]) and i - start < 3:
                    i += 1
                if i > start and (i == n or line[i] == 32):
                    es = t0
                    ee = i
        # Append the line to the reply buffer (CRLF between lines).
        base = self.rlen + (2 if self.nlines else 0)
        self._reserve(&self.rbuf, &self.rcap, base + n)
        self._reserve_lines()
        if self.nlines:
            self.rbuf[self.rlen] = 13
            self.rbuf[self.rlen + 1] = 10
        memcpy(self.rbuf + base, line, n)
        self.rlen = base + n
        if es >= 0:
            if self.enh_s < 0:
                self.enh_s = base + es
                self.enh_e = base + ee
            self.ltext[self.nlines] = base + (ee + 1 if ee < n else ee)
        else:
            self.ltext[self.nlines] = base + t0
        self.lend[self.nlines] = base + n
        self.nlines += 1
        if last:
            out.append(self._complete())
        return 0

    cdef Reply _complete(self):
        cdef Py_ssize_t k
        cdef tuple lines = _line_texts(self)
        raw = _decode(self.rbuf, self.rlen)
        if self.enh_s >= 0:
            enhanced = PyUnicode_DecodeUTF8(<const char*>(self.rbuf + self.enh_s), self.enh_e - self.enh_s, NULL)
        else:
            enhanced = None
        command = self._expected.popleft() if self._expected else None
        r = _make_reply(self.code, enhanced, lines, raw, command)
        self.rlen = 0
        self.nlines = 0
        self.code = -1
        self.enh_s = -1
        self.enh_e = -1
        self.reply_size = 0
        return r


cdef tuple _line_texts(ReplyParser p):
    cdef Py_ssize_t k
    cdef list items = []
    for k in range(p.nlines):
        items.append(_decode(p.rbuf + p.ltext[k], p.lend[k] - p.ltext[k]))
    return tuple(items)


def parse_reply(data, command=None):
    """Parse exactly one complete reply (a convenience for tests and the CLI)."""
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
# Classification
# ---------------------------------------------------------------------------------------

@cython.final
@cython.freelist(64)
cdef class Classification:
    """The verdict on one reply (see ``fastmta._core_py.Classification``)."""

    cdef readonly int code
    cdef readonly object enhanced
    cdef readonly int bounce_class
    cdef readonly object type
    cdef readonly object reason
    cdef readonly bint throttle
    cdef readonly object action
    cdef readonly object rule

    def __init__(self, code, enhanced, bounce_class, type, reason, throttle, action, rule):
        self.code = code
        self.enhanced = enhanced
        self.bounce_class = bounce_class
        self.type = type
        self.reason = reason
        self.throttle = throttle
        self.action = action
        self.rule = rule

    def to_dict(self):
        return {
            "code": self.code,
            "enhanced": self.enhanced,
            "bounce_class": self.bounce_class,
            "type": self.type,
            "reason": self.reason,
            "throttle": self.throttle,
            "action": self.action,
            "rule": self.rule,
        }

    def _key(self):
        return (self.code, self.enhanced, self.bounce_class, self.type, self.reason,
                self.throttle, self.action, self.rule)

    def __eq__(self, other):
        if not hasattr(other, "to_dict") or not hasattr(other, "bounce_class"):
            return NotImplemented
        return self._key() == tuple(other.to_dict().values())

    def __ne__(self, other):
        r = self.__eq__(other)
        if r is NotImplemented:
            return r
        return not r

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        return (Classification, self._key())

    def __repr__(self):
        return (
            f"Classification(code={self.code!r}, enhanced={self.enhanced!r}, "
            f"bounce_class={self.bounce_class!r}, type={self.type!r}, reason={self.reason!r}, "
            f"throttle={self.throttle!r}, action={self.action!r}, rule={self.rule!r})"
        )


# ---------------------------------------------------------------------------------------
# Lenient code extraction over str characters (same rules as the reference)
# ---------------------------------------------------------------------------------------

cdef inline bint _ws(uint32_t c) nogil:
    return c == 32 or (9 <= c <= 13)


cdef inline bint _dig(uint32_t c) nogil:
    return 48 <= c <= 57


cdef inline bint _alnum(uint32_t c) nogil:
    return (48 <= c <= 57) or (97 <= c <= 122) or (65 <= c <= 90)


cdef inline bint _code_prev(uint32_t c) nogil:
    # whitespace ( " ' < [ ; , : =
    return _ws(c) or c == 40 or c == 34 or c == 39 or c == 60 or c == 91 or c == 59 or c == 44 or c == 58 or c == 61


cdef inline bint _code_next(uint32_t c) nogil:
    # whitespace - : , ; ) ' " > ]
    return _ws(c) or c == 45 or c == 58 or c == 44 or c == 59 or c == 41 or c == 39 or c == 34 or c == 62 or c == 93


cdef inline bint _enh_gap(uint32_t c) nogil:
    # space - ' " : # (
    return c == 32 or c == 45 or c == 39 or c == 34 or c == 58 or c == 35 or c == 40


ctypedef fused char_t:
    uint8_t
    uint16_t
    uint32_t


cdef int _scan_code(const char_t* d, Py_ssize_t n, Py_ssize_t j, bint failures_only, Py_ssize_t* end) nogil:
    cdef uint32_t c
    while j + 3 <= n:
        c = d[j]
        if ((c == 52 or c == 53 or (c == 50 and not failures_only))
                and _dig(d[j + 1]) and _dig(d[j + 2])
                and _code_prev(d[j - 1])
                and (j + 3 == n or _code_next(d[j + 3]))):
            end[0] = j + 3
            return ((c - 48) * 100 + (d[j + 1] - 48) * 10
                    + (d[j + 2] - 48))
        j += 1
    end[0] = -1
    return 0


cdef int _find_code(const char_t* d, Py_ssize_t n, Py_ssize_t* end) nogil:
    cdef Py_ssize_t i = 0
    cdef uint32_t c, c3 = 0
    cdef int code, later
    cdef Py_ssize_t lend
    while i < n and _ws(d[i]):
        i += 1
    if i + 3 <= n:
        c = d[i]
        if (50 <= c <= 53 and _dig(d[i + 1])
                and _dig(d[i + 2])):
            if i + 3 < n:
                c3 = d[i + 3]
            if i + 3 == n or (not _dig(c3) and c3 != 46):
                code = ((c - 48) * 100 + (d[i + 1] - 48) * 10
                        + (d[i + 2] - 48))
                if code < 400:
                    later = _scan_code(d, n, i + 3, True, &lend)
                    if later:
                        end[0] = lend
                        return later
                end[0] = i + 3
                return code
    return _scan_code(d, n, i + 1, False, end)


cdef bint _enh_at(const char_t* d, Py_ssize_t n, Py_ssize_t j, int* ec, int* es, int* ed) nogil:
    cdef uint32_t c, pc
    cdef Py_ssize_t k, a, b
    cdef int subj, det
    if j + 5 > n:
        return False
    c = d[j]
    if not (c == 50 or c == 52 or c == 53) or d[j + 1] != 46:
        return False
    if j > 0:
        pc = d[j - 1]
        if _alnum(pc) or pc == 46:
            return False
    k = j + 2
    a = k
    subj = 0
    while k < n and _dig(d[k]) and k - a < 3:
        subj = subj * 10 + <int>(d[k] - 48)
        k += 1
    if k == a or k >= n or d[k] != 46:
        return False
    k += 1
    b = k
    det = 0
    while k < n and _dig(d[k]) and k - b < 3:
        det = det * 10 + <int>(d[k] - 48)
        k += 1
    if k == b:
        return False
    if k < n:
        pc = d[k]
        if _alnum(pc) or (pc == 46 and k + 1 < n and _dig(d[k + 1])):
            return False
    ec[0] = c - 48
    es[0] = subj
    ed[0] = det
    return True


cdef bint _find_enhanced(const char_t* d, Py_ssize_t n, Py_ssize_t after,
                         int* ec, int* es, int* ed) nogil:
    cdef Py_ssize_t j
    if after >= 0:
        j = after
        while j < n and j - after < 2 and _enh_gap(d[j]):
            j += 1
        if _enh_at(d, n, j, ec, es, ed):
            return True
    j = 0
    while j + 5 <= n:
        if _enh_at(d, n, j, ec, es, ed):
            return True
        j += 1
    return False


cdef bint _extract(int kind, void* d, Py_ssize_t n, int* code, int* ec, int* es, int* ed) noexcept nogil:
    """Reply code and enhanced code of a str's data, specialised by storage width."""
    cdef Py_ssize_t end
    if kind == 1:
        code[0] = _find_code(<const uint8_t*>d, n, &end)
        return _find_enhanced(<const uint8_t*>d, n, end, ec, es, ed)
    if kind == 2:
        code[0] = _find_code(<const uint16_t*>d, n, &end)
        return _find_enhanced(<const uint16_t*>d, n, end, ec, es, ed)
    code[0] = _find_code(<const uint32_t*>d, n, &end)
    return _find_enhanced(<const uint32_t*>d, n, end, ec, es, ed)


cdef bint _parse_enh_str(str s, int* ec, int* es, int* ed) except -1:
    """Parse "c.s.d" (a Reply's enhanced code) without Python objects."""
    cdef int kind = PyUnicode_KIND(s)
    cdef void* d = PyUnicode_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s), i = 0
    cdef int part = 0, ndig = 0, v = 0
    cdef int vals[3]
    cdef uint32_t c
    while i < n:
        c = PyUnicode_READ(kind, d, i)
        if _dig(c) and ndig < 9:
            v = v * 10 + <int>(c - 48)
            ndig += 1
        elif c == 46 and ndig and part < 2:
            vals[part] = v
            part += 1
            v = 0
            ndig = 0
        else:
            raise ValueError(f"bad enhanced status code {s!r}")
        i += 1
    if part != 2 or not ndig:
        raise ValueError(f"bad enhanced status code {s!r}")
    ec[0] = vals[0]
    es[0] = vals[1]
    ed[0] = v
    return True


cdef dict _ENH_STR = {}


cdef object _enh_str(int ec, int es, int ed):
    """The text of an enhanced code, interned: replies repeat a few dozen codes, and
    building the string is a third of the cost of a short classification."""
    cdef long key = ec * 1000000 + es * 1000 + ed
    s = _ENH_STR.get(key)
    if s is None:
        s = PyUnicode_FromFormat("%d.%d.%d", ec, es, ed)
        if len(_ENH_STR) < 8192:
            _ENH_STR[key] = s
    return s


def extract_codes(text):
    """(reply code or 0, enhanced code string or None) found leniently in ``text``."""
    cdef str s = text
    cdef int code, ec, es, ed
    if _extract(PyUnicode_KIND(s), PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s), &code, &ec, &es, &ed):
        return code, _enh_str(ec, es, ed)
    return code, None


# ---------------------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------------------

cdef enum:
    CODE_WORDS = 10          # 606 code bits (see _rules.CODE_BITS)

cdef dict _PHASE_BIT = dict(_rules.PHASE_BIT)
cdef uint32_t _PHASE_NONE = _rules.PHASE_NONE
cdef uint32_t _PHASE_OTHER = _rules.PHASE_OTHER


cdef int32_t* _copy_i32(object arr, Py_ssize_t* count) except? NULL:
    cdef Py_ssize_t n = len(arr), i
    cdef int32_t* out = <int32_t*>malloc((n if n else 1) * sizeof(int32_t))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        out[i] = arr[i]
    if count != NULL:
        count[0] = n
    return out


@cython.final
cdef class Classifier:
    """A compiled rule set and the matcher over it (see ``fastmta._core_py.Classifier``).

    One instance is meant for one thread (the compiled one keeps its scan state in the
    instance); the engine uses one per worker process.
    """

    cdef readonly object rules
    cdef int nc, shift, space_class, n_patterns, n_rules, pat_words, rule_words
    cdef uint8_t cc[256]             # character -> class (0 for non-ASCII and unused)
    cdef uint8_t* hasout             # per state: does it recognise a pattern
    cdef uint16_t* delta             # DFA transitions (state * nc + class), < 65536 states
    cdef int32_t* out_off
    cdef int32_t* out_ids
    cdef int32_t* trig_off
    cdef int32_t* trig_rules
    cdef uint64_t* base_cand
    cdef uint64_t* cand
    cdef uint64_t* found
    cdef int32_t* found_list
    cdef int n_found
    cdef uint32_t* cmd_mask
    cdef uint64_t* code_bits
    cdef uint8_t* has_code
    cdef int32_t* enh_off
    cdef int32_t* enh_pat
    cdef int32_t* any_off
    cdef int32_t* any_ids
    cdef int32_t* all_off
    cdef int32_t* all_ids
    cdef int32_t* not_off
    cdef int32_t* not_ids
    cdef uint8_t* has_regex
    cdef list r_regex
    cdef list r_name
    cdef list r_type
    cdef list r_reason
    cdef list r_action
    cdef int32_t* r_class
    cdef uint8_t* r_throttle

    def __cinit__(self):
        self.delta = NULL
        self.hasout = NULL
        self.out_off = self.out_ids = self.trig_off = self.trig_rules = NULL
        self.base_cand = self.cand = self.found = self.code_bits = NULL
        self.found_list = self.enh_off = self.enh_pat = NULL
        self.any_off = self.any_ids = self.all_off = self.all_ids = NULL
        self.not_off = self.not_ids = self.r_class = NULL
        self.cmd_mask = NULL
        self.has_code = self.has_regex = self.r_throttle = NULL

    def __init__(self, rules=None):
        cdef Py_ssize_t i, j, w, nr, npat
        if rules is None:
            rules = _rules.compile_rules(_rules.default_rule_files())
        self.rules = rules
        rl = rules.rules
        nr = len(rl)
        npat = len(rules.patterns)
        self.n_rules = nr
        self.n_patterns = npat
        self.rule_words = (nr + 63) // 64
        self.pat_words = (npat + 63) // 64 if npat else 1
        self.nc = rules.n_classes
        self.space_class = rules.space_class
        cc = rules.char_class
        for i in range(256):
            self.cc[i] = cc[i] if i < 128 else 0
        ho = rules.has_output
        self.hasout = <uint8_t*>malloc(len(ho) if len(ho) else 1)
        if self.hasout == NULL:
            raise MemoryError()
        for i in range(len(ho)):
            self.hasout[i] = ho[i]
        if rules.n_states > 65535:
            raise ValueError(f"bounce rules too large: {rules.n_states} automaton states (max 65535)")
        # Rows padded to a power of two: the next row is found with a shift, not a
        # multiply, on the dependency chain of the scan.
        self.shift = 0
        while (1 << self.shift) < self.nc:
            self.shift += 1
        dl = rules.delta
        nst = rules.n_states
        self.delta = <uint16_t*>malloc(((nst << self.shift) if nst else 1) * sizeof(uint16_t))
        if self.delta == NULL:
            raise MemoryError()
        memset(self.delta, 0, (nst << self.shift) * sizeof(uint16_t))
        for i in range(nst):
            for j in range(self.nc):
                self.delta[(i << self.shift) + j] = dl[i * self.nc + j]
        self.out_off = _copy_i32(rules.out_off, NULL)
        self.out_ids = _copy_i32(rules.out_ids, NULL)
        self.trig_off = _copy_i32(rules.trigger_off, NULL)
        self.trig_rules = _copy_i32(rules.trigger_rules, NULL)
        self.base_cand = <uint64_t*>malloc(self.rule_words * sizeof(uint64_t))
        self.cand = <uint64_t*>malloc(self.rule_words * sizeof(uint64_t))
        self.found = <uint64_t*>malloc(self.pat_words * sizeof(uint64_t))
        self.found_list = <int32_t*>malloc((npat if npat else 1) * sizeof(int32_t))
        self.cmd_mask = <uint32_t*>malloc(nr * sizeof(uint32_t))
        self.code_bits = <uint64_t*>malloc(nr * CODE_WORDS * sizeof(uint64_t))
        self.has_code = <uint8_t*>malloc(nr)
        self.has_regex = <uint8_t*>malloc(nr)
        self.r_throttle = <uint8_t*>malloc(nr)
        self.r_class = <int32_t*>malloc(nr * sizeof(int32_t))
        if (self.base_cand == NULL or self.cand == NULL or self.found == NULL
                or self.found_list == NULL or self.cmd_mask == NULL or self.code_bits == NULL
                or self.has_code == NULL or self.has_regex == NULL or self.r_throttle == NULL
                or self.r_class == NULL):
            raise MemoryError()
        memset(self.base_cand, 0, self.rule_words * sizeof(uint64_t))
        memset(self.found, 0, self.pat_words * sizeof(uint64_t))
        self.n_found = 0
        for i in rules.always:
            self.base_cand[i >> 6] |= (<uint64_t>1) << (i & 63)
        enh_off = [0]
        enh_pat = []
        any_off = [0]
        any_ids = []
        all_off = [0]
        all_ids = []
        not_off = [0]
        not_ids = []
        self.r_regex = []
        self.r_name = []
        self.r_type = []
        self.r_reason = []
        self.r_action = []
        for i in range(nr):
            r = rl[i]
            if r.index != i:
                raise ValueError("rule indices out of order")
            self.cmd_mask[i] = r.cmd_mask
            bits = r.code_bits
            self.has_code[i] = 1 if bits else 0
            for w in range(CODE_WORDS):
                self.code_bits[i * CODE_WORDS + w] = (bits >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
            for e in r.enh:
                enh_pat.extend(e)
            enh_off.append(len(enh_pat) // 3)
            any_ids.extend(r.any_ids)
            any_off.append(len(any_ids))
            all_ids.extend(r.all_ids)
            all_off.append(len(all_ids))
            not_ids.extend(r.not_ids)
            not_off.append(len(not_ids))
            self.has_regex[i] = r.regex is not None
            self.r_regex.append(r.regex)
            self.r_name.append(r.name)
            self.r_type.append(r.type)
            self.r_reason.append(r.reason)
            self.r_action.append(r.action)
            self.r_class[i] = r.bounce_class
            self.r_throttle[i] = 1 if r.throttle else 0
        self.enh_off = _copy_i32(enh_off, NULL)
        self.enh_pat = _copy_i32(enh_pat, NULL)
        self.any_off = _copy_i32(any_off, NULL)
        self.any_ids = _copy_i32(any_ids, NULL)
        self.all_off = _copy_i32(all_off, NULL)
        self.all_ids = _copy_i32(all_ids, NULL)
        self.not_off = _copy_i32(not_off, NULL)
        self.not_ids = _copy_i32(not_ids, NULL)

    def __dealloc__(self):
        free(self.delta); free(self.hasout); free(self.out_off); free(self.out_ids)
        free(self.trig_off); free(self.trig_rules)
        free(self.base_cand); free(self.cand); free(self.found); free(self.found_list)
        free(self.cmd_mask); free(self.code_bits); free(self.has_code); free(self.has_regex)
        free(self.r_throttle); free(self.r_class)
        free(self.enh_off); free(self.enh_pat)
        free(self.any_off); free(self.any_ids); free(self.all_off); free(self.all_ids)
        free(self.not_off); free(self.not_ids)

    @property
    def sources(self):
        return list(self.rules.sources)

    def classify(self, reply, command=None):
        """Classify ``reply`` (``Reply``, str or bytes) answered to ``command``."""
        return self._classify(reply, command)

    cdef inline void _emit(self, int32_t state) noexcept nogil:
        cdef int32_t k, pid, t
        for k in range(self.out_off[state], self.out_off[state + 1]):
            pid = self.out_ids[k]
            if not (self.found[pid >> 6] >> (pid & 63)) & 1:
                self.found[pid >> 6] |= (<uint64_t>1) << (pid & 63)
                self.found_list[self.n_found] = pid
                self.n_found += 1
                for t in range(self.trig_off[pid], self.trig_off[pid + 1]):
                    self.cand[self.trig_rules[t] >> 6] |= (<uint64_t>1) << (self.trig_rules[t] & 63)

    cdef inline bint _has(self, int32_t pid) noexcept nogil:
        return (self.found[pid >> 6] >> (pid & 63)) & 1

    cdef uint32_t _scan_begin(self) noexcept nogil:
        """Reset the found patterns and candidates; feed the leading space."""
        cdef Py_ssize_t i
        cdef uint32_t state
        for i in range(self.n_found):
            self.found[self.found_list[i] >> 6] = 0
        self.n_found = 0
        memcpy(self.cand, self.base_cand, self.rule_words * sizeof(uint64_t))
        state = self.delta[self.space_class]
        if self.hasout[state]:
            self._emit(state)
        return state

    cdef uint32_t _scan_space(self, uint32_t state) noexcept nogil:
        state = self.delta[(state << self.shift) + self.space_class]
        if self.hasout[state]:
            self._emit(state)
        return state

    cdef uint32_t _scan_text(self, uint32_t state, int kind, void* d, Py_ssize_t n) noexcept nogil:
        """Run the automaton over one string (whitespace runs collapse inside the
        automaton: states entered by a space loop on whitespace)."""
        cdef Py_ssize_t i
        cdef uint32_t ch
        cdef uint32_t sh = self.shift
        cdef uint16_t* delta = self.delta
        cdef uint8_t* hasout = self.hasout
        cdef const uint8_t* cc = self.cc
        cdef const uint8_t* d1
        cdef const uint16_t* d2
        cdef const uint32_t* d4
        if kind == 1:
            # Latin-1 storage (nearly every reply): one table lookup per character.
            d1 = <const uint8_t*>d
            for i in range(n):
                state = delta[(state << sh) + cc[d1[i]]]
                if hasout[state]:
                    self._emit(state)
        elif kind == 2:
            d2 = <const uint16_t*>d
            for i in range(n):
                ch = d2[i]
                state = delta[(state << sh) + (cc[ch] if ch < 256 else 0)]
                if hasout[state]:
                    self._emit(state)
        else:
            d4 = <const uint32_t*>d
            for i in range(n):
                ch = d4[i]
                state = delta[(state << sh) + (cc[ch] if ch < 256 else 0)]
                if hasout[state]:
                    self._emit(state)
        return state

    cdef Classification _classify(self, object reply, object command):
        cdef str text = None
        cdef int code
        cdef int ec = 0, es = 0, ed = 0, kind, rtype
        cdef bint has_enh
        cdef Py_ssize_t end, n
        cdef void* d
        cdef object enhanced
        cdef uint32_t phase
        cdef int cm, w, r, j, pc, ps, pd
        cdef uint64_t bits
        cdef bint ok
        cdef Reply rp
        cdef Classification res
        cdef tuple lines = None
        cdef uint32_t state
        cdef str line
        cdef bint from_text = True
        code = 0
        enhanced = None
        if type(reply) is str:
            text = <str>reply
        elif type(reply) is Reply:
            rp = <Reply>reply
            from_text = False
            lines = rp.lines
            enhanced = rp.enhanced
            code = rp.code
            if command is None:
                command = rp.command
        elif isinstance(reply, str):
            text = str(reply)
        elif isinstance(reply, (bytes, bytearray, memoryview)):
            text = bytes(reply).decode("utf-8", "replace")
        else:
            from_text = False
            try:
                code = reply.code
                enhanced = reply.enhanced
                lines = tuple(reply.lines)
                if command is None:
                    command = reply.command
            except AttributeError:
                raise TypeError(
                    f"classify() needs a Reply, str or bytes, not {type(reply).__name__}"
                ) from None
        if from_text:
            kind = PyUnicode_KIND(text)
            d = PyUnicode_DATA(text)
            n = PyUnicode_GET_LENGTH(text)
            has_enh = _extract(kind, d, n, &code, &ec, &es, &ed)
            if has_enh:
                enhanced = _enh_str(ec, es, ed)
        else:
            has_enh = enhanced is not None
            if has_enh:
                _parse_enh_str(enhanced, &ec, &es, &ed)
        if command is None:
            phase = _PHASE_NONE
        else:
            if not isinstance(command, str):
                raise TypeError("command must be a str or None")
            b = _PHASE_BIT.get(command)
            if b is None:
                b = _PHASE_BIT.get(command.lower(), _PHASE_OTHER)
            phase = b
        if code:
            cm = code
        elif has_enh:
            cm = 600 + ec
        else:
            cm = 0
        if cm < 0 or cm >= 64 * CODE_WORDS:
            cm = 64 * CODE_WORDS - 1     # impossible code (reply objects built by hand)
        if from_text:
            state = self._scan_begin()
            state = self._scan_text(state, kind, d, n)
            self._scan_space(state)
        else:
            # A Reply: match on its lines (codes and continuation prefixes stripped), as
            # if joined by spaces, without building the joined string.
            state = self._scan_begin()
            for j in range(len(lines)):
                line = <str?>lines[j]
                if j:
                    state = self._scan_space(state)
                state = self._scan_text(state, PyUnicode_KIND(line), PyUnicode_DATA(line),
                                        PyUnicode_GET_LENGTH(line))
            self._scan_space(state)
        lowered = None
        for w in range(self.rule_words):
            bits = self.cand[w]
            while bits:
                r = w * 64 + _ctz(bits)
                bits &= bits - 1
                if self.cmd_mask[r] and not (self.cmd_mask[r] & phase):
                    continue
                if self.has_code[r] and not (self.code_bits[r * CODE_WORDS + (cm >> 6)] >> (cm & 63)) & 1:
                    continue
                if self.enh_off[r] != self.enh_off[r + 1]:
                    ok = False
                    for j in range(self.enh_off[r], self.enh_off[r + 1]):
                        pc = self.enh_pat[3 * j]
                        ps = self.enh_pat[3 * j + 1]
                        pd = self.enh_pat[3 * j + 2]
                        if pc == 0:
                            if not has_enh:
                                ok = True
                                break
                        elif has_enh and (pc == -1 or pc == ec) and (ps == -1 or ps == es) and (pd == -1 or pd == ed):
                            ok = True
                            break
                    if not ok:
                        continue
                if self.any_off[r] != self.any_off[r + 1]:
                    ok = False
                    for j in range(self.any_off[r], self.any_off[r + 1]):
                        if self._has(self.any_ids[j]):
                            ok = True
                            break
                    if not ok:
                        continue
                ok = True
                for j in range(self.all_off[r], self.all_off[r + 1]):
                    if not self._has(self.all_ids[j]):
                        ok = False
                        break
                if not ok:
                    continue
                for j in range(self.not_off[r], self.not_off[r + 1]):
                    if self._has(self.not_ids[j]):
                        ok = False
                        break
                if not ok:
                    continue
                if self.has_regex[r]:
                    if lowered is None:
                        lowered = (text if from_text else " ".join(lines)).lower()
                    if self.r_regex[r].search(lowered) is None:
                        continue
                res = Classification.__new__(Classification)
                res.code = code
                res.enhanced = enhanced
                res.bounce_class = self.r_class[r]
                res.type = self.r_type[r]
                res.reason = self.r_reason[r]
                res.throttle = self.r_throttle[r]
                res.action = self.r_action[r]
                res.rule = self.r_name[r]
                return res
        return Classification(code, enhanced, 1, "soft", "not_defined", False, "retry", "default")


cdef extern from *:
    """
    static inline int fastmta_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    """
    int _ctz "fastmta_ctz64"(uint64_t x) nogil


cdef Classifier _default = None


def default_classifier():
    """The process-wide classifier (packaged rules + ``FASTMTA_BOUNCE_RULES``), built once."""
    global _default
    if _default is None:
        _default = Classifier()
    return _default


def load_rules(rule_files=None, *, packaged=True):
    """Rebuild the default classifier from operator rule files (they take precedence)."""
    global _default
    if not rule_files:
        files = _rules.default_rule_files()
    elif isinstance(rule_files, str):
        files = [rule_files]
    else:
        files = list(rule_files)
    _default = Classifier(_rules.compile_rules(files, packaged=packaged))
    return _default


def classify(reply, command=None):
    """Classify one reply with the default rules (see ``Classifier.classify``)."""
    cdef Classifier c = _default
    if c is None:
        c = default_classifier()
    return c._classify(reply, command)
