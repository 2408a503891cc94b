"""Recipient address syntax (RFC 5321 Mailbox, RFC 6531 for UTF-8 local parts).

Pure functions, no I/O.  ``check_address`` returns the normalised address (domain in
lower case, IDNA A-label), whether it needs SMTPUTF8, or why it is unqualified.
Bulk-mail policy (documented in docs/spool.md): address literals (``user@[1.2.3.4]``),
single-label domains (``user@localhost``) and all-numeric TLDs are unqualified.
"""

from __future__ import annotations

import re
import zlib

# RFC 5322 atext, plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_RE = re.compile(rf"(?:{_DOT_ATOM}|{_QUOTED})")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")

_domain_cache: dict[str, str | None] = {}


def _domain_ascii(domain: str) -> str | None:
    """Lower-case A-label form of ``domain``, or None if it is not a usable host name."""
    hit = _domain_cache.get(domain)
    if hit is not None or domain in _domain_cache:
        return hit
    result: str | None = None
    d = domain.lower()
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            d = ""
    if d and len(d) <= 253:
        labels = d.split(".")
        if (
            len(labels) >= 2
            and all(_LABEL_RE.fullmatch(lb) for lb in labels)
            and not labels[-1].isdigit()
        ):
            result = d
    if len(_domain_cache) > 200_000:
        _domain_cache.clear()
    _domain_cache[domain] = result
    return result


_FAST_RE = re.compile(r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*)@([A-Za-z0-9.\-]+)")


def check_address(raw: str) -> tuple[str, bool, str]:
    """Validate one recipient address.

    Returns ``(normalised, smtputf8, error)``: ``error`` is "" when valid, else
    ``"empty"`` or a short description of the syntax problem.
    """
    m = _FAST_RE.fullmatch(raw)  # the common case: plain ASCII, no spaces
    if m is not None:
        local, domain = m.groups()
        dom = _domain_cache.get(domain)
        if dom is None:
            dom = _domain_ascii(domain)
        if dom is not None and len(local) <= 64 and len(raw) <= 254:
            return (raw if dom == domain else f"{local}@{dom}"), False, ""
    addr = raw.strip()
    if not addr:
        return "", False, "empty"
    if _CONTROL_RE.search(addr):
        return "", False, "control character"
    local, at, domain = addr.rpartition("@")
    if not at or not local:
        return "", False, "missing @" if not at else "empty local part"
    if not domain:
        return "", False, "missing domain"
    if domain.startswith("["):
        return "", False, "address literal"
    if not _LOCAL_RE.fullmatch(local):
        return "", False, "bad local part"
    if len(local.encode()) > 64:
        return "", False, "local part longer than 64 octets"
    dom = _domain_ascii(domain)
    if dom is None:
        return "", False, "bad domain"
    norm = f"{local}@{dom}"
    if len(norm.encode()) > 254:
        return "", False, "address longer than 254 octets"
    return norm, not local.isascii(), ""


def has_control(value: str) -> bool:
    """True if ``value`` holds CR, LF, NUL, another C0/C1 line control, or DEL."""
    return _CONTROL_RE.search(value) is not None


def domain_shard(domain: str, shards: int) -> int:
    """Default shard of a domain: a stable hash (CRC-32), the same in every process.

    The engine passes its own callable (domains -> MX site -> shard) to injection."""
    return zlib.crc32(domain.encode()) % shards


# For the injection fast path (same decisions as ``check_address``'s fast path).
FAST_ADDRESS_RE = _FAST_RE
DOMAIN_CACHE = _domain_cache
CONTROL_RE = _CONTROL_RE
