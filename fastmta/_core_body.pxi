# Message framing for DATA (included by _core.pyx): ``prepare_body``.
#
# The common case is a rendered message that is already CRLF-clean with no line
# starting with "." (the template renderer produces CRLF): two ``memchr`` walks (LF,
# CR) prove it, and the result is the body plus the terminator in one copy.  Anything
# else takes one pass that normalises bare CR/LF to CRLF and dot-stuffs line starts.


def prepare_body(body):
    """CRLF-normalise, dot-stuff and terminate a message for DATA (RFC 5321 4.5.2)."""
    cdef bytes data = body if type(body) is bytes else bytes(body)
    cdef const unsigned char* p = <const unsigned char*>data
    cdef Py_ssize_t n = len(data)
    cdef Py_ssize_t i = 0, k, lf = 0, cr = 0, o = 0
    cdef const unsigned char* q
    cdef bint clean = n == 0 or p[0] != 46
    cdef bytes out
    cdef unsigned char* w
    cdef bint bol
    cdef unsigned char c
    while clean:
        q = <const unsigned char*>memchr(p + i, 10, n - i)
        if q == NULL:
            break
        k = q - p
        if k == 0 or p[k - 1] != 13 or (k + 1 < n and p[k + 1] == 46):
            clean = False
            break
        lf += 1
        i = k + 1
    if clean:
        i = 0
        while True:
            q = <const unsigned char*>memchr(p + i, 13, n - i)
            if q == NULL:
                break
            cr += 1
            i = q - p + 1
        # every LF follows a CR and there are as many CRs as LFs: no bare CR either
        clean = cr == lf
    if clean:
        if n == 0 or (n >= 2 and p[n - 2] == 13 and p[n - 1] == 10):
            out = PyBytes_FromStringAndSize(NULL, n + 3)
            w = <unsigned char*>(<char*>out)
            memcpy(w, p, n)
            memcpy(w + n, b".\r\n", 3)
        else:
            out = PyBytes_FromStringAndSize(NULL, n + 5)
            w = <unsigned char*>(<char*>out)
            memcpy(w, p, n)
            memcpy(w + n, b"\r\n.\r\n", 5)
        return out
    # general case: worst case every byte doubles (a bare LF/CR -> CRLF, "." -> "..")
    w = <unsigned char*>malloc(2 * n + 5)
    if w == NULL:
        raise MemoryError()
    try:
        bol = True
        i = 0
        while i < n:
            c = p[i]
            if c == 13 or c == 10:
                w[o] = 13
                w[o + 1] = 10
                o += 2
                i += 2 if (c == 13 and i + 1 < n and p[i + 1] == 10) else 1
                bol = True
                continue
            if bol and c == 46:
                w[o] = 46
                o += 1
            w[o] = c
            o += 1
            i += 1
            bol = False
        if o and not (o >= 2 and w[o - 2] == 13 and w[o - 1] == 10):
            w[o] = 13
            w[o + 1] = 10
            o += 2
        memcpy(w + o, b".\r\n", 3)
        o += 3
        return PyBytes_FromStringAndSize(<char*>w, o)
    finally:
        free(w)
