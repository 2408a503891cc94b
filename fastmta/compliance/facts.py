"""What the pre-flight checks look at, gathered once (``gather.py``) and judged by pure
functions (``checks.py``): the message, the configured signers, and DNS answers."""

from __future__ import annotations

import msgspec

__all__ = ["CheckResult", "Lookup", "SignerFact", "PtrFact", "Facts", "LEVELS", "CODES"]

LEVELS = ("error", "warning")
CODES = (
    "one_click_unsubscribe_missing",
    "unsubscribe_not_signed",
    "dkim_missing",
    "dmarc_alignment",
    "spf_fail",
    "dmarc_missing",
    "ptr_mismatch",
    "message_format",
    "dns_unavailable",
)


class CheckResult(msgspec.Struct, frozen=True):
    """One finding: a stable ``code``, ``error`` (blocks a send) or ``warning``, and the
    explanation with the fix (``fastmta analyze --json`` prints these three fields)."""

    code: str
    level: str
    detail: str


class Lookup(msgspec.Struct, frozen=True, kw_only=True):
    """One DNS answer: ``ok`` (records as text), ``nxdomain``, ``nodata`` or ``error``
    (SERVFAIL, timeout, no nameserver: the answer is unknown, never a pass)."""

    name: str
    rdtype: str
    status: str = "ok"
    records: list[str] = msgspec.field(default_factory=list)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "error"


class SignerFact(msgspec.Struct, frozen=True, kw_only=True):
    """A configured DKIM key that would sign the message."""

    domain: str
    selector: str
    headers: list[str]  # lower-case names it signs
    record: str  # the TXT record it expects at selector._domainkey.domain
    published: Lookup | None = None


class PtrFact(msgspec.Struct, frozen=True, kw_only=True):
    """Reverse DNS of one source IP and the forward lookups of the PTR names."""

    ip: str
    ptr: Lookup
    forward: dict[str, Lookup] = msgspec.field(default_factory=dict)


class Facts(msgspec.Struct, kw_only=True):
    """Everything the checks need (built by ``gather.gather_facts``, or by hand in tests)."""

    headers: list[tuple[str, str]]  # the template's header fields, in order
    body: str = ""
    size: int = 0
    envelope_from: str = ""  # the MAIL FROM address (default: the From address)
    feedback_unsubscribe_url: str = ""  # [feedback] unsubscribe_url: fastmta adds the headers
    feedback_signed: bool = True  # the added headers are added before signing
    signers: list[SignerFact] = msgspec.field(default_factory=list)
    dmarc: Lookup | None = None  # TXT _dmarc.<From domain>
    dmarc_org: Lookup | None = None  # TXT _dmarc.<organisational domain> (when different)
    spf: dict[str, tuple[str, str]] = msgspec.field(default_factory=dict)  # ip -> (result, why)
    ptr: list[PtrFact] = msgspec.field(default_factory=list)
    source_ips: list[str] = msgspec.field(default_factory=list)
    ehlo_name: str = ""
    max_message_bytes: int = 25 * 1024 * 1024
