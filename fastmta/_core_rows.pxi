# _core_rows.pxi: included by fastmta/_core.pyx (one extension module, fastmta._core).
#
# The CSV fast path of injection, ``csv_rows``: see ``fastmta._core_rows`` (the
# specification and pure twin).  The simple record is recognised by table look-ups on
# the strings' characters instead of regular expressions; anything else is handed back.

from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM

from fastmta.records import RecipientIn as _RecipientIn

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)

# 1: RFC 5322 atext (ASCII), 2: a character of the simple domain form [A-Za-z0-9.-]
cdef uint8_t _ROW_CHARS[128]


cdef void _init_row_chars():
    cdef int c
    memset(_ROW_CHARS, 0, 128)
    for c in range(128):
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
            _ROW_CHARS[c] = 3
    for c in b"!#$%&'*+/=?^_`{|}~":
        _ROW_CHARS[c] = 1
    _ROW_CHARS[ord("-")] = 3
    _ROW_CHARS[ord(".")] = 2


_init_row_chars()


cdef Py_ssize_t _simple_at(str email):
    """Index of the ``@`` of a simple ``dot-atom@[A-Za-z0-9.-]+`` address, else -1."""
    cdef const uint8_t* p
    cdef Py_ssize_t i, n, at = -1
    cdef uint8_t c
    cdef bint dot = True  # no dot first, none after a dot
    if not PyUnicode_IS_ASCII(email):
        return -1
    p = <const uint8_t*>PyUnicode_DATA(email)
    n = PyUnicode_GET_LENGTH(email)
    for i in range(n):
        c = p[i]
        if c == 64:  # @
            at = i
            break
        if c == 46:  # .
            if dot:
                return -1
            dot = True
        elif _ROW_CHARS[c] & 1:
            dot = False
        else:
            return -1
    if at <= 0 or dot or at == n - 1:
        return -1
    for i in range(at + 1, n):
        if not _ROW_CHARS[p[i]] & 2:
            return -1
    return at


cdef bint _clean_field(str s, bint header):
    """No lone surrogate; for a header field also no control character."""
    cdef int kind = PyUnicode_KIND(s)
    cdef void* data = PyUnicode_DATA(s)
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(s)
    cdef const uint8_t* p
    cdef uint32_t ch
    if kind == 1:  # PyUnicode_1BYTE_KIND  # latin-1 range: no surrogates
        if not header:
            return True
        p = <const uint8_t*>data
        for i in range(n):
            ch = p[i]
            if ch < 0x20 or ch == 0x7f or ch == 0x85:
                return False
        return True
    for i in range(n):
        ch = PyUnicode_READ(kind, data, i)
        if 0xDC80 <= ch <= 0xDCFF:
            return False
        if header and (ch < 0x20 or ch == 0x7f or ch == 0x85 or ch == 0x2028 or ch == 0x2029):
            return False
    return True


cdef object _simple_row(list rec, long long line, Py_ssize_t ei, tuple pick, tuple hidx,
                        tuple bidx, str marker, dict domains):
    """The ``RecipientIn`` of a simple record, else None (see ``fastmta._core_rows``)."""
    cdef object email_o = rec[ei]
    cdef str email, domain, norm
    cdef Py_ssize_t at, k, m
    cdef object f, hit
    cdef tuple vals
    if type(email_o) is not str:
        return None
    email = <str>email_o
    at = _simple_at(email)
    if at < 0 or at > 64 or PyUnicode_GET_LENGTH(email) > 254:
        return None
    domain = email[at + 1:]
    hit = domains.get(domain)
    if hit is None:
        return None
    for f in rec:
        if type(f) is not str or not _clean_field(<str>f, False):
            return None
    m = len(pick)
    vals = PyTuple_New(m)
    for k in range(m):
        f = rec[<Py_ssize_t>pick[k]]
        Py_INCREF(f)
        PyTuple_SET_ITEM(vals, k, f)
    for k in hidx:
        if not _clean_field(<str>vals[k], True):
            return None
    if marker:
        for k in bidx:
            if marker in <str>vals[k]:
                return None
    norm = <str>(<tuple>hit)[0]
    return _RecipientIn(email if norm == domain else email[:at + 1] + norm, vals,
                        (<tuple>hit)[1], line, "", False)


def csv_rows(reader, Py_ssize_t n, long long last, Py_ssize_t ncol, Py_ssize_t ei,
             tuple pick, tuple hidx, tuple bidx, str marker, dict domains):
    """Up to ``n`` records of a ``csv.reader`` (see ``fastmta._core_rows.csv_rows``)."""
    cdef list items = [], slow = []
    cdef Py_ssize_t got = 0
    cdef long long line, first
    cdef object rec, item, it = iter(reader)
    for k in pick:
        if not 0 <= k < ncol:
            raise IndexError("pick index out of range")
    if not 0 <= ei < ncol:
        raise IndexError("email column out of range")
    for k in hidx + bidx:
        if not 0 <= k < len(pick):
            raise IndexError("field index out of range")
    while got < n:
        rec = next(it, None)
        if rec is None:
            break
        got += 1
        line = reader.line_num
        first = last + 1
        last = line
        item = None
        if line == first and type(rec) is list and len(<list>rec) == ncol:
            item = _simple_row(<list>rec, line, ei, pick, hidx, bidx, marker, domains)
        if item is None:
            slow.append((len(items), first, line, rec))
        items.append(item)
    return items, slow, last
