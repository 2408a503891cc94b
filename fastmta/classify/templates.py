"""Unknown replies as templates: masking, and the per-worker aggregate.  Pure.

A reply that no rule recognised (or only a code-only ``fallback`` rule, see
docs/classification.md) is worth a rule.  ``template(text)`` masks what varies between
two replies of the same kind: e-mail addresses, URLs, IPv4/IPv6 addresses, dates and
times, hex/base64-like IDs, domains and numbers (the reply code and the RFC 3463 code
are kept: they say what the reply is).  ``UnknownReplies`` aggregates them in the worker
(a dict update per unknown reply; nothing for recognised ones) with counts, first/last
seen, the sites (providers) and an example, until the worker flushes them to the spool
in one write (``fastmta.spool.unknown``).
"""

from __future__ import annotations

import re

__all__ = ["template", "UnknownReplies", "is_unknown", "MASKS"]

# (name, regex): applied in order; each match becomes "<name>".
MASKS: tuple[tuple[str, re.Pattern], ...] = (
    ("url", re.compile(r"\b(?:https?|ftp)://\S+", re.I)),
    ("email", re.compile(r"<?[\w.+%-]+@[\w-]+(?:\.[\w-]+)+>?")),
    ("date", re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?Z?)?\b")),
    ("date", re.compile(r"\b(?:mon|tue|wed|thu|fri|sat|sun),? \d{1,2} "
                        r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\w* \d{4}\b", re.I)),
    ("time", re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")),
    ("ip", re.compile(r"\[?\b(?:\d{1,3}\.){3}\d{1,3}\b\]?")),
    ("ip", re.compile(r"\[?(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?<=[0-9a-f])(?![\w:])\]?",
                      re.I)),
    ("domain", re.compile(r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}\b", re.I)),
    # IDs: long tokens mixing letters and digits (queue ids, session ids, base64-ish)
    ("id", re.compile(r"\b(?=[\w+/=-]*\d)(?=[\w+/=-]*[a-z])[\w+/=-]{8,}\b", re.I)),
    ("id", re.compile(r"\b[0-9a-f]{8,}\b", re.I)),
)
_CODES = re.compile(r"^\s*([245]\d\d)([ -])(?:([245]\.\d{1,3}\.\d{1,3}) )?")
_NUM = re.compile(r"\b\d+\b")
_WS = re.compile(r"\s+")


def template(text: str) -> str:
    """``text`` with its variable parts masked (see module docstring)."""
    text = _WS.sub(" ", text).strip()
    head = ""
    m = _CODES.match(text)
    if m:
        head = m.group(1) + " " + (m.group(3) + " " if m.group(3) else "")
        text = text[m.end():]
    for name, rx in MASKS:
        text = rx.sub(f"<{name}>", text)
    text = _NUM.sub("<num>", text)
    return (head + text).strip()


def is_unknown(cls, fallback_rules: frozenset) -> bool:
    """True when no rule recognised the reply (the default or a code-only fallback)."""
    return getattr(cls, "rule", None) in fallback_rules


class UnknownReplies:
    """Per-worker aggregate of unknown replies by template (flushed in batches)."""

    def __init__(self, fallback_rules: frozenset | None = None, max_templates: int = 2000,
                 max_sites: int = 8) -> None:
        if fallback_rules is None:
            from fastmta import core

            fallback_rules = frozenset(
                [r.name for r in core.default_classifier().rules.rules if r.fallback]
                + ["default"])
        self.fallback_rules = fallback_rules
        self.max_templates = max_templates
        self.max_sites = max_sites
        self.entries: dict[str, dict] = {}
        self.dropped = 0  # replies not aggregated because the table was full

    def observe(self, text: str, command: str | None, site: str, cls, now_ms: int) -> bool:
        """Count ``text`` if ``cls`` says it is unknown.  True when counted."""
        rule = getattr(cls, "rule", None)  # local outcomes (no server reply) have none
        if rule not in self.fallback_rules:
            return False
        t = template(text)
        e = self.entries.get(t)
        if e is None:
            if len(self.entries) >= self.max_templates:
                self.dropped += 1
                return False
            e = self.entries[t] = {"template": t, "count": 0, "first_ms": now_ms,
                                   "last_ms": now_ms, "sites": [], "example": text[:500],
                                   "command": command, "code": cls.code,
                                   "enhanced": cls.enhanced, "rule": rule}
        e["count"] += 1
        e["last_ms"] = now_ms
        if site and site not in e["sites"] and len(e["sites"]) < self.max_sites:
            e["sites"].append(site)
        return True

    def take(self) -> list[dict]:
        """The aggregated entries since the last ``take`` (and forget them)."""
        out = list(self.entries.values())
        self.entries = {}
        return out
