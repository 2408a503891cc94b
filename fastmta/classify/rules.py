"""Bounce rules: load the TOML rule files and compile them into matcher tables.

Shared by both core implementations (``_core_py`` and the compiled ``_core``): this
module only reads, validates and compiles; matching happens in the cores.

A rule file is TOML with a list of ``[[rule]]`` tables, tried in order (operator file
first, then the packaged ``data/bounce_rules.toml``); the first rule whose conditions all
hold decides.  Conditions (every one optional):

- ``command``: phases the reply may answer (``connect ehlo helo starttls mail rcpt data
  dot rset quit``, ``none`` = phase unknown).
- ``code``: reply code patterns: ``"550"``, ``"55x"``, ``"5xx"``, ``"none"`` (no code).
  An input without a reply code but with an enhanced code matches only the class
  pattern of that class (``"5xx"`` for "5.1.1").
- ``enhanced``: RFC 3463 patterns ``"5.1.1"``, ``"x.1.1"``, ``"5.7.x"``, ``"none"``.
- ``text``: any of these substrings; ``text_all``: all of them; ``text_not``: none of
  them.  Substrings are matched against the normalized reply: ASCII lower-cased,
  whitespace runs collapsed to one space, one space added at both ends, non-ASCII
  Latin-1 letters folded to their base letter (é -> e, ß -> s), other Latin-1 characters
  replaced by U+007F, characters beyond Latin-1 lower-cased (``normalize``).  Patterns
  are lower case (accents are folded when loaded); patterns with characters beyond
  Latin-1 (Cyrillic, CJK) are matched on replies that hold such characters.
- ``regex``: a Python regular expression searched in the lower-cased reply, tried only
  when every other condition holds (keep it for the rare rule that needs it).

Outcome: ``bounce_class`` (Momentum/SparkPost class; 0 for success), ``type``
(hard/soft/ignored/none), ``reason``, ``throttle`` (default false, true when a scope is
given), ``throttle_scope`` (none/recipient/sender; default sender for a throttle),
``action`` (default derived from type, throttle and scope), ``effect`` (what the reply
says about the transaction or the connections, beyond the action; default ``none``):
``session_cap`` (a cap of messages per session: send the rest on a new connection),
``too_many_recipients`` (too many recipients in this transaction: the rest go in the
next one), ``connection_limit`` (a sender-scope throttle about the number of
connections: the site's connection limit is cut, not its message rate; implies
``throttle_scope = "sender"``).  ``source``: where the rule's
texts come from (RFC section, postmaster page); ``fallback``: a code-only default (shown
as such by ``--explain`` and recorded by the unknown-reply loop).
"""

from __future__ import annotations

import os
import re
import tomllib
from array import array
from importlib import resources

from fastmta.errors import ConfigError

PHASES = (
    "connect",
    "ehlo",
    "helo",
    "starttls",
    "mail",
    "rcpt",
    "data",
    "dot",
    "rset",
    "quit",
    "none",
    "other",
)
PHASE_BIT = {p: 1 << i for i, p in enumerate(PHASES)}
PHASE_NONE = PHASE_BIT["none"]
PHASE_OTHER = PHASE_BIT["other"]

BOUNCE_CLASSES = {
    0: "Delivered / no bounce",
    1: "Undetermined",
    10: "Invalid Recipient",
    20: "Soft Bounce",
    21: "DNS Failure",
    22: "Mailbox Full",
    23: "Too Large",
    24: "Timeout",
    25: "Admin Failure",
    30: "Generic Bounce: No RCPT",
    40: "Generic Bounce",
    50: "Mail Block",
    51: "Spam Block",
    52: "Spam Content",
    53: "Prohibited Attachment",
    54: "Relaying Denied",
    60: "Auto-Reply",
    70: "Transient Failure",
    80: "Subscribe",
    90: "Unsubscribe",
    100: "Challenge-Response",
}
TYPES = ("hard", "soft", "ignored", "none")
REASONS = (
    "user_unknown",
    "invalid_domain",
    "mailbox_full",
    "account_disabled",
    "refused",
    "unreachable",
    "not_defined",
    "none",
)
ACTIONS = ("deliver_ok", "retry", "bounce", "suspend_site", "reduce_rate", "defer_recipient")
# Whom a slow-down is about: ``recipient`` (one mailbox receives too fast: defer only it),
# ``sender`` (our IP/domain/connection volume: the site's adaptive limits), ``none``.
SCOPES = ("none", "recipient", "sender")
# What a reply says about the transaction's shape or the connections (the engine's
# decisions read it, engine/decisions.py); ``none`` for most rules.
EFFECTS = ("none", "session_cap", "too_many_recipients", "connection_limit")

# Code patterns index a bit set: 0 = no code at all, 100..599 = the code, 600 + k = "no
# reply code but an enhanced code of class k" (matched by the class pattern "kxx" only).
CODE_BITS = 606
CODE_NONE = 0
PSEUDO_BASE = 600

RULES_ENV = "FASTMTA_BOUNCE_RULES"

_KEYS = {
    "name",
    "comment",
    "command",
    "code",
    "enhanced",
    "text",
    "text_all",
    "text_not",
    "regex",
    "bounce_class",
    "type",
    "reason",
    "throttle",
    "action",
    "throttle_scope",
    "effect",
    "source",
    "fallback",
}

_CODE_RE = re.compile(r"^([1-5])([0-9x])([0-9x])$")
_ENH_RE = re.compile(r"^([245x])\.([0-9]{1,3}|x)\.([0-9]{1,3}|x)$")


class Rule:
    """One compiled rule (plain data; the cores read these fields)."""

    __slots__ = (
        "index",
        "name",
        "source",
        "cmd_mask",
        "code_bits",
        "enh",
        "any_ids",
        "all_ids",
        "not_ids",
        "regex",
        "bounce_class",
        "type",
        "reason",
        "throttle",
        "action",
        "throttle_scope",
        "effect",
        "ref",
        "fallback",
        "raw",
    )

    def __repr__(self) -> str:
        return f"Rule({self.name!r} from {self.source})"


class CompiledRules:
    """All rules in precedence order plus the pattern automaton built from them.

    ``patterns``: the distinct substrings (pattern id = index).  ``rules``: list of
    ``Rule``.  Automaton (Aho-Corasick, as a full DFA over character classes):
    ``char_class`` (128 bytes: ASCII -> class, 0 = a character no pattern uses),
    ``n_classes``, ``delta`` (state * n_classes + class -> state), ``out_off`` /
    ``out_ids`` (the pattern ids recognised in each state, CSR layout), ``space_class``.
    ``trigger_off`` / ``trigger_rules``: per pattern, the rules that need it to be
    considered (CSR); ``always``: rules that need no pattern.
    """

    def __init__(self, rules: list[Rule], patterns: list[str], sources: list[str]):
        self.rules = rules
        self.patterns = patterns
        self.sources = sources
        # Patterns with characters beyond Latin-1 (Cyrillic, CJK, ...): not in the
        # automaton; tested by substring on the folded text of the (rare) replies that
        # hold such characters.  (pattern id, pattern) pairs.
        self.wide = [(i, p) for i, p in enumerate(patterns) if max(map(ord, p)) > 255]
        self._build_automaton()
        self._build_triggers()

    def _build_automaton(self) -> None:
        wide = {pid for pid, _ in self.wide}
        narrow = [(pid, p) for pid, p in enumerate(self.patterns) if pid not in wide]
        chars = sorted({c for _, p in narrow for c in p})
        char_class = bytearray(256)
        for i, c in enumerate(chars):
            char_class[ord(c)] = i + 1
        # Upper-case letters share the class of their lower-case form, accented Latin-1
        # letters the class of their base letter (FOLD); whitespace shares the class of
        # the space.
        for c in range(128, 256):
            f = FOLD_LATIN1.get(c)
            char_class[c] = char_class[ord(f)] if f else 0
        for c in range(ord("A"), ord("Z") + 1):
            char_class[c] = char_class[c + 32]
        for c in (9, 10, 11, 12, 13):
            char_class[c] = char_class[32]
        n_classes = len(chars) + 1
        goto: list[dict[int, int]] = [{}]
        outputs: list[list[int]] = [[]]
        last: list[int] = [-1]  # class of the character that enters each state
        for pid, p in narrow:
            s = 0
            for ch in p:
                k = char_class[ord(ch)]
                nxt = goto[s].get(k)
                if nxt is None:
                    nxt = len(goto)
                    goto.append({})
                    outputs.append([])
                    last.append(k)
                    goto[s][k] = nxt
                s = nxt
            outputs[s].append(pid)
        n_states = len(goto)
        fail = [0] * n_states
        delta = array("i", [0]) * (n_states * n_classes)
        order = []
        for k, nxt in goto[0].items():
            delta[k] = nxt
            order.append(nxt)
        head = 0
        while head < len(order):
            s = order[head]
            head += 1
            outputs[s] = outputs[s] + [x for x in outputs[fail[s]] if x not in outputs[s]]
            for k in range(n_classes):
                nxt = goto[s].get(k)
                if nxt is not None:
                    fail[nxt] = delta[fail[s] * n_classes + k] if s else 0
                    delta[s * n_classes + k] = nxt
                    order.append(nxt)
                else:
                    delta[s * n_classes + k] = delta[fail[s] * n_classes + k]
        # Renumber states breadth-first: the shallow states, where a scan spends most of
        # its time, then sit together at the start of the table.
        bfs = [0] + order
        new_of = [0] * n_states
        for new, old in enumerate(bfs):
            new_of[old] = new
        renum = array("i", [0]) * (n_states * n_classes)
        for new, old in enumerate(bfs):
            base_o = old * n_classes
            base_n = new * n_classes
            for k in range(n_classes):
                renum[base_n + k] = new_of[delta[base_o + k]]
        delta = renum
        outputs = [outputs[old] for old in bfs]
        last = [last[old] for old in bfs]
        # Whitespace collapsing inside the automaton: patterns never hold two spaces in a
        # row, so a state entered by a space may stay put on further whitespace.  The
        # scan then needs no branch for whitespace runs; the result is the same as
        # matching on the collapsed text (the reference does exactly that).
        sp = char_class[32]
        if sp:
            for st in range(1, n_states):
                if last[st] == sp:
                    delta[st * n_classes + sp] = st
        out_off = array("i", [0])
        out_ids = array("i")
        for s in range(n_states):
            out_ids.extend(sorted(outputs[s]))
            out_off.append(len(out_ids))
        self.char_class = bytes(char_class)
        self.n_classes = n_classes
        self.n_states = n_states
        self.delta = delta
        self.out_off = out_off
        self.out_ids = out_ids
        self.space_class = char_class[32]
        self.has_output = bytes(1 if outputs[st] else 0 for st in range(n_states))

    def _build_triggers(self) -> None:
        per_pattern: list[list[int]] = [[] for _ in self.patterns]
        always = []
        for r in self.rules:
            if r.any_ids:
                for pid in r.any_ids:
                    per_pattern[pid].append(r.index)
            elif r.all_ids:
                per_pattern[r.all_ids[0]].append(r.index)
            else:
                always.append(r.index)
        self.always = always
        self.trigger_off = array("i", [0])
        self.trigger_rules = array("i")
        for lst in per_pattern:
            self.trigger_rules.extend(sorted(set(lst)))
            self.trigger_off.append(len(self.trigger_rules))


def _fail(source: str, where: str, msg: str):
    raise ConfigError(f"bounce rules {source}: {where}: {msg}")


def _as_list(v, source, where, key):
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        _fail(source, where, f"{key} must be a string or a list of strings")
    return v


def _code_bits(pats: list[str], source: str, where: str) -> int:
    bits = 0
    for p in pats:
        p = p.strip().lower()
        if p == "none":
            bits |= 1 << CODE_NONE
            continue
        m = _CODE_RE.match(p)
        if not m:
            _fail(source, where, f"bad code pattern {p!r} (use '550', '55x', '5xx' or 'none')")
        a, b, c = m.groups()
        if b == "x" and c != "x":
            _fail(source, where, f"bad code pattern {p!r}")
        for code in range(100, 600):
            s = f"{code:03d}"
            if s[0] == a and (b == "x" or s[1] == b) and (c == "x" or s[2] == c):
                bits |= 1 << code
        if b == "x" and c == "x":
            bits |= 1 << (PSEUDO_BASE + int(a))
    return bits


def _enh(pats: list[str], source: str, where: str) -> tuple:
    out = []
    for p in pats:
        p = p.strip().lower()
        if p == "none":
            out.append((0, 0, 0))
            continue
        m = _ENH_RE.match(p)
        if not m:
            _fail(source, where, f"bad enhanced pattern {p!r} (use '5.1.1', 'x.1.x', 'none')")
        out.append(tuple(-1 if g == "x" else int(g) for g in m.groups()))
    return tuple(out)


def _check_pattern(p: str, source: str, where: str) -> str:
    if not p or not all(c.isprintable() for c in p):
        _fail(source, where, f"text pattern {p!r} must be non-empty printable text")
    if any("A" <= c <= "Z" for c in p) or "  " in p:
        _fail(source, where, f"text pattern {p!r} must be lower case with single spaces")
    folded = p.translate(FOLD)
    if "\x7f" in folded:
        _fail(source, where, f"text pattern {p!r} holds a Latin-1 symbol that never matches")
    return folded


def _default_action(rtype: str, throttle: bool, scope: str = "sender") -> str:
    if rtype == "none":
        return "deliver_ok"
    if rtype == "hard":
        return "bounce"
    if throttle:
        return "defer_recipient" if scope == "recipient" else "reduce_rate"
    return "retry"


# ---------------------------------------------------------------- text normalization
# Latin-1 letters fold to their ASCII base letter (German, French, Spanish, Portuguese,
# Italian replies match patterns written without accents: "boite pleine", "nao existe");
# other Latin-1 characters become U+007F (never in a pattern).
_LATIN1_BASE = (
    "aaaaaaaceeeeiiiidnooooo\x7fouuuuyts"  # U+00C0..U+00DF
    "aaaaaaaceeeeiiiidnooooo\x7fouuuuyty"  # U+00E0..U+00FF
)
FOLD_LATIN1 = {0xC0 + i: ch for i, ch in enumerate(_LATIN1_BASE) if ch != "\x7f"}


class _Fold(dict):
    """str.translate table: ASCII lower case, Latin-1 folded, beyond Latin-1 the
    character's own lower case when that is a single character beyond Latin-1."""

    def __missing__(self, k: int):
        if k < 128:
            v = chr(k).lower()
        elif k < 256:
            v = FOLD_LATIN1.get(k, "\x7f")
        else:
            lc = chr(k).lower()
            v = lc if len(lc) == 1 and ord(lc) > 255 else chr(k)
        self[k] = v
        return v


FOLD = _Fold()
_WS_RUN = re.compile(r"[ \t\n\r\x0b\x0c]+")


def normalize(text: str) -> str:
    """The text the patterns are matched against: folded (``FOLD``), whitespace runs
    collapsed to one space, one space added at both ends."""
    return _WS_RUN.sub(" ", " " + text.translate(FOLD) + " ")


def parse_rules(data: dict, source: str, pattern_ids: dict, patterns: list, start: int):
    """Validate one decoded rule file; return its ``Rule`` list (indices from ``start``)."""
    extra = set(data) - {"rule", "meta"}
    if extra:
        _fail(source, "top level", f"unknown keys {sorted(extra)} (expected [[rule]])")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        _fail(source, "top level", "'rule' must be an array of tables ([[rule]])")
    out = []

    def ids(lst, where, key):
        res = []
        for p in _as_list(lst, source, where, key):
            p = _check_pattern(p, source, where)
            if p not in pattern_ids:
                pattern_ids[p] = len(patterns)
                patterns.append(p)
            res.append(pattern_ids[p])
        return tuple(dict.fromkeys(res))

    for i, rd in enumerate(raw_rules):
        name = rd.get("name") or f"rule#{i + 1}"
        where = f"rule {i + 1} ({name})"
        unknown = set(rd) - _KEYS
        if unknown:
            _fail(source, where, f"unknown keys {sorted(unknown)}")
        r = Rule()
        r.index = start + len(out)
        r.name = str(name)
        r.source = source
        mask = 0
        for c in _as_list(rd.get("command", []), source, where, "command"):
            c = c.lower()
            if c not in PHASE_BIT:
                _fail(source, where, f"unknown command {c!r}; use one of {', '.join(PHASES)}")
            mask |= PHASE_BIT[c]
        r.cmd_mask = mask
        codes = _as_list(rd.get("code", []), source, where, "code")
        r.code_bits = _code_bits(codes, source, where) if codes else 0
        r.enh = _enh(_as_list(rd.get("enhanced", []), source, where, "enhanced"), source, where)
        r.any_ids = ids(rd.get("text", []), where, "text")
        r.all_ids = ids(rd.get("text_all", []), where, "text_all")
        r.not_ids = ids(rd.get("text_not", []), where, "text_not")
        rx = rd.get("regex")
        if rx is not None:
            try:
                r.regex = re.compile(rx)
            except (re.error, TypeError) as exc:
                _fail(source, where, f"bad regex {rx!r}: {exc}")
        else:
            r.regex = None
        bc = rd.get("bounce_class")
        if bc not in BOUNCE_CLASSES:
            _fail(source, where, f"bounce_class must be one of {sorted(BOUNCE_CLASSES)}")
        r.bounce_class = bc
        rtype = rd.get("type")
        if rtype not in TYPES:
            _fail(source, where, f"type must be one of {TYPES}")
        r.type = rtype
        reason = rd.get("reason")
        if reason not in REASONS:
            _fail(source, where, f"reason must be one of {REASONS}")
        r.reason = reason
        effect = rd.get("effect", "none")
        if effect not in EFFECTS:
            _fail(source, where, f"effect must be one of {EFFECTS}")
        scope = rd.get("throttle_scope")
        if scope is not None and scope not in SCOPES:
            _fail(source, where, f"throttle_scope must be one of {SCOPES}")
        if effect == "connection_limit" and scope is None:
            scope = "sender"  # a throttle of the sender's connections
        thr = rd.get("throttle", scope not in (None, "none"))
        if not isinstance(thr, bool):
            _fail(source, where, "throttle must be true or false")
        if scope is None:
            scope = "sender" if thr else "none"
        if thr != (scope != "none"):
            _fail(source, where, "throttle_scope 'none' goes with throttle = false, "
                                 "'recipient'/'sender' with throttle = true")
        if effect == "connection_limit" and scope != "sender":
            _fail(source, where, "effect 'connection_limit' is a sender-scope throttle "
                                 "(throttle_scope = 'sender')")
        if thr and effect in ("session_cap", "too_many_recipients"):
            _fail(source, where, f"effect {effect!r} is about the transaction, not a "
                                 "slow-down: it goes with throttle = false")
        r.throttle = thr
        r.throttle_scope = scope
        r.effect = effect
        action = rd.get("action") or _default_action(rtype, thr, scope)
        if action not in ACTIONS:
            _fail(source, where, f"action must be one of {ACTIONS}")
        r.action = action
        ref = rd.get("source", "")
        if not isinstance(ref, str):
            _fail(source, where, "source must be a string (where the rule's texts come from)")
        r.ref = ref
        fb = rd.get("fallback", False)
        if not isinstance(fb, bool):
            _fail(source, where, "fallback must be true or false")
        r.fallback = fb
        r.raw = dict(rd)
        out.append(r)
    return out


def _load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read bounce rules {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"bounce rules {path} are not valid TOML: {exc}") from exc


def packaged_rules_text() -> bytes:
    return resources.files("fastmta").joinpath("data/bounce_rules.toml").read_bytes()


def compile_rules(extra_files: list[str] | None = None, *, packaged: bool = True) -> CompiledRules:
    """Compile the operator files (first, in the given order) and the packaged rules."""
    pattern_ids: dict = {}
    patterns: list = []
    rules: list = []
    sources = []
    for path in extra_files or []:
        rules += parse_rules(_load_toml(path), path, pattern_ids, patterns, len(rules))
        sources.append(path)
    if packaged:
        data = tomllib.loads(packaged_rules_text().decode("utf-8"))
        rules += parse_rules(data, "fastmta/data/bounce_rules.toml", pattern_ids, patterns, len(rules))
        sources.append("fastmta/data/bounce_rules.toml")
    if not rules:
        raise ConfigError("no bounce rules loaded")
    return CompiledRules(rules, patterns, sources)


def default_rule_files() -> list[str]:
    """The operator rule file named by ``FASTMTA_BOUNCE_RULES`` (if set)."""
    path = os.environ.get(RULES_ENV, "").strip()
    return [path] if path else []
