"""Why a reply got its classification: the deciding rule, what matched, the runner-up.

``explain(reply, command, rules)`` walks the compiled rules the way the reference core
does (``fastmta._core_py``: every rule in order), but does not stop at the first match:
it reports the winner (which must be the rule ``classify`` names), the phrases and codes
that made it hold, the rule's documented source, and the next rule that would also hold
(the runner-up: what would decide if the winner were removed).  A winner marked
``fallback`` is a code-only default: the reply is *undetermined* (class 1), no rule
recognised its text.  Slower than ``classify`` (a debugging tool).  Pure.
"""

from __future__ import annotations

from fastmta import _core_py as _ref
from fastmta.classify import rules as _rules

__all__ = ["explain"]


def _codes(reply, command):
    if isinstance(reply, (bytes, bytearray, memoryview)):
        reply = bytes(reply).decode("utf-8", "replace")
    if isinstance(reply, str):
        code, end = _ref._find_code(reply)
        enh = _ref._find_enhanced(reply, end)
        text = reply
    else:
        code, text = reply.code, " ".join(reply.lines)
        enh = None if reply.enhanced is None else _ref._enh_tuple(reply.enhanced)
        if command is None:
            command = reply.command
    return text, code, enh, command


def _phase(command) -> int:
    if command is None:
        return _rules.PHASE_NONE
    return _rules.PHASE_BIT.get(command.lower(), _rules.PHASE_OTHER)


def _holds(r, phase, cm, enh, found, text) -> bool:
    if r.cmd_mask and not (r.cmd_mask & phase):
        return False
    if r.code_bits and not (r.code_bits >> cm) & 1:
        return False
    if r.enh and not any(_ref._enh_match(p, enh) for p in r.enh):
        return False
    if r.any_ids and not any(i in found for i in r.any_ids):
        return False
    if r.all_ids and not all(i in found for i in r.all_ids):
        return False
    if r.not_ids and any(i in found for i in r.not_ids):
        return False
    return r.regex is None or r.regex.search(text.lower()) is not None


def _describe(r, compiled, found, code, enh, command) -> dict:
    pats = compiled.patterns
    phrases = [pats[i] for i in r.any_ids + r.all_ids if i in found]
    why = []
    if phrases:
        why.append("text " + ", ".join(repr(p) for p in phrases))
    if r.code_bits:
        why.append(f"code {code or 'none'} in {r.raw.get('code')}")
    if r.enh:
        e = "none" if enh is None else ".".join(map(str, enh))
        why.append(f"enhanced {e} in {r.raw.get('enhanced')}")
    if r.cmd_mask:
        why.append(f"command {command or 'none'} in {r.raw.get('command')}")
    if r.regex is not None:
        why.append(f"regex {r.regex.pattern!r}")
    return {
        "rule": r.name,
        "file": r.source,
        "source": r.ref,
        "fallback": r.fallback,
        "phrases": phrases,
        "matched": why or ["no condition (catch-all)"],
        "bounce_class": r.bounce_class,
        "type": r.type,
        "reason": r.reason,
        "throttle": r.throttle,
        "throttle_scope": r.throttle_scope,
        "action": r.action,
        "effect": r.effect,
    }


def explain(reply, command: str | None = None, rules: _rules.CompiledRules | None = None) -> dict:
    """The explanation of one reply (see module docstring) as a JSON-ready dict."""
    if rules is None:
        from fastmta import core

        rules = core.default_classifier().rules
    text, code, enh, command = _codes(reply, command)
    phase = _phase(command)
    cm = code if code else (_rules.PSEUDO_BASE + enh[0] if enh is not None else _rules.CODE_NONE)
    norm = _rules.normalize(text)
    found = {i for i, p in enumerate(rules.patterns) if p in norm}
    hits = []
    for r in rules.rules:
        if _holds(r, phase, cm, enh, found, text):
            hits.append(r)
            if len(hits) == 2:
                break
    out: dict = {"reply": text, "command": command, "code": code,
                 "enhanced": None if enh is None else ".".join(map(str, enh))}
    if not hits:
        out.update(winner=None, runner_up=None, undetermined=True,
                   note="no rule matched: class 1 undetermined")
        return out
    win = _describe(hits[0], rules, found, code, enh, command)
    out["winner"] = win
    out["runner_up"] = _describe(hits[1], rules, found, code, enh, command) if len(hits) > 1 else None
    out["undetermined"] = hits[0].fallback
    if hits[0].fallback:
        out["note"] = (f"no rule recognised the text: code-only fallback {hits[0].name!r} "
                       "(undetermined, class 1)")
    return out
