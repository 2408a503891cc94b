# _core_reply.pxi: included by fastmta/_core.pyx (one extension module, fastmta._core);
# uses the cimports and module constants declared there.
#
# The wire side: ``Reply`` (one complete SMTP reply), ``ReplyParser`` (streaming,
# pipelining-aware parser over the buffer protocol) and ``parse_reply``.

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
