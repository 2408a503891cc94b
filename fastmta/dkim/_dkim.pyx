# cython: language_level=3
"""Compiled DKIM canonicalisation (twin of ``fastmta.dkim._dkim_py``, which is the spec).

Same names, same results: ``parse_headers``, ``relaxed_header``, ``body_relaxed``,
``body_simple``.  Each is one pass over the bytes in C; the hashing and the
private-key operation stay in OpenSSL (hashlib / cryptography).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdlib cimport free, malloc, realloc
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy

__all__ = [
    "parse_headers",
    "relaxed_header",
    "signed_headers",
    "body_relaxed",
    "body_simple",
    "IMPL",
]

IMPL = "compiled"

cdef extern from *:
    """
    /* Index of the first byte flagged in a "has a byte < n" mask of a word loaded
       with memcpy: the lowest set bit on little-endian machines.  Elsewhere 0, which
       only means the fast skip copies nothing and the byte-wise path takes over. */
    static inline int fm_first_flagged_byte(unsigned long long mask) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \
        && (defined(__GNUC__) || defined(__clang__))
        return __builtin_ctzll(mask) >> 3;
    #else
        (void)mask;
        return 0;
    #endif
    }
    """
    int fm_first_flagged_byte(unsigned long long mask) noexcept nogil


cdef inline bint _is_wsp(unsigned char c) noexcept nogil:
    return c == 32 or c == 9

cdef inline bint _is_ftext(unsigned char c) noexcept nogil:
    return 33 <= c <= 126 and c != 58


cdef bytes _normalize_field(bytes raw):
    """Re-join a field whose lines end with bare LF (or no LF) with CRLF line ends."""
    if raw.endswith(b"\n"):
        raw = raw[:len(raw) - 1]
    lines = raw.split(b"\n")
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:len(line) - 1]
        out.append(line)
    return b"\r\n".join(out) + b"\r\n"


cdef bytes _lower(const unsigned char* p, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if 65 <= c <= 90:
            c += 32
        o[i] = c
    return out


def parse_headers(message):
    """Split the header section into ``(lowercase_name, raw_field)``; return it and the
    body offset.  Raises ValueError for a line that is not a header field."""
    cdef bytes data = message if type(message) is bytes else bytes(message)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = 0, e, ce, j, name_end, fstart = -1, fend = 0
    cdef bint clean = True, line_clean
    cdef const unsigned char* q
    cdef int lineno = 0
    cdef list fields = []
    cdef bytes name = b""
    cdef bytes raw
    while i < n:
        lineno += 1
        q = <const unsigned char*>memchr(p + i, 10, n - i)
        if q == NULL:
            e = n
            ce = n
            if ce > i and p[ce - 1] == 13:
                ce -= 1
            line_clean = False
        else:
            e = q - p
            ce = e
            if ce > i and p[ce - 1] == 13:
                ce -= 1
                line_clean = True
            else:
                line_clean = False
        if ce == i:
            # Empty line (or a lone CR at the very end): the header section ends.
            if q != NULL:
                if fstart >= 0:
                    raw = data[fstart:fend]
                    fields.append((name, raw if clean else _normalize_field(raw)))
                return fields, e + 1
            break  # a lone CR at the very end of a message without a body
        if _is_wsp(p[i]):
            if fstart < 0:
                raise ValueError("the message starts with a continuation line")
            clean = clean and line_clean
            fend = e + 1 if q != NULL else n
            i = e + 1
            continue
        j = i
        while j < ce and _is_ftext(p[j]):
            j += 1
        name_end = j
        while j < ce and _is_wsp(p[j]):
            j += 1
        if name_end == i or j >= ce or p[j] != 58:
            line = data[i:ce]
            raise ValueError(
                f"header line {lineno} is not a header field (no 'name:'): {line[:40]!r}"
            )
        if fstart >= 0:
            raw = data[fstart:fend]
            fields.append((name, raw if clean else _normalize_field(raw)))
        name = _lower(p + i, name_end - i)
        fstart = i
        fend = e + 1 if q != NULL else n
        clean = line_clean
        i = e + 1
    if fstart >= 0:
        raw = data[fstart:fend]
        fields.append((name, raw if clean else _normalize_field(raw)))
    return fields, n


cdef Py_ssize_t _relaxed_into(const unsigned char* p, Py_ssize_t n, unsigned char* w) noexcept nogil:
    """Write the relaxed form of the field p[0:n] to w (room for n + 3); return its size."""
    cdef Py_ssize_t colon = 0, i, o = 0, name_end
    cdef unsigned char c
    cdef bint pending = False, started = False
    while colon < n and p[colon] != 58:
        colon += 1
    name_end = colon
    while name_end > 0 and _is_wsp(p[name_end - 1]):
        name_end -= 1
    for i in range(name_end):
        c = p[i]
        if 65 <= c <= 90:
            c += 32
        w[o] = c
        o += 1
    w[o] = 58
    o += 1
    i = colon + 1
    while i < n:
        c = p[i]
        if c == 13 and i + 1 < n and p[i + 1] == 10:
            i += 2
            continue
        if c == 10:
            i += 1
            continue
        if c == 32 or c == 9:
            pending = True
            i += 1
            continue
        if pending and started:
            w[o] = 32
            o += 1
        pending = False
        started = True
        w[o] = c
        o += 1
        i += 1
    w[o] = 13
    w[o + 1] = 10
    return o + 2


def relaxed_header(raw_field):
    """Relaxed canonical form of one header field (RFC 6376 section 3.4.2)."""
    cdef bytes data = raw_field if type(raw_field) is bytes else bytes(raw_field)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 3)
    cdef Py_ssize_t o = _relaxed_into(
        <const unsigned char*>PyBytes_AS_STRING(data), n,
        <unsigned char*>PyBytes_AS_STRING(out))
    return out[:o]


def signed_headers(list fields, names, bint relaxed):
    """Select and canonicalise the fields of ``h=`` (see ``_dkim_py.signed_headers``)."""
    cdef Py_ssize_t nf = PyList_GET_SIZE(fields), i, cap = 256, o = 0, ln, rn
    cdef object item, lname, over
    cdef bytes fname, raw
    cdef list hnames = []
    cdef list fnames = [], raws = []
    for item in fields:
        fname, raw = item
        if type(fname) is not bytes or type(raw) is not bytes:
            raise TypeError("fields must be (bytes, bytes) pairs")
        fnames.append(fname)
        raws.append(raw)
        cap += PyBytes_GET_SIZE(raw) + 3
    cdef unsigned char* w = <unsigned char*>malloc(cap)
    cdef unsigned char* grown
    if w == NULL:
        raise MemoryError()
    cdef const char* lp
    try:
        for lname, over in names:
            if type(lname) is not bytes:
                raise TypeError("header names must be bytes")
            lp = PyBytes_AS_STRING(lname)
            ln = PyBytes_GET_SIZE(lname)
            i = nf - 1
            while i >= 0:
                fname = <bytes>PyList_GET_ITEM(fnames, i)
                if PyBytes_GET_SIZE(fname) == ln and memcmp(PyBytes_AS_STRING(fname), lp, ln) == 0:
                    hnames.append(lname)
                    raw = <bytes>PyList_GET_ITEM(raws, i)
                    rn = PyBytes_GET_SIZE(raw)
                    if o + rn + 3 > cap:  # a name listed twice selects fields twice
                        cap = 2 * cap + rn + 3
                        grown = <unsigned char*>realloc(w, cap)
                        if grown == NULL:
                            raise MemoryError()
                        w = grown
                    if relaxed:
                        o += _relaxed_into(<const unsigned char*>PyBytes_AS_STRING(raw), rn, w + o)
                    else:
                        memcpy(w + o, PyBytes_AS_STRING(raw), rn)
                        o += rn
                i -= 1
            if over:
                hnames.append(lname)
        return hnames, PyBytes_FromStringAndSize(<char*>w, o)
    finally:
        free(w)


cdef inline Py_ssize_t _strip_trailing_lines(unsigned char* w, Py_ssize_t o) noexcept nogil:
    """Drop empty lines at the end; a non-empty body ends with CRLF (room for 2 bytes)."""
    while o >= 2 and w[o - 2] == 13 and w[o - 1] == 10:
        o -= 2
    if o == 0:
        return 0
    w[o] = 13
    w[o + 1] = 10
    return o + 2


def body_simple(body, Py_ssize_t start=0):
    """Simple canonical body of ``body[start:]`` (RFC 6376 section 3.4.3)."""
    cdef bytes data = body if type(body) is bytes else bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = start, o = 0, k
    cdef const unsigned char* q
    if start < 0 or start > n:
        raise ValueError("start out of range")
    cdef unsigned char* w = <unsigned char*>malloc(2 * (n - start) + 4)
    if w == NULL:
        raise MemoryError()
    try:
        while i < n:
            q = <const unsigned char*>memchr(p + i, 10, n - i)
            if q == NULL:
                memcpy(w + o, p + i, n - i)
                o += n - i
                break
            k = q - p
            memcpy(w + o, p + i, k - i)
            o += k - i
            if k == i or p[k - 1] != 13:
                w[o] = 13
                o += 1
            w[o] = 10
            o += 1
            i = k + 1
        o = _strip_trailing_lines(w, o)
        if o == 0:
            return b"\r\n"
        return PyBytes_FromStringAndSize(<char*>w, o)
    finally:
        free(w)


cdef bint _relaxed_clean(const unsigned char* p, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    """True when ``p[start:n]`` is its own relaxed canonical form, so canonicalising
    would only copy it: no tab, every space followed by a byte > 0x20 (no WSP run, no
    WSP at a line end), every CR followed by LF and every LF preceded by CR, and the
    body ends with exactly one CRLF after a non-empty line.  Conservative: False only
    means the full canonicalisation runs (a space before a control byte, say)."""
    cdef Py_ssize_t i = start, e
    cdef uint64_t x, y, f, g
    cdef unsigned char c
    if n - start < 3 or p[n - 2] != 13 or p[n - 1] != 10 or p[n - 3] == 10:
        return False
    while i < n:
        # 8 bytes at a time: bytes < 0x21 flagged (exact for the lowest one, never
        # missing one); a word whose flagged bytes are all lone spaces passes at once
        if i + 9 <= n:
            memcpy(&x, p + i, 8)
            f = (x - <uint64_t>0x2121212121212121) & ~x & <uint64_t>0x8080808080808080
            if f == 0:
                i += 8
                continue
            memcpy(&y, p + i + 1, 8)
            g = (y - <uint64_t>0x2121212121212121) & ~y & <uint64_t>0x8080808080808080
            if (f & g) == 0 and ((x - <uint64_t>0x2020202020202020) & ~x
                                 & <uint64_t>0x8080808080808080) == 0:
                # no two flagged bytes in a row, and none below 0x20: lone spaces
                # followed by text (the byte after the word is the next word's first)
                i += 8
                continue
            e = i + 8
        else:
            e = n
        while i < e:
            c = p[i]
            if c == 32:
                if i + 1 >= n or p[i + 1] <= 32:
                    return False
            elif c == 13:
                if i + 1 >= n or p[i + 1] != 10:
                    return False
            elif c == 10:
                if i == start or p[i - 1] != 13:
                    return False
            elif c == 9:
                return False
            i += 1
    return True


def body_relaxed(body, Py_ssize_t start=0):
    """Relaxed canonical body of ``body[start:]`` (RFC 6376 section 3.4.4)."""
    cdef bytes data = body if type(body) is bytes else bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = start, o = 0
    cdef unsigned char c
    cdef bint pending = False
    cdef bint clean
    if start < 0 or start > n:
        raise ValueError("start out of range")
    # most generated bodies are already canonical: a read-only scan (~4x faster than
    # the rewriting loop below) and one copy, or none when the whole input is the body
    with nogil:
        clean = _relaxed_clean(p, start, n)
    if clean:
        return data if start == 0 else data[start:]
    cdef uint64_t x, mask
    cdef int k
    cdef unsigned char* w = <unsigned char*>malloc(2 * (n - start) + 12)
    if w == NULL:
        raise MemoryError()
    try:
        with nogil:
            while i < n:
                # Fast path: 8 bytes none of which is a control, space or tab
                # ("has a byte < 0x21" test; bytes >= 0x80 count as plain).
                if i + 8 <= n:
                    memcpy(&x, p + i, 8)
                    mask = (x - <uint64_t>0x2121212121212121) & ~x & <uint64_t>0x8080808080808080
                    k = 8 if mask == 0 else fm_first_flagged_byte(mask)
                    if k > 0:
                        if pending:
                            w[o] = 32
                            o += 1
                            pending = False
                        memcpy(w + o, &x, 8)  # room: the buffer has 8 spare bytes
                        o += k
                        i += k
                        if k == 8:
                            continue
                c = p[i]
                if c == 32 and i + 1 < n and p[i + 1] > 32:
                    # one space between words (text's most common flagged byte): it
                    # stays one space, and a WSP run pending before it collapses into it
                    w[o] = 32
                    w[o + 1] = p[i + 1]
                    o += 2
                    i += 2
                    pending = False
                elif c > 32:
                    if pending:
                        w[o] = 32
                        o += 1
                        pending = False
                    w[o] = c
                    o += 1
                    i += 1
                elif c == 32 or c == 9:
                    pending = True
                    i += 1
                elif c == 10:
                    pending = False
                    w[o] = 13
                    w[o + 1] = 10
                    o += 2
                    i += 1
                elif c == 13 and i + 1 < n and p[i + 1] == 10:
                    pending = False
                    w[o] = 13
                    w[o + 1] = 10
                    o += 2
                    i += 2
                else:
                    if pending:
                        w[o] = 32
                        o += 1
                        pending = False
                    w[o] = c
                    o += 1
                    i += 1
            o = _strip_trailing_lines(w, o)
        return PyBytes_FromStringAndSize(<char*>w, o)
    finally:
        free(w)
