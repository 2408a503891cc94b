# _core_classifier.pxi: included by fastmta/_core.pyx (one extension module, fastmta._core);
# uses the cimports and module constants declared there.
#
# The bounce classifier: ``Classifier`` (rule tables in C arrays, Aho-Corasick DFA over
# character classes, candidate rules checked in rule order) and the module functions over
# the process-wide instance (``default_classifier``, ``load_rules``, ``classify``).

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
    cdef list r_scope
    cdef list r_effect
    cdef list wide                   # [(pattern id, pattern)] beyond Latin-1
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
            self.cc[i] = cc[i]
        self.wide = list(rules.wide)
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
        self.r_scope = []
        self.r_effect = []
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
            self.r_scope.append(r.throttle_scope)
            self.r_effect.append(r.effect)
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

    cdef void _scan_wide(self, str text):
        """Patterns beyond Latin-1, by substring on the folded text (only called for
        replies that hold such characters)."""
        cdef int32_t pid, t
        norm = _rules.normalize(text)
        for pid, p in self.wide:
            if p in norm and not (self.found[pid >> 6] >> (pid & 63)) & 1:
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
            if kind != 1 and self.wide:
                self._scan_wide(text)
        else:
            # A Reply: match on its lines (codes and continuation prefixes stripped), as
            # if joined by spaces, without building the joined string.
            state = self._scan_begin()
            kind = 1
            for j in range(len(lines)):
                line = <str?>lines[j]
                if j:
                    state = self._scan_space(state)
                if PyUnicode_KIND(line) != 1:
                    kind = PyUnicode_KIND(line)
                state = self._scan_text(state, PyUnicode_KIND(line), PyUnicode_DATA(line),
                                        PyUnicode_GET_LENGTH(line))
            self._scan_space(state)
            if kind != 1 and self.wide:
                self._scan_wide(" ".join(lines))
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
                res.throttle_scope = self.r_scope[r]
                res.effect = self.r_effect[r]
                return res
        return Classification(code, enhanced, 1, "soft", "not_defined", False, "retry", "default",
                              "none", "none")


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
