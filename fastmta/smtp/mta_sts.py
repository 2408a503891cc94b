"""MTA-STS (RFC 8461) as pure policy: the ``_mta-sts`` TXT record, the policy file, MX
pattern matching, the decision for one MX host, and a cache that honours ``max_age``.

No I/O here (``mta_sts_fetch.py`` fetches).  Modes: ``enforce`` (deliver only over TLS
with a certificate valid for an MX host that matches the policy), ``testing`` (deliver
anyway, report the failures: TLS-RPT), ``none`` (no policy).
"""

from __future__ import annotations

import re

import msgspec

__all__ = ["Policy", "PolicyError", "parse_txt", "parse_policy", "mx_matches", "decide",
           "PolicyCache", "CacheEntry", "MODES", "MAX_AGE_LIMIT_S"]

MODES = ("enforce", "testing", "none")
MAX_AGE_LIMIT_S = 31_557_600  # RFC 8461 3.2: max_age is at most one year
MAX_POLICY_BYTES = 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A TXT record or policy file that is not valid MTA-STS."""


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""  # the TXT record id it was fetched for

    def matches(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records (None: no STS record).

    RFC 8461 3.1: exactly one record starting ``v=STSv1``; more than one is treated as
    no record; an invalid id makes it invalid (``PolicyError``).
    """
    sts = [r for r in records if r.replace(" ", "").startswith("v=STSv1")]
    if len(sts) != 1:
        return None
    fields = {}
    for part in sts[0].split(";"):
        k, eq, v = part.strip().partition("=")
        if eq:
            fields.setdefault(k.strip(), v.strip())
    pid = fields.get("id", "")
    if not _ID.match(pid):
        raise PolicyError(f"_mta-sts record has an invalid id {pid!r}")
    return pid


def parse_policy(text: str, policy_id: str = "") -> Policy:
    """Parse a policy file (``key: value`` lines, CRLF or LF)."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise PolicyError("policy file larger than 64 KB")
    version = mode = None
    max_age = None
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        k, colon, v = line.partition(":")
        if not colon:
            raise PolicyError(f"policy line without ':': {line[:60]!r}")
        k, v = k.strip(), v.strip()
        if k == "version" and version is None:
            version = v
        elif k == "mode" and mode is None:
            mode = v
        elif k == "max_age" and max_age is None:
            if not v.isdigit() or len(v) > 10:
                raise PolicyError(f"invalid max_age {v!r}")
            max_age = min(int(v), MAX_AGE_LIMIT_S)
        elif k == "mx":
            mx.append(v.lower().rstrip("."))
    if version != "STSv1":
        raise PolicyError(f"policy version must be STSv1, not {version!r}")
    if mode not in MODES:
        raise PolicyError(f"policy mode must be enforce, testing or none, not {mode!r}")
    if max_age is None:
        raise PolicyError("policy has no max_age")
    if mode != "none" and not mx:
        raise PolicyError("policy has no mx line")
    return Policy(mode=mode, mx=tuple(mx), max_age=max_age, id=policy_id)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: exact, or ``*.example.com`` matching exactly one leftmost label."""
    p = pattern.lower().rstrip(".")
    h = host.lower().rstrip(".")
    if p.startswith("*."):
        head, dot, rest = h.partition(".")
        return bool(head) and bool(dot) and rest == p[2:]
    return p == h


def decide(policy: Policy | None, host: str, *, tls: bool, verified: bool) -> tuple[bool, str]:
    """(deliver?, failure) for a delivery to MX ``host``.

    ``tls``: the session was encrypted; ``verified``: the certificate chained to a
    trusted root and matched ``host``.  ``failure`` is the TLS-RPT result type of what
    went wrong ("" when nothing did); in testing mode the delivery goes ahead anyway.
    """
    if policy is None or policy.mode == "none":
        return True, ""
    if not policy.matches(host):
        failure = "validation-failure"  # MX not listed in the policy
    elif not tls:
        failure = "starttls-not-supported"
    elif not verified:
        failure = "certificate-not-trusted"
    else:
        return True, ""
    return policy.mode != "enforce", failure


class CacheEntry(msgspec.Struct, kw_only=True):
    policy: Policy
    fetched: float  # when it was fetched (or last confirmed by an unchanged TXT id)

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.policy.max_age


class PolicyCache:
    """Policies by domain, each valid for its ``max_age`` after the fetch (RFC 8461 5.1:
    a valid cached policy is used even when the TXT record or the fetch fails)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._d: dict[str, CacheEntry] = {}
        self.max_entries = max_entries

    def get(self, domain: str, now: float) -> CacheEntry | None:
        e = self._d.get(domain)
        if e is not None and not e.fresh(now):
            del self._d[domain]
            return None
        return e

    def put(self, domain: str, policy: Policy, now: float) -> None:
        if len(self._d) >= self.max_entries and domain not in self._d:
            self._d.pop(next(iter(self._d)))
        self._d[domain] = CacheEntry(policy=policy, fetched=now)

    def __len__(self) -> int:
        return len(self._d)
