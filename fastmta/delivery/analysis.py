"""Analysis of a delivery before anything is sent: exclusion rules and the summary.

Exclusion reasons (campaign vocabulary, snake_case), checked in this order per row:

- ``malformed_line``         the input line cannot be read (bad JSON, column count)
- ``address_not_specified``  empty email
- ``unqualified_address``    syntax error (with the input line number)
- ``invalid_field``          a personalisation value would inject a header/line
- ``double``                 duplicate (local part exact, domain case-insensitive)
- ``denylisted_address``     on the denylist (address or ``@domain``)
- ``address_in_quarantine``  quarantined after hard bounces / repeated soft errors

Streaming throughout: a 10M-line file is never held in memory (duplicates are found in
a disk-backed set for ``analyze`` and in the spool for ``inject``, in ``injection.py``,
which applies the same per-row checks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from fastmta.config import DeliveryConfig
from fastmta.delivery.addresses import check_address, has_control
from fastmta.delivery.recipients import RecipientReader, Row
from fastmta.delivery.template import Template, TemplateError

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
        self._reader: Any = None
        if columns is not None:
            unknown = [f for f in t.fields if f not in columns]
            if unknown:
                raise TemplateError(
                    f"the message uses {', '.join('{{' + u + '}}' for u in unknown)} but the "
                    f"recipients file has no such column (columns: {', '.join(columns) or 'none'})"
                )
        self.hidx = [i for i, f in enumerate(self.fields) if f in t.header_fields]
        self.bidx = [i for i, f in enumerate(self.fields) if f in t.body_fields] if t.boundary else []
        self.marker = "--" + t.boundary if t.boundary else ""

    def rows(self, reader: Any) -> Iterator[tuple[int, str, tuple[str, ...], str]]:
        """``(line, email, field values, error)`` from a reader or an iterable of Row."""
        if hasattr(reader, "rows"):
            self._reader = reader
            return reader.rows(self.fields)
        return self._from_rows(reader)

    def _from_rows(self, rows: Iterable[Row]) -> Iterator[tuple[int, str, tuple[str, ...], str]]:
        for r in rows:
            vals = []
            for name in self.fields:
                v = r.fields.get(name)
                if v is None:
                    self.missing[name] += 1
                    v = ""
                vals.append(v)
            yield r.line, r.email, tuple(vals), r.error

    def missing_counts(self) -> dict[str, int]:
        out = dict(self.missing)
        if self._reader is not None:
            for k, v in self._reader.missing.items():
                out[k] = out.get(k, 0) + v
        return out

    def check(self, email: str, vals: tuple[str, ...], error: str) -> tuple[str, str, str, bool]:
        """``(reason, detail, normalised email, smtputf8)``."""
        if error:
            return "malformed_line", error, "", False
        norm, utf8, err = check_address(email)
        if err:
            if err == "empty":
                return "address_not_specified", "", "", False
            return "unqualified_address", err, "", False
        hidx = self.hidx
        if hidx:
            text = vals[hidx[0]] if len(hidx) == 1 else " ".join([vals[i] for i in hidx])
            if has_control(text):
                bad = next(self.fields[i] for i in hidx if has_control(vals[i]))
                return "invalid_field", f"field {bad!r} would inject a line", norm, utf8
        if self.bidx:
            for i in self.bidx:
                if self.marker in vals[i]:
                    return "invalid_field", f"field {self.fields[i]!r} holds the MIME boundary", norm, utf8
        return "", "", norm, utf8


def _finish(a: Analysis, pre: _Prechecker, domains: Counter[str], warnings: list[str]) -> Analysis:
    for name, n in sorted(pre.missing_counts().items()):
        warnings.append(f"field {name!r} missing on {n} recipient(s): rendered empty")
    if a.smtputf8:
        warnings.append(f"{a.smtputf8} recipient(s) have a UTF-8 local part and need SMTPUTF8")
    if a.excluded.get("malformed_line"):
        warnings.append(f"{a.excluded['malformed_line']} malformed input line(s) skipped")
    a.warnings = warnings
    a.domains = len(domains)
    a.top_domains = domains.most_common(10)
    return a


def checked_sender(mail_from: str) -> str:
    """The normalised envelope sender, or a TemplateError saying why it is refused."""
    norm, _, err = check_address(mail_from) if mail_from else ("", False, "empty")
    if err:
        raise TemplateError(f"envelope sender {mail_from!r} is not a valid address ({err})")
    return norm


def check_size(size: int, cfg: DeliveryConfig) -> None:
    """Refuse a message above ``max_message_bytes`` (analysis and injection alike)."""
    if size > cfg.max_message_bytes:
        raise TemplateError(
            f"message is {size:,} bytes, above the limit of {cfg.max_message_bytes:,} bytes "
            "([delivery] max_message_bytes); most receivers refuse mail over 10-25 MB")


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
    from fastmta.spool import ScratchSet  # the one lmdb-backed helper, owned by the spool

    cfg = cfg or DeliveryConfig()
    check_size(template.size, cfg)
    mail_from = checked_sender(mail_from or template.from_address)
    pre = _Prechecker(template, _columns(reader))
    a = Analysis(message_bytes=template.size, fields=template.fields, mail_from=mail_from)
    warnings = template_warnings(template, mail_from=mail_from, cfg=cfg, dkim_has_key=dkim_has_key)
    domains: Counter[str] = Counter()
    exc = a.excluded
    with ScratchSet(dir=scratch_dir) as seen:
        for line, email, vals, error in pre.rows(reader):
            a.recipients += 1
            reason, detail, norm, utf8 = pre.check(email, vals, error)
            if not reason:
                if not seen.add(norm):
                    reason = "double"
                elif quarantine is not None:
                    reason = quarantine(norm) or ""
            if reason:
                exc[reason] = exc.get(reason, 0) + 1
                if on_excluded is not None:
                    on_excluded(Exclusion(line, norm or email, reason, detail))
                continue
            a.to_deliver += 1
            a.smtputf8 += utf8
            domains[norm.rpartition("@")[2]] += 1
    return _finish(a, pre, domains, warnings)


def rows_from(items: Iterable[dict[str, Any]]) -> Iterator[Row]:
    """Rows from dicts (the Python API): ``email`` plus fields; line = position + 1."""
    for i, d in enumerate(items, 1):
        d = dict(d)
        email = d.pop("email", "")
        yield Row(i, email if isinstance(email, str) else "", {k: str(v) for k, v in d.items()})
