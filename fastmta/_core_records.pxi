# _core_records.pxi: included by fastmta/_core.pyx (one extension module, fastmta._core).
#
# The spool's per-result record work on msgpack bytes (see ``fastmta._core_records``,
# the specification): ``rcpt_sent`` and ``rcpt_claim``.  A ``Rcpt`` is a msgspec
# array-like tagged struct: [2, email, fields, shard, line, status, smtputf8, attempts,
# first_attempt_ms, last_attempt_ms, done_ms, next_attempt_ms, reason, type,
# bounce_class, code, enhanced, reply, mx, source_ip, last_soft_reason, deferrals,
# feedback]; older records may stop early (trailing fields take their defaults).  The
# elements are located once; unchanged ones are copied as they are, new values are
# encoded the way msgspec encodes them (smallest int and str forms), so the bytes equal
# msgspec's.

cdef enum:
    _RCPT_N = 23  # tag + 22 fields
    _EV_N = 17  # AttemptEvent: tag + 16 fields

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

# the default encoding of each Rcpt element, for a record that stops before it
cdef const char* _RCPT_DEFAULTS = (
    b"\x02\xa0\x90\x00\x00\x00\xc2\x00\x00\x00\x00\x00\xa0\xa0\x00\x00\xa0\xa0\xa0\xa0\xa0\x00\xa0")


ctypedef struct _Spans:
    Py_ssize_t start[23]
    Py_ssize_t end[23]
    int count


cdef Py_ssize_t _mp_skip(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, int depth) except -1:
    """Index just past the msgpack element at ``i``."""
    cdef uint8_t b
    cdef Py_ssize_t m = 0, k, ln = 0
    if i >= n or depth > 32:
        raise ValueError("truncated or too deeply nested record")
    b = p[i]
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3:
        return i + 1
    if 0xa0 <= b <= 0xbf:
        ln = b & 0x1f
        i += 1
    elif 0x90 <= b <= 0x9f or 0x80 <= b <= 0x8f:
        m = (b & 0x0f) * (2 if b < 0x90 else 1)
        i += 1
        for k in range(m):
            i = _mp_skip(p, i, n, depth + 1)
        return i
    elif b == 0xcc or b == 0xd0:
        ln, i = 1, i + 1
    elif b == 0xcd or b == 0xd1:
        ln, i = 2, i + 1
    elif b == 0xce or b == 0xd2 or b == 0xca:
        ln, i = 4, i + 1
    elif b == 0xcf or b == 0xd3 or b == 0xcb:
        ln, i = 8, i + 1
    elif b == 0xd9 or b == 0xc4:
        if i + 1 >= n:
            raise ValueError("truncated record")
        ln, i = p[i + 1], i + 2
    elif b == 0xda or b == 0xc5:
        if i + 2 >= n:
            raise ValueError("truncated record")
        ln, i = (p[i + 1] << 8) | p[i + 2], i + 3
    elif b == 0xdb or b == 0xc6:
        if i + 4 >= n:
            raise ValueError("truncated record")
        ln = (<Py_ssize_t>p[i + 1] << 24) | (p[i + 2] << 16) | (p[i + 3] << 8) | p[i + 4]
        i += 5
    elif b == 0xdc or b == 0xdd or b == 0xde or b == 0xdf:
        if b == 0xdc or b == 0xde:
            if i + 2 >= n:
                raise ValueError("truncated record")
            m, i = (p[i + 1] << 8) | p[i + 2], i + 3
        else:
            if i + 4 >= n:
                raise ValueError("truncated record")
            m = (<Py_ssize_t>p[i + 1] << 24) | (p[i + 2] << 16) | (p[i + 3] << 8) | p[i + 4]
            i += 5
        if b >= 0xde:
            m *= 2
        for k in range(m):
            i = _mp_skip(p, i, n, depth + 1)
        return i
    else:
        raise ValueError(f"unsupported msgpack byte 0x{b:02x} in a record")
    if i + ln > n:
        raise ValueError("truncated record")
    return i + ln


cdef int _rcpt_spans(const uint8_t* p, Py_ssize_t n, _Spans* s) except -1:
    """Locate the elements of a Rcpt record (its tag checked)."""
    cdef Py_ssize_t i, count
    cdef int k
    if n < 1:
        raise ValueError("empty record")
    if 0x90 <= p[0] <= 0x9f:
        count, i = p[0] & 0x0f, 1
    elif p[0] == 0xdc and n >= 3:
        count, i = (p[1] << 8) | p[2], 3
    else:
        raise ValueError("not a recipient record")
    if count < 2 or count > _RCPT_N:
        raise ValueError(f"a recipient record has 2-{_RCPT_N} items, not {count}")
    if p[i] != 0x02:
        raise ValueError("not a recipient record (tag)")
    for k in range(count):
        s.start[k] = i
        i = _mp_skip(p, i, n, 0)
        s.end[k] = i
    if i != n:
        raise ValueError("trailing bytes after a recipient record")
    s.count = <int>count
    return 0


cdef long long _mp_int(const uint8_t* p, _Spans* s, int k) except? -1:
    """The integer element ``k`` (0 when the record stops before it)."""
    cdef Py_ssize_t i
    cdef uint8_t b
    cdef unsigned long long u = 0
    cdef int j, w
    if k >= s.count:
        return 0
    i = s.start[k]
    b = p[i]
    if b <= 0x7f:
        return b
    if b >= 0xe0:
        return <long long>b - 256
    if b == 0xcc or b == 0xd0:
        w = 1
    elif b == 0xcd or b == 0xd1:
        w = 2
    elif b == 0xce or b == 0xd2:
        w = 4
    elif b == 0xcf or b == 0xd3:
        w = 8
    else:
        raise ValueError("an integer was expected in a recipient record")
    for j in range(w):
        u = (u << 8) | p[i + 1 + j]
    if b == 0xcf and u >> 63:
        raise OverflowError("an integer of a recipient record is out of range")
    if b >= 0xd0:  # signed: sign-extend from w bytes
        if w < 8 and u >= (1ULL << (8 * w - 1)):
            return <long long>u - <long long>(1ULL << (8 * w))
    return <long long>u


cdef inline Py_ssize_t _put_int(uint8_t* o, Py_ssize_t j, long long x) noexcept:
    """msgspec's integer encoding (the smallest form)."""
    cdef unsigned long long u
    cdef int w, k
    cdef uint8_t tag
    if x >= 0:
        if x < 128:
            o[j] = <uint8_t>x
            return j + 1
        u = <unsigned long long>x
        if x < 256:
            tag, w = 0xcc, 1
        elif x < 65536:
            tag, w = 0xcd, 2
        elif x < 4294967296:
            tag, w = 0xce, 4
        else:
            tag, w = 0xcf, 8
    else:
        if x >= -32:
            o[j] = <uint8_t>(x & 0xff)
            return j + 1
        u = <unsigned long long>x
        if x >= -128:
            tag, w = 0xd0, 1
        elif x >= -32768:
            tag, w = 0xd1, 2
        elif x >= -2147483648:
            tag, w = 0xd2, 4
        else:
            tag, w = 0xd3, 8
    o[j] = tag
    for k in range(w):
        o[j + w - k] = <uint8_t>((u >> (8 * k)) & 0xff)
    return j + 1 + w


cdef inline Py_ssize_t _put_str(uint8_t* o, Py_ssize_t j, const char* s, Py_ssize_t ln) noexcept:
    if ln < 32:
        o[j] = <uint8_t>(0xa0 | ln)
        j += 1
    elif ln < 256:
        o[j] = 0xd9
        o[j + 1] = <uint8_t>ln
        j += 2
    elif ln < 65536:
        o[j] = 0xda
        o[j + 1] = <uint8_t>(ln >> 8)
        o[j + 2] = <uint8_t>(ln & 0xff)
        j += 3
    else:
        o[j] = 0xdb
        o[j + 1] = <uint8_t>(ln >> 24)
        o[j + 2] = <uint8_t>((ln >> 16) & 0xff)
        o[j + 3] = <uint8_t>((ln >> 8) & 0xff)
        o[j + 4] = <uint8_t>(ln & 0xff)
        j += 5
    memcpy(o + j, s, ln)
    return j + ln


cdef inline Py_ssize_t _put_elem(uint8_t* o, Py_ssize_t j, const uint8_t* p, _Spans* s, int k) noexcept:
    """Element ``k`` copied as it is (its default when the record stops before it)."""
    cdef Py_ssize_t ln
    if k >= s.count:
        o[j] = <uint8_t>_RCPT_DEFAULTS[k]
        return j + 1
    ln = s.end[k] - s.start[k]
    memcpy(o + j, p + s.start[k], ln)
    return j + ln


cdef inline bint _elem_is(const uint8_t* p, _Spans* s, int k, const char* enc, Py_ssize_t ln) noexcept:
    if k >= s.count:
        return ln == 1 and <uint8_t>enc[0] == <uint8_t>_RCPT_DEFAULTS[k]
    return s.end[k] - s.start[k] == ln and memcmp(p + s.start[k], enc, ln) == 0


cdef str _elem_str(const uint8_t* p, _Spans* s, int k):
    """The str element ``k`` decoded ("" when the record stops before it)."""
    cdef Py_ssize_t i, h
    cdef uint8_t b
    if k >= s.count:
        return ""
    i = s.start[k]
    b = p[i]
    if 0xa0 <= b <= 0xbf:
        h = 1
    elif b == 0xd9:
        h = 2
    elif b == 0xda:
        h = 3
    elif b == 0xdb:
        h = 5
    else:
        raise ValueError("a string was expected in a recipient record")
    return PyUnicode_DecodeUTF8(<const char*>p + i + h, s.end[k] - i - h, NULL)


def rcpt_sent(bytes raw, long long t, long long did, long long rid, long long code,
              str enhanced, long long bounce_class, str type, str reply, str mx,
              str source_ip, str tls):
    """(new record, attempt event, address) for a ``sent`` result, or None when the
    record is not pending (see ``fastmta._core_records.rcpt_sent``)."""
    cdef const uint8_t* p = <const uint8_t*>raw
    cdef Py_ssize_t n = len(raw)
    cdef _Spans sp
    cdef _Spans* s = &sp
    cdef int k
    cdef long long attempts, first
    cdef Py_ssize_t l_enh, l_type, l_reply, l_mx, l_src, l_tls, cap, j
    cdef const char* c_enh = PyUnicode_AsUTF8AndSize(enhanced, &l_enh)
    cdef const char* c_type = PyUnicode_AsUTF8AndSize(type, &l_type)
    cdef const char* c_reply = PyUnicode_AsUTF8AndSize(reply, &l_reply)
    cdef const char* c_mx = PyUnicode_AsUTF8AndSize(mx, &l_mx)
    cdef const char* c_src = PyUnicode_AsUTF8AndSize(source_ip, &l_src)
    cdef const char* c_tls = PyUnicode_AsUTF8AndSize(tls, &l_tls)
    cdef uint8_t* o
    cdef bytes rec, ev
    _rcpt_spans(p, n, s)
    if _mp_int(p, s, 5) != 0:
        return None
    attempts = _mp_int(p, s, 7) + 1
    first = _mp_int(p, s, 8) or t
    # both outputs fit: the record's own bytes plus every new value at its widest
    cap = 2 * n + 2 * (l_enh + l_type + l_reply + l_mx + l_src + l_tls) + 256
    o = <uint8_t*>malloc(cap)
    if o == NULL:
        raise MemoryError()
    try:
        o[0], o[1], o[2] = 0xdc, 0, _RCPT_N
        j = 3
        for k in range(5):  # tag, email, fields, shard, line
            j = _put_elem(o, j, p, s, k)
        o[j] = 0x01  # Status.SENT
        j = _put_elem(o, j + 1, p, s, 6)
        j = _put_int(o, j, attempts)
        j = _put_int(o, j, first)
        j = _put_int(o, j, t)
        j = _put_int(o, j, t)
        o[j] = 0x00  # next_attempt_ms
        j += 1
        if _elem_is(p, s, 13, b"\xa4soft", 5):  # a soft reason stays as history
            j = _put_elem(o, j, p, s, 12)
        else:
            o[j] = 0xa0
            j += 1
        j = _put_str(o, j, c_type, l_type)
        j = _put_int(o, j, bounce_class)
        j = _put_int(o, j, code)
        j = _put_str(o, j, c_enh, l_enh)
        j = _put_str(o, j, c_reply, l_reply)
        j = _put_str(o, j, c_mx, l_mx) if l_mx else _put_elem(o, j, p, s, 18)
        j = _put_str(o, j, c_src, l_src) if l_src else _put_elem(o, j, p, s, 19)
        for k in range(20, _RCPT_N):  # last_soft_reason, deferrals, feedback
            j = _put_elem(o, j, p, s, k)
        rec = PyBytes_FromStringAndSize(<char*>o, j)
        o[0], o[1], o[2], o[3] = 0xdc, 0, _EV_N, 0x0a
        j = _put_int(o, 4, t)
        j = _put_int(o, j, did)
        j = _put_int(o, j, rid)
        j = _put_elem(o, j, p, s, 1)  # email
        j = _put_str(o, j, b"sent", 4)
        o[j] = 0x01  # Status.SENT
        j = _put_int(o, j + 1, attempts)
        j = _put_int(o, j, code)
        j = _put_str(o, j, c_enh, l_enh)
        j = _put_int(o, j, bounce_class)
        j = _put_str(o, j, c_type, l_type)
        o[j] = 0xa0  # reason
        j = _put_str(o, j + 1, c_reply, l_reply)
        j = _put_str(o, j, c_mx, l_mx)
        j = _put_str(o, j, c_src, l_src)
        j = _put_str(o, j, c_tls, l_tls)
        ev = PyBytes_FromStringAndSize(<char*>o, j)
    finally:
        free(o)
    return rec, ev, _elem_str(p, s, 1)


def rcpt_claim(bytes raw, names):
    """(address, fields dict, attempts, first_attempt_ms, smtputf8, reason) of a pending
    record, or None (see ``fastmta._core_records.rcpt_claim``)."""
    cdef const uint8_t* p = <const uint8_t*>raw
    cdef Py_ssize_t n = len(raw)
    cdef _Spans sp
    cdef _Spans* s = &sp
    cdef Py_ssize_t i, m, k, nn, j0
    cdef uint8_t b
    cdef dict fields = {}
    cdef str email
    _rcpt_spans(p, n, s)
    if _mp_int(p, s, 5) != 0:
        return None
    email = _elem_str(p, s, 1)
    nn = len(names) if names else 0
    if nn and s.count > 2:
        i = s.start[2]
        b = p[i]
        if 0x90 <= b <= 0x9f:
            m, i = b & 0x0f, i + 1
        elif b == 0xdc:
            m, i = (p[i + 1] << 8) | p[i + 2], i + 3
        elif b == 0xdd:
            m = (<Py_ssize_t>p[i + 1] << 24) | (p[i + 2] << 16) | (p[i + 3] << 8) | p[i + 4]
            i += 5
        else:
            raise ValueError("a list of fields was expected in a recipient record")
        for k in range(min(m, nn)):
            b = p[i]
            if 0xa0 <= b <= 0xbf:
                fields[names[k]] = PyUnicode_DecodeUTF8(<const char*>p + i + 1, b & 0x1f, NULL)
                i += 1 + (b & 0x1f)
            else:
                j0 = _mp_skip(p, i, n, 0)
                fields[names[k]] = _str_at(p, i, j0)
                i = j0
    fields["email"] = email  # ready for Template.render
    b = p[s.start[6]] if s.count > 6 else 0xc2
    if b != 0xc2 and b != 0xc3:
        raise ValueError("a boolean was expected in a recipient record")
    return (email, fields, _mp_int(p, s, 7), _mp_int(p, s, 8), b == 0xc3,
            _elem_str(p, s, 12))


cdef str _str_at(const uint8_t* p, Py_ssize_t i, Py_ssize_t end):
    cdef uint8_t b = p[i]
    cdef Py_ssize_t h
    if b == 0xd9:
        h = 2
    elif b == 0xda:
        h = 3
    elif b == 0xdb:
        h = 5
    else:
        raise ValueError("a string was expected in a recipient record")
    return PyUnicode_DecodeUTF8(<const char*>p + i + h, end - i - h, NULL)


cdef inline Py_ssize_t _put_array_header(uint8_t* o, Py_ssize_t j, Py_ssize_t m) noexcept:
    if m < 16:
        o[j] = <uint8_t>(0x90 | m)
        return j + 1
    if m < 65536:
        o[j] = 0xdc
        o[j + 1] = <uint8_t>(m >> 8)
        o[j + 2] = <uint8_t>(m & 0xff)
        return j + 3
    o[j] = 0xdd
    o[j + 1] = <uint8_t>(m >> 24)
    o[j + 2] = <uint8_t>((m >> 16) & 0xff)
    o[j + 3] = <uint8_t>((m >> 8) & 0xff)
    o[j + 4] = <uint8_t>(m & 0xff)
    return j + 5


cdef inline bytes _key8(unsigned long long did, unsigned long long rid):
    cdef uint8_t k[8]
    k[0], k[1], k[2], k[3] = (did >> 24) & 0xff, (did >> 16) & 0xff, (did >> 8) & 0xff, did & 0xff
    k[4], k[5], k[6], k[7] = (rid >> 24) & 0xff, (rid >> 16) & 0xff, (rid >> 8) & 0xff, rid & 0xff
    return PyBytes_FromStringAndSize(<char*>k, 8)


def rcpt_batch(list items, long long did, long long rid, long long t, dups):
    """Encode an injection batch (see ``fastmta._core_records.rcpt_batch``)."""
    cdef list rcpt_items = [], ready = [], excluded = []
    cdef dict domains = {}
    cdef Py_ssize_t idx, n = len(items), cap = 0, need, j, ln, m, at
    cdef uint8_t* o = NULL
    cdef uint8_t* grown
    cdef const char* c
    cdef object item, fields, f, flag, reason, email, dom, key
    cdef tuple ftup
    cdef uint8_t sk[2]
    cdef bint has_dups = bool(dups)
    if did < 0 or did > 0xFFFFFFFF or rid < 0 or rid + n - 1 > 0xFFFFFFFF:
        raise OverflowError("delivery or recipient id out of range")
    try:
        for idx in range(n):
            item = items[idx]
            email = item.email
            if type(email) is not str:
                raise TypeError("a recipient's email must be a str")
            fields = item.fields
            ftup = fields if type(fields) is tuple else tuple(fields)
            reason = item.exclude
            if not reason and has_dups and idx in dups:
                reason = "double"
            flag = item.smtputf8
            if flag is not True and flag is not False:
                raise TypeError("smtputf8 must be a bool")
            need = 96 + 4 * (PyUnicode_GET_LENGTH(email) + PyUnicode_GET_LENGTH(reason) if reason
                             else PyUnicode_GET_LENGTH(email))
            for f in ftup:
                if type(f) is not str:
                    raise TypeError("recipient fields must be str")
                need += 5 + 4 * PyUnicode_GET_LENGTH(f)
            if need > cap:
                grown = <uint8_t*>realloc(o, need)
                if grown == NULL:
                    raise MemoryError()
                o, cap = grown, need
            o[0], o[1], o[2], o[3] = 0xdc, 0, _RCPT_N, 0x02
            c = PyUnicode_AsUTF8AndSize(email, &ln)
            j = _put_str(o, 4, c, ln)
            m = len(ftup)
            j = _put_array_header(o, j, m)
            for f in ftup:
                c = PyUnicode_AsUTF8AndSize(f, &ln)
                j = _put_str(o, j, c, ln)
            j = _put_int(o, j, item.shard)
            j = _put_int(o, j, item.line)
            o[j] = 0x03 if reason else 0x00  # Status.IGNORED / PENDING
            o[j + 1] = 0xc3 if flag else 0xc2
            o[j + 2] = o[j + 3] = o[j + 4] = 0  # attempts, first / last attempt
            j += 5
            j = _put_int(o, j, t if reason else 0)  # done_ms
            o[j] = 0  # next_attempt_ms
            j += 1
            if reason:
                c = PyUnicode_AsUTF8AndSize(reason, &ln)
                j = _put_str(o, j, c, ln)
            else:
                o[j] = 0xa0
                j += 1
            # type, bounce_class, code, enhanced, reply, mx, source_ip,
            # last_soft_reason, deferrals, feedback: defaults
            memcpy(o + j, b"\xa0\x00\x00\xa0\xa0\xa0\xa0\xa0\x00\xa0", 10)
            j += 10
            key = _key8(did, rid)
            rcpt_items.append((key, PyBytes_FromStringAndSize(<char*>o, j)))
            if reason:
                excluded.append((idx, reason))
            else:
                m = item.shard
                if m < 0 or m > 0xFFFF:
                    raise OverflowError("shard out of range")
                sk[0], sk[1] = (m >> 8) & 0xff, m & 0xff
                ready.append((PyBytes_FromStringAndSize(<char*>sk, 2), key))
                at = email.rfind("@")
                if at < 0:
                    raise ValueError("substring not found")
                dom = email[at + 1:]
                domains[dom] = domains.get(dom, 0) + 1
            rid += 1
    finally:
        free(o)
    return rcpt_items, ready, domains, excluded
