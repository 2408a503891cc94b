"""Analysis (before anything is sent) and injection of a delivery into the spool.

Exclusion reasons (campaign vocabulary, snake_case), checked in this order per row:

- ``malformed_line``         the input line cannot be read (bad JSON, column count)
- ``address_not_specified``  empty email
- ``unqualified_address``    syntax error (with the input line number)
- ``invalid_field``          a personalisation value would inject a header/line
- ``double``                 duplicate (local part exact, domain case-insensitive)
- ``denylisted_address``     on the denylist (address or ``@domain``)
- ``address_in_quarantine``  quarantined after hard bounces / repeated soft errors

Streaming throughout: a 10M-line file is never held in memory (duplicates are found in
a disk-backed set for ``analyze`` and in the spool for ``inject``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from ..config import DeliveryConfig
from ..errors import FastMTAError
from ..records import DeliveryRecord, RecipientIn
from .addresses import check_address, domain_shard
from .recipients import RecipientReader, Row
from .template import Template, TemplateError

if TYPE_CHECKING:  # the spool is passed in; analysis itself never opens LMDB
    from ..spool import Spool

REASONS = (
    "address_not_specified",
    "unqualified_address",
    "double",
    "address_in_quarantine",
    "denylisted_address",
    "invalid_field",
    "malformed_line",
)
REASON_LABELS = {
    "address_not_specified": "Address not specified",
    "unqualified_address": "Unqualified address",
    "double": "Double",
    "address_in_quarantine": "Address in quarantine",
    "denylisted_address": "Denylisted address",
    "invalid_field": "Invalid personalisation field",
    "malformed_line": "Malformed input line",
}


class Exclusion(msgspec.Struct):
    """One excluded input row."""

    line: int
    email: str
    reason: str
    detail: str = ""


class Analysis(msgspec.Struct):
    """The analysis summary (``fastmta analyze --json`` prints it)."""

    recipients: int = 0
    to_deliver: int = 0
    excluded: dict[str, int] = msgspec.field(default_factory=lambda: {r: 0 for r in REASONS[:5]})
    warnings: list[str] = msgspec.field(default_factory=list)
    domains: int = 0
    smtputf8: int = 0
    message_bytes: int = 0
    fields: list[str] = msgspec.field(default_factory=list)
    top_domains: list[tuple[str, int]] = msgspec.field(default_factory=list)
    delivery_id: int = 0
    mail_from: str = ""


def template_warnings(
    t: Template,
    *,
    mail_from: str,
    cfg: DeliveryConfig,
    dkim_has_key: Callable[[str], bool] | None = None,
) -> list[str]:
    """Warnings about the message itself (not per recipient)."""
    w: list[str] = []
    if not t.has_header("list-unsubscribe"):
        w.append("no List-Unsubscribe header (RFC 2369; Gmail and Yahoo require "
                 "one-click unsubscribe from bulk senders)")
    if not t.has_header("list-unsubscribe-post"):
        w.append("no List-Unsubscribe-Post header (RFC 8058 one-click unsubscribe)")
    if dkim_has_key is not None and t.from_domain and not dkim_has_key(t.from_domain):
        w.append(f"no DKIM key for the From domain {t.from_domain}")
    if t.size > cfg.warn_message_bytes:
        w.append(f"message is {t.size} bytes, above {cfg.warn_message_bytes} "
                 "(Gmail clips messages over about 102 KB)")
    if not t.has_header("date"):
        w.append("no Date header: fastmta adds one at send time")
    if not t.has_header("message-id"):
        w.append("no Message-ID header: fastmta adds a unique one per recipient")
    if not t.has_header("subject"):
        w.append("no Subject header")
    env_dom = mail_from.rpartition("@")[2].lower()
    if t.from_domain and env_dom and env_dom != t.from_domain and not env_dom.endswith("." + t.from_domain):
        w.append(f"envelope sender domain {env_dom} is not aligned with the From domain "
                 f"{t.from_domain} (DMARC then relies on DKIM alone)")
    return w


def _columns(reader: Any) -> list[str] | None:
    """CSV columns (template fields must exist), or None when rows may vary (JSONL)."""
    return reader.columns if getattr(reader, "fmt", "") == "csv" else None


class _Prechecker:
    """The pure, per-row part of the analysis (no spool state)."""

    def __init__(self, t: Template, columns: list[str] | None) -> None:
        self.t = t
        self.fields = t.fields
        self.missing: Counter[str] = Counter()
        if columns is not None:
            unknown = [f for f in t.fields if f not in columns]
            if unknown:
                raise TemplateError(
                    f"the message uses {', '.join('{{' + u + '}}' for u in unknown)} but the "
                    f"recipients file has no such column (columns: {', '.join(columns) or 'none'})"
                )

    def check(self, row: Row) -> tuple[str, str, str, bool, tuple[str, ...]]:
        """``(reason, detail, normalised email, smtputf8, field values)``."""
        if row.error:
            return "malformed_line", row.error, "", False, ()
        norm, utf8, err = check_address(row.email)
        if err == "empty":
            return "address_not_specified", "", "", False, ()
        if err:
            return "unqualified_address", err, "", False, ()
        f = row.fields
        vals = []
        for name in self.fields:
            v = f.get(name)
            if v is None:
                self.missing[name] += 1
                v = ""
            vals.append(v)
        bad = self.t.check_fields(f)
        if bad is not None:
            return "invalid_field", f"field {bad!r} would inject a line", norm, utf8, ()
        return "", "", norm, utf8, tuple(vals)


def _finish(a: Analysis, pre: _Prechecker, domains: Counter[str], warnings: list[str]) -> Analysis:
    for name, n in sorted(pre.missing.items()):
        warnings.append(f"field {name!r} missing on {n} recipient(s): rendered empty")
    if a.smtputf8:
        warnings.append(f"{a.smtputf8} recipient(s) have a UTF-8 local part and need SMTPUTF8")
    if a.excluded.get("malformed_line"):
        warnings.append(f"{a.excluded['malformed_line']} malformed input line(s) skipped")
    a.warnings = warnings
    a.domains = len(domains)
    a.top_domains = domains.most_common(10)
    return a


def analyze(
    reader: RecipientReader | Iterable[Row],
    template: Template,
    *,
    mail_from: str = "",
    cfg: DeliveryConfig | None = None,
    quarantine: Callable[[str], str | None] | None = None,
    on_excluded: Callable[[Exclusion], None] | None = None,
    dkim_has_key: Callable[[str], bool] | None = None,
    scratch_dir: str | None = None,
) -> Analysis:
    """Analyse a recipients file against a template without sending or storing anything.

    ``quarantine(address)`` returns ``denylisted_address`` / ``address_in_quarantine`` or
    None (``Spool.precheck``).  Duplicates are found in a disk-backed set."""
    from ..spool import ScratchSet  # the one lmdb-backed helper, owned by the spool

    cfg = cfg or DeliveryConfig()
    mail_from = mail_from or template.from_address
    pre = _Prechecker(template, _columns(reader))
    a = Analysis(message_bytes=template.size, fields=template.fields, mail_from=mail_from)
    warnings = template_warnings(template, mail_from=mail_from, cfg=cfg, dkim_has_key=dkim_has_key)
    domains: Counter[str] = Counter()
    exc = a.excluded
    with ScratchSet(dir=scratch_dir) as seen:
        for row in reader:
            a.recipients += 1
            reason, detail, norm, utf8, _ = pre.check(row)
            if not reason:
                if not seen.add(norm):
                    reason = "double"
                elif quarantine is not None:
                    reason = quarantine(norm) or ""
            if reason:
                exc[reason] = exc.get(reason, 0) + 1
                if on_excluded is not None:
                    on_excluded(Exclusion(row.line, norm or row.email, reason, detail))
                continue
            a.to_deliver += 1
            a.smtputf8 += utf8
            domains[norm.rpartition("@")[2]] += 1
    return _finish(a, pre, domains, warnings)


def inject(
    spool: Spool,
    reader: RecipientReader | Iterable[Row],
    template_bytes: bytes,
    *,
    mail_from: str = "",
    validity_s: float | None = None,
    cfg: DeliveryConfig | None = None,
    shard_of: Callable[[str], int] | None = None,
    shards: int = 64,
    name: str = "",
    on_excluded: Callable[[Exclusion], None] | None = None,
    dkim_has_key: Callable[[str], bool] | None = None,
    delivery_id: int | None = None,
) -> Analysis:
    """Create a delivery and stream its recipients into the spool (durable per batch).

    ``shard_of(domain) -> shard`` routes each domain (the engine passes its MX-site
    router); the default is a stable hash of the domain over ``shards``.  Pass
    ``delivery_id`` (with the same input) to resume an interrupted injection.  The
    returned ``Analysis`` has ``delivery_id`` set; the delivery is left ``active``."""
    cfg = cfg or DeliveryConfig()
    validity_s = cfg.validity_s if validity_s is None else validity_s
    if not 0 < validity_s <= cfg.max_validity_s:
        raise FastMTAError(
            f"validity {validity_s:.0f}s out of range (max {cfg.max_validity_s:.0f}s = 3.5 days)"
        )
    template = Template(template_bytes)
    mail_from = mail_from or template.from_address
    norm_from, _, err = check_address(mail_from) if mail_from else ("", False, "empty")
    if err:
        raise TemplateError(f"envelope sender {mail_from!r} is not a valid address ({err})")
    if template_bytes and len(template_bytes) > cfg.max_message_bytes:
        raise TemplateError(f"message is {len(template_bytes)} bytes, above max_message_bytes")
    pre = _Prechecker(template, _columns(reader))
    if shard_of is None:
        cache: dict[str, int] = {}

        def shard_of(dom: str) -> int:
            s = cache.get(dom)
            if s is None:
                if len(cache) > 100_000:
                    cache.clear()
                s = cache[dom] = domain_shard(dom, shards)
            return s

    if delivery_id is None:
        from ..spool import now_ms

        t0 = now_ms()
        rec = DeliveryRecord(
            name=name, mail_from=norm_from, created_ms=t0, expires_ms=t0 + int(validity_s * 1000),
            fields=template.fields, source=os.fspath(getattr(reader, "name", "")), smtputf8=template.smtputf8,
        )
        delivery_id = spool.create_delivery(rec, template_bytes)
    a = Analysis(message_bytes=template.size, fields=template.fields, mail_from=norm_from,
                 delivery_id=delivery_id)
    warnings = template_warnings(template, mail_from=norm_from, cfg=cfg, dkim_has_key=dkim_has_key)
    counts = {"smtputf8": 0}
    details: dict[int, str] = {}

    def items() -> Iterator[RecipientIn]:
        for row in reader:
            reason, detail, norm, utf8, vals = pre.check(row)
            if reason:
                if detail:
                    details[row.line] = detail
                yield RecipientIn(email=norm or row.email.strip()[:320], line=row.line,
                                  exclude=reason)
                continue
            counts["smtputf8"] += utf8
            yield RecipientIn(email=norm, fields=vals, shard=shard_of(norm.rpartition("@")[2]),
                              line=row.line, smtputf8=utf8)

    def excluded(item: RecipientIn, reason: str) -> None:
        if on_excluded is not None:
            on_excluded(Exclusion(item.line, item.email, reason, details.pop(item.line, "")))
        else:
            details.pop(item.line, None)

    stats = spool.add_recipients(delivery_id, items(), on_excluded=excluded)
    spool.set_state(delivery_id, "active")
    k = spool.kpis(delivery_id)
    a.recipients = k.get("recipients", 0)
    a.to_deliver = k.get("to_deliver", 0)
    a.excluded = {r: 0 for r in REASONS[:5]}
    for key, v in k.items():
        if key.startswith("excluded/"):
            a.excluded[key[9:]] = v
    a.smtputf8 = counts["smtputf8"]
    doms = Counter({key.split("/")[1]: v for key, v in k.items()
                    if key.startswith("domain/") and key.endswith("/to_deliver")})
    del stats
    return _finish(a, pre, doms, warnings)


def rows_from(items: Iterable[dict[str, Any]]) -> Iterator[Row]:
    """Rows from dicts (the Python API): ``email`` plus fields; line = position + 1."""
    for i, d in enumerate(items, 1):
        d = dict(d)
        email = d.pop("email", "")
        yield Row(i, email if isinstance(email, str) else "", {k: str(v) for k, v in d.items()})
