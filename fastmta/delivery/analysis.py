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

import multiprocessing as mp
import os
import pickle
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from fastmta.config import DeliveryConfig
from fastmta.delivery.addresses import (
    CONTROL_RE,
    DOMAIN_CACHE,
    FAST_ADDRESS_RE,
    check_address,
    domain_shard,
    has_control,
)
from fastmta.delivery.recipients import InputError, RecipientReader, Row, open_recipients
from fastmta.delivery.template import Template, TemplateError
from fastmta.errors import FastMTAError
from fastmta.records import DeliveryRecord, RecipientIn

if TYPE_CHECKING:  # the spool is passed in; analysis itself never opens LMDB
    from fastmta.spool import Spool

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


def check_delivery_inputs(template_bytes: bytes, *, mail_from: str = "",
                          validity_s: float | None = None,
                          cfg: DeliveryConfig | None = None) -> tuple[float, Template, str]:
    """The checks that need no recipient: validity range, template, envelope sender,
    message size.  Returns (validity_s, template, normalised sender); raises the user's
    error.  ``inject`` runs them first; callers that do work before injecting (MX
    routing) call this before that work."""
    cfg = cfg or DeliveryConfig()
    validity_s = cfg.validity_s if validity_s is None else validity_s
    if not 0 < validity_s <= cfg.max_validity_s:
        raise FastMTAError(
            f"validity {validity_s:.0f}s out of range (max {cfg.max_validity_s:.0f}s = 3.5 days)"
        )
    template = Template(template_bytes)
    mail_from = mail_from or template.from_address
    norm_from = checked_sender(mail_from)
    check_size(len(template_bytes), cfg)
    return validity_s, template, norm_from


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
    parallel: bool | None = None,
) -> Analysis:
    """Create a delivery and stream its recipients into the spool (durable per batch).

    ``parallel``: read and check the input in a second (spawned) process while this one
    writes the spool.  Off by default (it only pays with a spare core: see
    docs/spool.md); ``FASTMTA_INJECT_PARALLEL=1`` turns it on for files over 16 MB.

    ``shard_of(domain) -> shard`` routes each domain (the engine passes its MX-site
    router); the default is a stable hash of the domain over ``shards``.  Pass
    ``delivery_id`` (with the same input) to resume an interrupted injection.  The
    returned ``Analysis`` has ``delivery_id`` set; the delivery is left ``active``."""
    cfg = cfg or DeliveryConfig()
    validity_s, template, norm_from = check_delivery_inputs(
        template_bytes, mail_from=mail_from, validity_s=validity_s, cfg=cfg)
    pre = _Prechecker(template, _columns(reader))
    if shard_of is None:
        shard_of = HashShard(shards)
    if parallel is None:
        parallel = os.environ.get("FASTMTA_INJECT_PARALLEL") == "1" and _worth_a_process(reader, shard_of)

    if delivery_id is None:
        from fastmta.spool import now_ms

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

    if parallel:
        assert isinstance(reader, RecipientReader)
        items = _items_from_process(reader, template_bytes, shard_of, pre, counts, details)
    else:
        items = _items(pre, pre.rows(reader), shard_of, counts, details)

    def excluded(item: RecipientIn, reason: str) -> None:
        if on_excluded is not None:
            on_excluded(Exclusion(item.line, item.email, reason, details.pop(item.line, "")))
        else:
            details.pop(item.line, None)

    try:
        stats = spool.add_recipients(delivery_id, items, on_excluded=excluded)
    except InputError as exc:
        # bad input found part-way: the recipients before it are in the spool; cancel
        # the delivery so that nothing of a half-read file is ever sent
        spool.set_state(delivery_id, "cancelled", f"injection failed: {exc}")
        raise InputError(f"{exc} -- delivery {delivery_id} cancelled, nothing was sent; "
                         "fix the file and inject it again") from None
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


class HashShard:
    """Default router: stable hash of the domain over ``shards`` (picklable, cached)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._cache: dict[str, int] = {}

    def __call__(self, domain: str) -> int:
        s = self._cache.get(domain)
        if s is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            s = self._cache[domain] = domain_shard(domain, self.shards)
        return s

    def __getstate__(self) -> dict[str, int]:
        return {"shards": self.shards}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["shards"])  # type: ignore[misc]


def _items(
    pre: _Prechecker,
    rows: Iterable[tuple[int, str, tuple[str, ...], str]],
    shard_of: Callable[[str], int],
    counts: dict[str, int],
    details: dict[int, str],
) -> Iterator[RecipientIn]:
    check = pre.check
    # Fast path for the common row (plain ASCII address of a known-good domain, clean
    # header fields): the same decisions as ``check`` without its calls.  Anything else
    # goes through ``check``.
    fast = FAST_ADDRESS_RE.fullmatch
    dcache = DOMAIN_CACHE
    ctl = CONTROL_RE.search
    hidx = pre.hidx
    all_header = len(hidx) == len(pre.fields)
    fast_ok = not pre.bidx
    scache = shard_of._cache if isinstance(shard_of, HashShard) else None
    for line, email, vals, error in rows:
        if fast_ok and not error:
            m = fast(email)
            if m is not None:
                local, domain = m.groups()
                dom = dcache.get(domain)
                if (
                    dom is not None and len(local) <= 64 and len(email) <= 254
                    and not (hidx and ctl(" ".join(vals) if all_header
                                          else " ".join([vals[i] for i in hidx])))
                ):
                    shard = scache.get(dom) if scache is not None else None
                    if shard is None:
                        shard = shard_of(dom)
                    yield RecipientIn(email if dom == domain else f"{local}@{dom}", vals,
                                      shard, line, "", False)
                    continue
        reason, detail, norm, utf8 = check(email, vals, error)
        if reason:
            if detail:
                details[line] = detail
            yield RecipientIn(email=norm or email.strip()[:320], line=line, exclude=reason)
            continue
        if utf8:
            counts["smtputf8"] += 1
        yield RecipientIn(norm, vals, shard_of(norm[norm.rindex("@") + 1:]), line, "", utf8)


_PARALLEL_MIN_BYTES = 16 * 1024 * 1024
_CHUNK = 5000


def _worth_a_process(reader: Any, shard_of: Callable[[str], int]) -> bool:
    if not isinstance(reader, RecipientReader):
        return False
    try:
        if os.path.getsize(reader.name) < _PARALLEL_MIN_BYTES:
            return False
        pickle.dumps(shard_of)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


class _Chunk(msgspec.Struct, array_like=True):
    items: list[RecipientIn]
    details: dict[int, str]
    done: bool = False
    smtputf8: int = 0
    missing: dict[str, int] = msgspec.field(default_factory=dict)
    error: str = ""


def _reader_process(path: str, fmt: str, template_bytes: bytes, shard_of: Callable[[str], int],
                    conn: Any) -> None:
    """Child: read + check the input, send chunks of RecipientIn (the pipe's buffer is the
    backpressure: at most about one chunk waits)."""
    enc = msgspec.msgpack.Encoder()
    try:
        template = Template(template_bytes)
        with open_recipients(path, fmt) as reader:
            pre = _Prechecker(template, _columns(reader))
            counts = {"smtputf8": 0}
            details: dict[int, str] = {}
            buf: list[RecipientIn] = []
            for item in _items(pre, pre.rows(reader), shard_of, counts, details):
                buf.append(item)
                if len(buf) >= _CHUNK:
                    conn.send_bytes(enc.encode(_Chunk(buf, details)))
                    buf, details = [], {}
            conn.send_bytes(b"\x00" + enc.encode(_Chunk(buf, details, True, counts["smtputf8"],
                                                         pre.missing_counts())))
    except Exception as exc:  # reported to the parent, which raises it
        conn.send_bytes(b"\x00" + enc.encode(_Chunk([], {}, True,
                                                     error=f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def _items_from_process(
    reader: RecipientReader, template_bytes: bytes, shard_of: Callable[[str], int],
    pre: _Prechecker, counts: dict[str, int], details: dict[int, str],
) -> Iterator[RecipientIn]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_reader_process, name="fastmta-inject-reader",
                    args=(os.fspath(reader.name), reader.fmt, template_bytes, shard_of, child),
                    daemon=True)
    p.start()
    child.close()
    dec = msgspec.msgpack.Decoder(_Chunk)
    # A receiving thread keeps a few chunks buffered so that the child keeps reading
    # while this process commits (bounded: at most 8 chunks in memory).
    buf: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def pump() -> None:
        try:
            while True:
                data = parent.recv_bytes()
                buf.put(data)
                if data[:1] == b"\x00":  # the final chunk (see _reader_process)
                    return
        except (EOFError, OSError):
            buf.put(None)

    th = threading.Thread(target=pump, name="fastmta-inject-pump", daemon=True)
    th.start()
    try:
        while True:
            data = buf.get()
            if data is None:
                raise FastMTAError("the recipient reader process died")
            msg = dec.decode(data[1:] if data[:1] == b"\x00" else data)
            if msg.error:
                raise FastMTAError(f"reading {reader.name}: {msg.error}")
            details.update(msg.details)
            yield from msg.items
            if msg.done:
                counts["smtputf8"] += msg.smtputf8
                pre.missing.update(msg.missing)
                return
    finally:
        parent.close()
        p.join(5)
        if p.is_alive():
            p.kill()
