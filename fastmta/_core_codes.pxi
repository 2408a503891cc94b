# _core_codes.pxi: included by fastmta/_core.pyx (one extension module, fastmta._core);
# uses the cimports and module constants declared there.
#
# The verdict and the codes it carries: ``Classification`` (the result record) and the
# lenient extraction of the reply code and enhanced code from text (``_find_code``,
# ``_find_enhanced``, ``_enh_at``, ``extract_codes``), specialised per str storage width.

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
    cdef readonly object throttle_scope
    cdef readonly object effect

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
            "throttle_scope": self.throttle_scope,
            "effect": self.effect,
        }

    def _key(self):
        return (self.code, self.enhanced, self.bounce_class, self.type, self.reason,
                self.throttle, self.action, self.rule, self.throttle_scope, self.effect)

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
            f"throttle={self.throttle!r}, action={self.action!r}, rule={self.rule!r}, "
            f"throttle_scope={self.throttle_scope!r}, effect={self.effect!r})"
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
